"""Expected failures, and the one way every entry point reports them.

An expected failure is something a user can get wrong or cannot control: bad input, an
invalid setting, an output that cannot be written, a run that diverged or was stopped. Each is a
`UserError` whose message is one line naming the file, key or value; entry points turn it into
that line on stderr and a non-zero exit. Anything else is a bug and keeps its traceback.
"""

import sys
from collections.abc import Iterator
from contextlib import contextmanager


class UserError(Exception):
    """An expected failure; the message is one line naming the problem."""


class InputError(UserError):
    """An input file that is missing, unreadable or not what it should be."""


@contextmanager
def exit_on_user_error(prog: str) -> Iterator[None]:
    """Run an entry point's work; a UserError exits with `prog: error: <message>`."""
    try:
        yield
    except UserError as err:
        sys.exit(f"{prog}: error: {err}")
