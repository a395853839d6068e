"""What every `discover` command shares: the consoles and the user-error wrapper."""

from __future__ import annotations

import functools
import os

import typer
from rich.console import Console
from rich.markup import escape

console = Console()
err_console = Console(stderr=True)


def user_errors(fn):
    """Errors a user can cause (bad option, unknown task or id, damaged file, unwritable folder) become one
    red `error:` line and exit status 2. MPO_DISCOVER_DEBUG=1 shows the traceback instead."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from archive.store import ArchiveError
        from evaluators.errors import SuiteError

        try:
            return fn(*args, **kwargs)
        except (SuiteError, ArchiveError, OSError, ValueError, KeyError) as e:
            if os.environ.get("MPO_DISCOVER_DEBUG"):
                raise
            message = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)  # str(KeyError) adds quotes
            err_console.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
            raise typer.Exit(2)

    return wrapper
