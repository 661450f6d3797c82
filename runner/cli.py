"""`polyarch-runner`: serve."""

from __future__ import annotations

from typing import Optional

import click

from dispatcher import __version__
from dispatcher.cliutil import config_option, load, one_line_errors, verbose_option
from dispatcher.config import default_runner_name
from dispatcher.errors import ConfigError
from dispatcher.logs import setup_logging
from dispatcher.names import check_runner, host_arch, parse_arch


@click.group()
@click.version_option(__version__, prog_name="polyarch-runner")
def main() -> None:
    """The polyarch runner: runs the jobs of one architecture."""


@main.command()
@config_option
@click.option("--arch", help="Architecture to serve (default: runner.arch, else this machine's).")
@click.option("--name", help="Runner name (default: runner.name, else HOST-ARCH).")
@verbose_option
@one_line_errors
def serve(config_path: str, arch: Optional[str], name: Optional[str], verbose: bool) -> None:
    """Lease and run jobs until SIGTERM (a second SIGTERM stops the current job too)."""
    from .service import serve as run

    config = load(config_path)
    own = host_arch()
    chosen = parse_arch(arch) if arch else (config.runner.arch or own)
    if chosen != own:
        # A runner must run its tests on the architecture it claims; emulated ones run
        # inside a root file system of that architecture, where this check passes.
        raise ConfigError(config.path, "runner.arch" if not arch else "--arch",
                          f"{chosen.value} is not this machine's architecture ({own.value})")
    runner_name = check_runner(name) if name else (config.runner.name or default_runner_name(chosen))
    setup_logging(verbose)
    run(config, chosen, runner_name)


if __name__ == "__main__":  # pragma: no cover
    main()
