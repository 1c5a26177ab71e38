"""What every entry point's command line shares: help that shows each option's default."""

import argparse


class HelpWithDefaults(argparse.RawDescriptionHelpFormatter):
    """Each option's help ends with its default, where it has one; the epilog keeps its lines."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        help_text = action.help or ""
        no_default = action.default is None or action.default is False
        if action.required or no_default or action.default is argparse.SUPPRESS:
            return help_text
        if "%(default)" in help_text:
            return help_text
        return f"{help_text} (default: %(default)s)"


def entry_point_parser(prog: str, description: str, epilog: str | None = None):
    return argparse.ArgumentParser(
        prog=prog, description=description, epilog=epilog, formatter_class=HelpWithDefaults
    )
