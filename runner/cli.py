"""`polyarch-runner`: serve, binfmt, rootfs build."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import click

from dispatcher import __version__
from dispatcher.common.cli import config_option, one_line_errors, verbose_option
from dispatcher.common.config import ArchConfig, load_config
from dispatcher.common.config import default_runner_name
from dispatcher.common.errors import ConfigError
from dispatcher.common.logs import setup_logging
from dispatcher.common.names import Arch, check_runner, host_arch, parse_arch


@click.group()
@click.version_option(__version__, prog_name="polyarch-runner")
def main() -> None:
    """The polyarch runner: runs the jobs of one architecture."""


@main.command()
@config_option
@click.option("--arch", help="Architecture to serve (default: runner.arch, else this machine's).")
@click.option("--name", help="Runner name (default: runner.name, else HOST-ARCH).")
@click.option("--rootfs", type=click.Path(file_okay=False, path_type=Path),
              help="Run the jobs inside this root file system of another architecture, under "
                   "qemu-user (needs root); the root's architecture is served.")
@verbose_option
@one_line_errors
def serve(config_path: str, arch: Optional[str], name: Optional[str], rootfs: Optional[Path], verbose: bool) -> None:
    """Lease and run jobs until SIGTERM (a second SIGTERM stops the current job too)."""
    config = load_config(config_path)
    own = host_arch()
    if rootfs is not None:
        chosen = _root_arch(config, rootfs, arch)
    else:
        chosen = parse_arch(arch) if arch else (config.runner.arch or own)
    runner_name = check_runner(name) if name else (config.runner.name or default_runner_name(chosen))
    root = None
    if rootfs is None and chosen != own:
        rootfs = config.archs.get(chosen, ArchConfig()).rootfs  # [arch.A] rootfs in the config
    if rootfs is not None:
        from .sandbox import open_root

        root = open_root(rootfs, chosen)
    elif chosen != own:
        # A runner must run its tests on the architecture it claims; another architecture's
        # jobs run inside a root file system of that architecture.
        raise ConfigError(config.path, "runner.arch" if not arch else "--arch",
                          f"{chosen.value} is not this machine's architecture ({own.value}); "
                          f"a runner of another architecture needs --rootfs DIR")
    from .service import serve as run

    setup_logging(verbose)
    run(config, chosen, runner_name, root)


def _root_arch(config, rootfs: Path, arch: Optional[str]) -> Arch:
    """The root knows its architecture; --arch (or runner.arch) may only agree with it."""
    from .rootfs import RootfsError, read_info

    theirs = read_info(rootfs).arch
    if arch and parse_arch(arch) != theirs:
        raise RootfsError(f"--arch {parse_arch(arch).value} conflicts with the root {rootfs}, whose architecture is "
                          f"{theirs.value}; "
                          "leave --arch out (the root decides) or choose another root")
    if not arch and config.runner.arch not in (None, theirs):
        raise ConfigError(config.path, "runner.arch", f"{config.runner.arch.value} conflicts with --rootfs {rootfs}, "
                          f"whose architecture is {theirs.value}; set runner.arch = \"auto\" or leave --rootfs out")
    return theirs


@main.command()
@click.option("--register/--no-register", default=True, show_default=True,
              help="Register the missing qemu entries (needs root).")
@one_line_errors
def binfmt(register: bool) -> None:
    """Show which architectures this machine can run, registering qemu-user where missing."""
    import os

    from . import binfmt as bf

    missing = False
    for arch in Arch:
        state = bf.support(arch)
        if register and state.support == bf.Support.NOT_REGISTERED and os.geteuid() == 0:
            state = bf.register(arch)
        missing |= not state.runnable
        click.echo(f"{arch.value:8} {state.support.value}" + (f": {state.problem}" if state.problem else ""))
    if missing:
        click.echo("missing: apt-get install qemu-user-static, then (as root) polyarch-runner binfmt", err=True)
        raise click.exceptions.Exit(1)


@main.group()
def rootfs() -> None:
    """Root file systems of other architectures."""


@rootfs.command("build")
@click.option("--arch", "arch_name", required=True, help="Architecture of the root (arm64, riscv64, s390x, ...).")
@click.option("--suite", help="Debian release to build from (default: bookworm; trixie for riscv64, which "
                             "bookworm lacks).")
@click.option("--mirror", help="Debian mirror for the suite and its updates (default: this machine's apt sources).")
@click.option("--security-mirror", help="Mirror for the security suite (default: this machine's apt sources).")
@click.option("--include", "include", multiple=True, metavar="PKG",
              help="An extra Debian package in the root (repeat the option for more).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="Also install this config's [arch.A] packages.")
@click.option("--upgrade", is_flag=True, help="On an existing root, upgrade its packages (apt-get upgrade).")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@verbose_option
@one_line_errors
def rootfs_build(arch_name: str, suite: Optional[str], mirror: Optional[str], security_mirror: Optional[str],
                 include: tuple[str, ...], config_path: Optional[str], upgrade: bool, directory: Path,
                 verbose: bool) -> None:
    """Build DIRECTORY with mmdebstrap; on an existing root, install what is missing (and upgrade)."""
    from dispatcher.common.progress import Bars

    from .rootfs import build

    setup_logging(verbose)
    if config_path is not None:
        include = (*load_config(config_path).archs.get(parse_arch(arch_name), ArchConfig()).packages, *include)
    with Bars() as bars:
        info = build(parse_arch(arch_name), directory, progress=bars, suite=suite, mirror=mirror,
                     security=security_mirror, include=include, upgrade=upgrade)
    click.echo(f"{directory}: {info.arch.value} root (Debian {info.suite})")


@rootfs.command("import")
@click.option("--arch", "arch_name", required=True, help="Architecture the root must be of (checked).")
@click.argument("tarball", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@one_line_errors
def rootfs_import(arch_name: str, tarball: Path, directory: Path) -> None:
    """Make DIRECTORY from TARBALL, any Linux root (a `docker export`, a distribution's image)."""
    from .rootfs import import_tarball

    info = import_tarball(parse_arch(arch_name), tarball, directory)
    click.echo(f"{directory}: {info.arch.value} root ({info.suite})")


@rootfs.command("list")
@config_option
@one_line_errors
def rootfs_list(config_path: str) -> None:
    """The roots the config names ([arch.A] rootfs), and whether each is usable here."""
    from .rootfs import RootfsError, check

    config = load_config(config_path)
    roots = {arch: cfg.rootfs for arch, cfg in sorted(config.archs.items()) if cfg.rootfs is not None}
    if not roots:
        click.echo(f"{config.path}: no [arch.A] rootfs set")
        return
    bad = False
    for arch, path in roots.items():
        try:
            info = check(path, arch)
            state = f"ok, Debian {info.suite}" if not info.suite.startswith("imported") else f"ok, {info.suite}"
        except RootfsError as exc:
            bad, state = True, str(exc)
        click.echo(f"{arch.value:8} {path}  {state}")
    if bad:
        raise click.exceptions.Exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
