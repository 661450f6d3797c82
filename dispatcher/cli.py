"""`polyarch-dispatcher`: serve, status, submit."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Optional

import click

from dispatcher import __version__
from dispatcher.common.cli import config_option, one_line_errors, verbose_option
from dispatcher.common.config import load_config
from dispatcher.common.logs import setup_logging


@click.group()
@click.version_option(__version__, prog_name="polyarch-dispatcher")
def main() -> None:
    """The polyarch dispatcher: queues every (commit, architecture) and hands it to a runner."""


@main.command()
@config_option
@verbose_option
@one_line_errors
def serve(config_path: str, verbose: bool) -> None:
    """Run the dispatcher until SIGTERM."""
    from dispatcher.hub.daemon import serve as run

    config = load_config(config_path)
    setup_logging(verbose)
    run(config)


@main.command()
@config_option
@click.option("--repo", help="Only this repository.")
@click.option("--commit", help="Only this commit (a prefix is enough).")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 10000),
              help="Commits to show (at most 1000 when asked over the network).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.option("--watch", is_flag=True, help="Redraw live until Ctrl-C.")
@click.option("--interval", default=1.0, show_default=True, type=click.FloatRange(0.1, 3600),
              help="Seconds between redraws with --watch.")
@click.option("--remote", is_flag=True,
              help="Ask the dispatcher over the network even where its state database is on this host.")
@one_line_errors
def status(config_path: str, repo: Optional[str], commit: Optional[str], limit: int, as_json: bool, watch: bool,
           interval: float, remote: bool) -> None:
    """Recent commits by architecture, queued and running jobs, and runners: read from the
    state database on the dispatcher's host, else asked of the dispatcher (the secret is
    all another host needs)."""
    from rich.console import Console

    from dispatcher.common.errors import UnknownName
    from dispatcher.common.names import check_commit_prefix
    from dispatcher.views.terminal import render, to_json

    config = load_config(config_path)
    if watch and as_json:
        raise click.exceptions.UsageError("--watch and --json do not go together (poll the JSON instead)")
    if repo is not None:
        repo = config.require_repo(repo).name  # an unknown one: exit 2, naming the known ones
    if commit is not None:
        check_commit_prefix(commit)
    with _status_source(config, repo, commit, limit, remote) as report:
        if commit is not None and not report().commits:
            raise UnknownName(f"no commit {commit!r} in {f'repo {repo}' if repo else 'any repository'} "
                              "(polyarch-dispatcher status lists the recent ones)")
        if as_json:
            click.echo(json.dumps(to_json(report()), indent=2))
        elif watch:
            import time

            from rich.live import Live

            with Live(render(report()), auto_refresh=False, screen=False) as live:
                try:
                    while True:
                        time.sleep(interval)
                        live.update(render(report()), refresh=True)
                except KeyboardInterrupt:
                    pass
        else:
            Console().print(render(report()))


@main.command()
@config_option
@click.option("--repo", required=True, help="Repository name from the config.")
@click.option("--test", "test_id", required=True, help="Test id as the results name it (classname::name).")
@click.option("--arch", "archs", multiple=True, help="Architecture (repeatable; default: the repository's).")
@click.option("--limit", default=30, show_default=True, type=click.IntRange(1, 10000), help="Commits to show.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@one_line_errors
def history(config_path: str, repo: str, test_id: str, archs: tuple[str, ...], limit: int, as_json: bool) -> None:
    """One test's outcome commit by commit (newest first) and architecture by architecture:
    where it first failed (its first parent passed), and where it was flaky (both outcomes
    on one commit). Read from the state database, on the dispatcher's host."""
    from rich.console import Console

    from dispatcher.common.errors import PolyarchError, UnknownArch, UnknownName
    from dispatcher.common.names import parse_arch
    from dispatcher.hub.server import local_state
    from dispatcher.hub.store import Store
    from dispatcher.views.history import render, to_json

    config = load_config(config_path)
    cfg = config.require_repo(repo)
    chosen = [parse_arch(a).value for a in archs] or [a.value for a in cfg.architectures]
    unknown = [a for a in chosen if a not in {x.value for x in cfg.architectures}]
    if unknown:
        raise UnknownArch(f"{', '.join(unknown)} not configured for repo {repo}")
    if not test_id.strip():
        raise click.exceptions.UsageError("--test must name a test (classname::name)")
    state = local_state(config)
    if state is None:
        raise PolyarchError(f"no state database at {config.dispatcher.state_dir}: history reads it on the "
                            "dispatcher's host (run it there, with the dispatcher's config)")
    store = Store(state, readonly=True)
    try:
        lines = store.history.test_history(cfg.name, test_id, chosen, limit)
    finally:
        store.close()
    if not any(o.outcome not in ("absent", "no-junit", "not-run", "queued", "running")
               for h in lines for o in h.outcomes):
        raise UnknownName(f"no result of {cfg.name} among its newest {limit} commits names test {test_id!r} "
                          "(ids are classname::name, as failed_tests in <arch>.json spells them)")
    if as_json:
        click.echo(json.dumps(to_json(cfg.name, test_id, lines), indent=2))
    else:
        Console().print(render(cfg.name, test_id, lines, chosen))


@contextlib.contextmanager
def _status_source(config, repo: Optional[str], commit: Optional[str], limit: int, remote: bool):
    """A function giving the status report now: from the state database when it is on
    this host (it answers even while the dispatcher is down), else over the wire."""
    from dispatcher.hub.server import local_state

    state = None if remote else local_state(config)
    if state is not None:
        from dispatcher.hub.reads import collect
        from dispatcher.hub.store import Store

        store = Store(state, readonly=True)
        try:
            yield lambda: collect(store, repo, commit, limit, heartbeat_timeout=config.dispatcher.heartbeat_timeout)
        finally:
            store.close()
        return
    from dispatcher.common.config import dispatcher_addresses
    from dispatcher.common.errors import PolyarchError
    from dispatcher.hub.reads import report_of
    from dispatcher.wire.protocol import StatusRead, StatusReport

    address = ", ".join(str(a) for a in dispatcher_addresses(config, "observer"))
    conns = []  # the one connection, made again when the dispatcher closed it (idle, restart)

    def report():
        for again in (False, True):
            try:
                if not conns:
                    conns.append(_client_connection(config, "status"))
                reply = conns[0].request(StatusRead(repo=repo or "", commit=commit or "", limit=limit))
                break
            except OSError as exc:
                if conns:
                    conns.pop().close()
                if again:
                    raise PolyarchError(f"cannot reach the dispatcher at {address} ({exc.strerror or exc}), and its "
                                        f"state database is not on this host ({config.dispatcher.state_dir}); is it "
                                        "running?") from None
        if not isinstance(reply, StatusReport):
            raise PolyarchError(f"dispatcher at {address} answered status_read with {reply.KIND.value}")
        return report_of(reply)

    try:
        yield report
    finally:
        for conn in conns:
            conn.close()


@main.command()
@config_option
@click.option("--repo", required=True, help="Repository name from the config.")
@click.option("--commit", required=True, help="Full commit SHA (40 or 64 hex digits).")
@click.option("--branch", default="", help="Branch to record (default: the repo's first branch).")
@click.option("--arch", "archs", multiple=True, help="Architecture (repeatable; default: all configured).")
@one_line_errors
def submit(config_path: str, repo: str, commit: str, branch: str, archs: tuple[str, ...]) -> None:
    """Queue one commit by hand."""
    from dispatcher.wire.protocol import Submit

    config = _checked(config_path, repo, commit, archs)
    with _client_connection(config, "submit") as conn:
        reply = conn.request_ack(Submit(repo=repo, commit=commit, branch=branch, archs=list(archs)))
    click.echo(f"{repo} {commit[:12]}: {reply.created} job(s) queued" if reply.created
               else f"{repo} {commit[:12]}: already known, nothing queued")


@main.command()
@config_option
@click.option("--repo", required=True, help="Repository name from the config.")
@click.option("--commit", required=True, help="Full commit SHA (40 or 64 hex digits).")
@click.option("--arch", "archs", multiple=True, help="Architecture (repeatable; default: every one).")
@click.option("--failed", is_flag=True, help="Only the architectures that did not pass.")
@one_line_errors
def rerun(config_path: str, repo: str, commit: str, archs: tuple[str, ...], failed: bool) -> None:
    """Run a commit's results again as new attempts; the earlier ones are kept beside them."""
    from dispatcher.wire.protocol import Rerun

    config = _checked(config_path, repo, commit, archs)
    with _client_connection(config, "rerun") as conn:
        reply = conn.request_ack(Rerun(repo=repo, commit=commit, archs=list(archs), failed=failed))
    click.echo(f"{repo} {commit[:12]}: {reply.created} rerun(s) queued" if reply.created
               else f"{repo} {commit[:12]}: no final result to rerun (still queued or running?)")


@main.command()
@config_option
@click.option("--repo", required=True, help="Repository name from the config.")
@click.option("--commit", required=True, help="Full commit SHA (40 or 64 hex digits).")
@click.option("--arch", "archs", multiple=True, help="Architecture (repeatable; default: every one).")
@one_line_errors
def cancel(config_path: str, repo: str, commit: str, archs: tuple[str, ...]) -> None:
    """Stop a commit's unfinished jobs: queued ones end `cancelled` at once, a running one
    within a heartbeat interval plus kill_grace (its runner learns it at its next heartbeat)."""
    from dispatcher.wire.protocol import Cancel

    config = _checked(config_path, repo, commit, archs)
    with _client_connection(config, "cancel") as conn:
        reply = conn.request_ack(Cancel(repo=repo, commit=commit, archs=list(archs)))
    click.echo(f"{repo} {commit[:12]}: {reply.created} job(s) cancelled" if reply.created
               else f"{repo} {commit[:12]}: nothing unfinished to cancel")


@main.command("wait")
@config_option
@click.option("--repo", required=True, help="Repository name from the config.")
@click.option("--commit", required=True, help="Full commit SHA (40 or 64 hex digits).")
@click.option("--branch", default="", help="Branch to record if the commit is new (default: the repo's first).")
@click.option("--timeout", default=3600.0, show_default=True, type=click.FloatRange(0, None),
              help="Seconds to wait for every architecture; exit 3 after that.")
@click.option("--json", "as_json", is_flag=True, help="Print the final status as JSON instead of a table.")
@click.option("--all", "every", is_flag=True,
              help="Wait for every architecture even after one failed (default: exit 1 at the first failure).")
@one_line_errors
def wait_command(config_path: str, repo: str, commit: str, branch: str, timeout: float, as_json: bool,
                 every: bool) -> None:
    """CI gate: submit the commit if new, wait for every configured architecture.

    Exit 0 when all passed (flaky counts as passed), 1 as soon as any failed (with --all:
    once all are final), 3 on timeout, 4 when the dispatcher cannot be reached, 2 for bad
    usage (unknown repo, malformed commit)."""
    import dataclasses

    from rich.console import Console

    from dispatcher.common.errors import PolyarchError
    from dispatcher.views.gate import Unreachable, Verdict, summary, verdict, wait
    from dispatcher.common.names import check_branch, check_commit

    config = load_config(config_path)
    repo_config = config.require_repo(repo)
    check_commit(commit)
    if branch:
        check_branch(branch)
    console = Console(stderr=as_json)
    warned: set[str] = set()
    address = _addresses_shown(config)
    try:
        with console.status(f"waiting for {repo} {commit[:12]} on "
                            f"{', '.join(a.value for a in repo_config.architectures)}") as spinner:
            def progress(status) -> None:
                done = sum(1 for a in status.archs if a.state.final)
                spinner.update(f"{repo} {commit[:12]}: {done}/{len(status.archs)} architecture(s) finished")
                for arch in status.unattended:
                    if arch not in warned:  # waiting goes on: a runner may yet come
                        warned.add(arch)
                        click.echo(f"warning: no runner of {arch} seen for {config.dispatcher.heartbeat_timeout:g} s; "
                                   f"start one (polyarch-runner serve --arch {arch}) or this waits for nothing",
                                   err=True)

            status = wait(lambda: _client_connection(config, "wait"), repo, commit, branch,
                          [a.value for a in repo_config.architectures], timeout, on_update=progress, every=every,
                          address=address)
    except Unreachable as exc:
        click.echo(f"polyarch-dispatcher: error: {exc}", err=True)
        raise click.exceptions.Exit(int(Verdict.UNREACHABLE)) from None
    except OSError as exc:
        raise PolyarchError(f"cannot reach the dispatcher at {address}: {exc}") from None
    outcome = verdict(status)
    if as_json:
        click.echo(json.dumps({"verdict": outcome.name.lower(), "exit_code": int(outcome),
                               "status": dataclasses.asdict(status) if status else None}, indent=2))
    else:
        console.print(summary(status, repo, commit, timed_out=True))
    raise click.exceptions.Exit(int(outcome))


@main.command()
@config_option
@click.option("--repo", required=True, help="Repository name from the config.")
@click.option("--commit", required=True, help="Full commit SHA (40 or 64 hex digits).")
@click.option("--arch", default=None, help="Architecture (default: the repository's only one).")
@click.option("--follow", "-f", is_flag=True,
              help="Go on printing while the job runs; end with its final status (exit 0 if it passed, else 1).")
@one_line_errors
def logs(config_path: str, repo: str, commit: str, arch: Optional[str], follow: bool) -> None:
    """Print a job's log: the final one, or a running job's output so far (from any host
    with the secret: it is read from the dispatcher)."""
    import sys

    from dispatcher.views.logs import OverWire, read, status_line

    config = _checked(config_path, repo, commit, (arch,) if arch else ())
    archs = [a.value for a in config.require_repo(repo).architectures]
    if arch is None:
        if len(archs) != 1:
            raise click.exceptions.UsageError(f"{repo} runs on {', '.join(archs)}: say which with --arch")
        arch = archs[0]

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    fetch = OverWire(lambda: _client_connection(config, "logs"))
    try:
        last = read(fetch, repo, commit, arch, write, follow)
    except KeyboardInterrupt:
        raise click.exceptions.Exit(130) from None
    finally:
        fetch.close()
    if follow or last.state.final:
        click.echo(("\n" if last.text and not last.text.endswith("\n") else "") + status_line(last),
                   err=not follow)
    elif not last.end:
        click.echo(f"{repo} {commit[:12]} {arch} is {last.state.value}: no output yet (--follow waits for it)",
                   err=True)
    if follow:
        passed = last.state.status is not None and last.state.status.passing
        raise click.exceptions.Exit(0 if passed else 1)


def _checked(config_path: str, repo: str, commit: str, archs: tuple[str, ...]):
    """The config, once the request's names are known good here: a typo is exit 2 before
    any connection is made (submit, rerun and cancel alike)."""
    from dispatcher.common.names import check_commit, parse_arch

    config = load_config(config_path)
    config.require_repo(repo)
    check_commit(commit)
    for a in archs:
        parse_arch(a)
    return config


def _client_connection(config, name: str):
    """A connection to the first of the [observer] dispatchers that answers."""
    from dispatcher.wire.auth import load_secret
    from dispatcher.wire.client import Connection, Dispatchers
    from dispatcher.common.config import dispatcher_addresses
    from dispatcher.wire.protocol import Role
    from dispatcher.wire.tls import for_client

    addresses = dispatcher_addresses(config, "observer")  # first: "is the dispatcher running?"
    secret, tls = load_secret(config.token_for("observer")), for_client(config, "observer")
    return Dispatchers(lambda: addresses).connect(
        lambda address: Connection(address, Role.CLIENT, name, secret, tls=tls))


def _addresses_shown(config) -> str:
    from dispatcher.common.config import dispatcher_addresses
    from dispatcher.common.errors import PolyarchError

    try:
        return ", ".join(str(a) for a in dispatcher_addresses(config, "observer"))
    except PolyarchError:
        return ", ".join(str(a) for a in config.observer.dispatchers)


@main.group()
def state() -> None:
    """The state database: copy a SQLite state to PostgreSQL."""


@state.command("copy")
@config_option
@click.option("--to", "target", required=True, metavar="URL",
              help="postgresql://user@host/database: an empty database (createdb one).")
@one_line_errors
def state_copy(config_path: str, target: str) -> None:
    """Copy this config's SQLite state into a PostgreSQL database, with the dispatcher
    stopped; then set dispatcher.state to that URL and start it."""
    from dispatcher.hub.daemon import copy_state_to
    from dispatcher.hub.store.postgres import shown

    config = load_config(config_path)
    counts = copy_state_to(config, target)
    click.echo(f"copied {counts.get('commits', 0)} commit(s) and {counts.get('jobs', 0)} job(s) to {shown(target)}; "
               f'now set dispatcher.state = "{shown(target)}" in {config.path} and start the dispatcher')


@main.command()
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for ca.crt, dispatcher.crt/.key and one NAME.crt/.key per --client.")
@click.option("--host", "hosts", multiple=True, required=True,
              help="Name or IP address runners use to reach the dispatcher (repeatable).")
@click.option("--client", "clients", multiple=True, help="Client certificate to make, by runner name (repeatable).")
@one_line_errors
def certs(out: Path, hosts: tuple[str, ...], clients: tuple[str, ...]) -> None:
    """Make a small CA and certificates for mutual TLS (keeps an existing CA)."""
    from dispatcher.common.names import check_runner
    from dispatcher.wire.tls import make_certs

    for name in clients:
        check_runner(name)
    for path in make_certs(out, list(hosts), list(clients)):
        click.echo(path)


if __name__ == "__main__":  # pragma: no cover
    main()

