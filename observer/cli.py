"""`polyarch-observer`: serve, once."""

from __future__ import annotations

import click

from dispatcher import __version__
from dispatcher.common.cli import config_option, one_line_errors, verbose_option
from dispatcher.common.config import load_config
from dispatcher.common.errors import ConfigError
from dispatcher.common.logs import setup_logging


@click.group()
@click.version_option(__version__, prog_name="polyarch-observer")
def main() -> None:
    """The polyarch observer: reports every new commit of the watched branches."""


def _config(path: str):
    config = load_config(path)
    if not config.repos:
        raise ConfigError(config.path, "repos", "no [[repos]] to observe")
    return config


@main.command()
@config_option
@verbose_option
@one_line_errors
def serve(config_path: str, verbose: bool) -> None:
    """Poll (and watch) the repositories until SIGTERM."""
    from .service import serve as run

    config = _config(config_path)
    setup_logging(verbose)
    run(config)


@main.command()
@config_option
@verbose_option
@one_line_errors
def once(config_path: str, verbose: bool) -> None:
    """Poll every repository once; exit 1 if any could not be fetched or reported."""
    import sys

    from dispatcher.common.progress import Bars

    from .service import once as poll

    config = _config(config_path)
    setup_logging(verbose)
    if not sys.stderr.isatty():
        ok = poll(config)
    else:
        # A first mirror of a large repository can take minutes: show git's progress.
        with Bars(transient=True) as bars:
            ok = poll(config, progress=bars)
    if not ok:
        raise click.exceptions.Exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
