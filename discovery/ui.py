"""What every `discover` command shares: the consoles, the user-error wrapper and the command group that
reports usage errors the same way."""

from __future__ import annotations

import functools
import os
import sys

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup, TyperOption

from discovery.text import printable

console = Console()
err_console = Console(stderr=True)


def print_error(message: str) -> None:
    err_console.print(f"[red]error:[/red] {escape(printable(message))}", highlight=False, soft_wrap=True)


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
            print_error(str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e))  # str(KeyError) adds quotes
            raise typer.Exit(2)

    return wrapper


class OneLineErrors(TyperGroup):
    """The root command group: an unknown option or a value typer itself refuses is reported like every other
    user error, as one `error:` line with exit status 2, instead of a usage box."""

    def main(self, *args, standalone_mode: bool = True, **kwargs):
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except typer.TyperException as e:  # typer's usage errors
            if type(e).__name__ != "NoArgsIsHelpError":  # the help has been printed
                print_error(f"{e.format_message()} (see --help)")
            sys.exit(e.exit_code)
        except typer.Abort:
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


def _no_type_for_flags(display_type_rich):
    """Plain flags (--resume, --quick, --help) take no value: show no `<bool>` for them in --help."""

    @functools.wraps(display_type_rich)
    def display(self, ctx):
        return None if self.is_flag else display_type_rich(self, ctx)

    return display


TyperOption.display_type_rich = _no_type_for_flags(TyperOption.display_type_rich)
