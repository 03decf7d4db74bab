"""The one group class of the `bloodcell` command: known errors become one-line messages, and a group may
name a default subcommand."""

from __future__ import annotations

import sys
from typing import Any, NoReturn

import click


def fail(message: str) -> NoReturn:
    """End the command with MESSAGE as its one-line error (exit status 1)."""
    raise click.ClickException(message)


# Heavy modules (Celery, OpenCV) whose errors are known: one never imported cannot have raised its error.
HEAVY_ERRORS = (("bloodcell_core.cli.stack", "StackError"), ("bloodcell_core.ml.artifacts", "ArtifactError"))


def known_errors() -> tuple[type[Exception], ...]:
    """Errors that are the caller's to fix: the service's, a plugin's, a model directory's, the HTTP API's,
    the stack's, an unmigrated database, a wait that ran out, and a value or a file the library refused.
    Read when an error happens, so that a command loads only what it uses."""
    import httpx

    from bloodcell_core.clients.http import HttpApiError
    from bloodcell_core.plugin_manager import PluginError
    from bloodcell_core.service.db import DatabaseNotMigrated
    from bloodcell_core.service.errors import ServiceError
    from bloodcell_core.service.image_store import ImageNotFound

    light: tuple[type[Exception], ...] = (ServiceError, ImageNotFound, PluginError, HttpApiError, httpx.TransportError)
    light += (DatabaseNotMigrated, TimeoutError, ValueError, OSError)
    return light + tuple(getattr(sys.modules[module], name) for module, name in HEAVY_ERRORS if module in sys.modules)


class BloodcellGroup(click.Group):
    """A group whose commands end with ``Error: MESSAGE`` on a known error instead of a traceback, and which
    may name a ``default_command`` that runs when the arguments could be its own: none at all (unless
    ``no_args_is_help``), a first one that is an option, or a positional one when it takes positional arguments
    (`bloodcell locate FIELD` is `bloodcell locate fields FIELD`; `bloodcell models` is `bloodcell models list`)."""

    def __init__(self, *args: Any, default_command: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.default_command = default_command
        if default_command and not self.no_args_is_help:
            self.subcommand_metavar = "[COMMAND] [ARGS]..."  # the subcommand may be left out

    def _is_for_default(self, ctx: click.Context, args: list[str]) -> bool:
        if not self.default_command:
            return False
        if not args:
            return not self.no_args_is_help
        first = args[0]
        if first in self.commands or first in ctx.help_option_names:
            return False
        takes_arguments = any(isinstance(param, click.Argument) for param in self.commands[self.default_command].params)
        return first.startswith("-") or takes_arguments

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if self._is_for_default(ctx, args):
            args = [str(self.default_command), *args]
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            raise  # click's own handling: the reader went away (`bloodcell ... | head`)
        except Exception as exc:
            if not isinstance(exc, known_errors()):
                raise
            from bloodcell_core.service.errors import error_message

            raise click.ClickException(error_message(exc)) from exc
