"""Every entry point's --help: a help line for each option, with its default, and what the
options depend on said where it matters."""

import argparse
import dataclasses
import importlib
import runpy
import sys
import tomllib

import pytest
from workflow_helpers import REPO

from ssvae import bench, figures, plots, train
from ssvae.config import TrainConfig
from ssvae.models import MODELS


def console_scripts() -> dict:
    """Every console script pyproject.toml installs, by name, and the function it calls."""
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    found = {}
    for name, target in scripts.items():
        module, function = target.split(":")
        found[name] = getattr(importlib.import_module(module), function)
    return found


ENTRY_POINTS = console_scripts() | {"python -m ssvae.bench": bench.main}


class Parsed(Exception):
    """Raised in place of parsing, carrying the parser the entry point built."""


def parser_of(main, monkeypatch) -> argparse.ArgumentParser:
    def capture(self, *args, **kwargs):
        raise Parsed(self)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    with pytest.raises(Parsed) as parsed:
        main([])
    return parsed.value.args[0]


@pytest.mark.parametrize("prog", ENTRY_POINTS)
def test_every_option_has_a_help_line_showing_its_default(prog: str, monkeypatch) -> None:
    parser = parser_of(ENTRY_POINTS[prog], monkeypatch)
    assert parser.prog == prog
    text = " ".join(parser.format_help().split())  # help lines wrap anywhere
    for action in parser._actions:
        assert action.help, f"{prog}: {action.dest} has no help"
        if not action.required and action.default not in (None, False, argparse.SUPPRESS):
            assert f"(default: {action.default})" in text, f"{prog}: {action.dest}"


def test_train_help_lists_the_run_config_keys(monkeypatch) -> None:
    text = parser_of(train.main, monkeypatch).format_help()
    for setting in dataclasses.fields(TrainConfig):
        assert f"  {setting.name} " in text, setting.name
    for required in ("run", "model", "seed"):
        assert any(line.split() == [required, "required"] for line in text.splitlines())
    for model in MODELS:
        assert f"    {model} " in text


def test_plot_help_says_what_each_figure_needs(monkeypatch) -> None:
    lines = parser_of(plots.main, monkeypatch).format_help().splitlines()
    needs = {line.split()[0]: line.split()[1:] for line in lines if line.startswith("  ") and
             line.split()[0] in figures.BY_STEM}  # fmt: skip
    assert needs == {
        "multi_seed_accuracy": ["--metrics"],
        "multi_seed_accuracy_loss_valid": ["--metrics"],
        "multi_seed_accuracy_loss_train": ["--metrics"],
        "active_dims": ["--metrics", "--threshold"],
        "samples": ["--run-file", "--label"],
        "KL_Z": ["--run-file", "--label"],
        "KL_Z_valid_mean": ["--run-file", "--label"],
        "accuracy_vs_labels": ["--label-count-metrics", "--published"],
    }


def modules_with_main() -> list[str]:
    """The modules of the console scripts that call `main`: each also runs as `python -m`, as on
    a GPU node where the package is on PYTHONPATH but not installed."""
    mains = [function for function in console_scripts().values() if function.__name__ == "main"]
    return sorted({main.__module__ for main in mains})


# The modules are imported already (above): runpy says so, and runs them anew as __main__.
@pytest.mark.filterwarnings("ignore:.*found in sys.modules:RuntimeWarning")
@pytest.mark.parametrize("module", modules_with_main())
def test_python_dash_m_runs_the_entry_point(module: str, monkeypatch, capsys) -> None:
    monkeypatch.setattr(sys, "argv", [module, "--help"])
    with pytest.raises(SystemExit) as exited:
        runpy.run_module(module, run_name="__main__")  # what `python -m` does
    assert exited.value.code == 0
    assert capsys.readouterr().out.startswith("usage: ")
