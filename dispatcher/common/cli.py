"""The CLI edge shared by the three commands: typed errors -> one line and an exit code."""

from __future__ import annotations

import errno
import functools
from typing import Any, Callable, TypeVar

import click

from dispatcher.common.errors import (AuthError, ConfigError, InvalidName, PolyarchError, RemoteError, SetupError,
                                      StateError, StateUnavailable, UnknownName)

F = TypeVar("F", bound=Callable[..., Any])

EXIT_FAILED = 1
EXIT_USAGE = 2

config_option = click.option(
    "--config", "config_path", envvar="POLYARCH_CONFIG", default="polyarch.toml", show_default=True,
    type=click.Path(dir_okay=False), help="The polyarch TOML config (env POLYARCH_CONFIG).")
verbose_option = click.option("-v", "--verbose", is_flag=True, help="Log debug details too.")




def one_line_errors(fn: F) -> F:
    """Turn polyarch's typed errors into `prog: error: ...` and a defined exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except StateUnavailable as exc:
            _die(exc, EXIT_FAILED)  # the server may be back soon: systemd restarts us
        except (ConfigError, InvalidName, UnknownName, AuthError, SetupError, StateError) as exc:
            # StateError here means a state file unreadable at start: like bad config, a
            # restart cannot fix it, so systemd's RestartPreventExitStatus=2 stops the loop.
            _die(exc, EXIT_USAGE)
        except RemoteError as exc:
            _die(exc, EXIT_USAGE if exc.usage else EXIT_FAILED)
        except PolyarchError as exc:
            _die(exc, EXIT_FAILED)
        except ConnectionError as exc:
            _die(f"cannot reach the dispatcher: {exc}", EXIT_FAILED)
        except OSError as exc:
            # A folder a daemon must write but may not (a read-only /etc under a unit's
            # ProtectSystem=): setup, not a crash, so exit 2 and systemd does not loop.
            if exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM) or not exc.filename:
                raise
            _die(f"cannot write {exc.filename}: {exc.strerror}; make it writable, or point its setting in the config "
                 "at a writable place", EXIT_USAGE)

    return wrapper  # type: ignore[return-value]


def _die(message: object, code: int) -> None:
    prog = click.get_current_context().find_root().info_name or "polyarch"
    click.echo(f"{prog}: error: {message}", err=True)
    raise click.exceptions.Exit(code)
