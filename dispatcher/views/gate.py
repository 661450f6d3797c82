"""`polyarch-dispatcher wait`: a CI gate on "every architecture passed".

It asks the dispatcher where a commit stands (QUERY), submits it (or the architectures
it lacks) when needed, and asks again until every configured architecture has a final
result or the time is up. A dispatcher restart in the middle is ridden out: the gate
reconnects until its deadline.
"""

from __future__ import annotations

import dataclasses
import enum
import time
from typing import Callable, Optional

from rich.console import Group
from rich.table import Table
from rich.text import Text

from dispatcher.wire.client import Connection
from dispatcher.common.errors import PolyarchError, RemoteError
from dispatcher.wire.protocol import CommitStatus, Query, Submit
from dispatcher.common.states import CellState, Overall
from dispatcher.views.terminal import mark

POLL_INTERVAL = 1.0


class Verdict(enum.IntEnum):
    """The exit code of `wait`."""

    PASSED = 0
    FAILED = 1
    TIMEOUT = 3
    UNREACHABLE = 4  # no answer from the dispatcher at all: not a verdict on the commit


class Unreachable(PolyarchError):
    """The dispatcher never answered; `wait` exits UNREACHABLE, naming the address."""


# Without one answer in this long, the dispatcher is taken as unreachable (a restart takes
# seconds; later outages are ridden out until the deadline).
FIRST_CONTACT = 30.0


def failed_early(status: CommitStatus) -> bool:
    """An architecture already failed, for good: the gate's answer cannot be a pass."""
    return any(a.state.final and a.published and a.state.status is not None and not a.state.status.passing
               for a in status.archs)


def only(status: CommitStatus, archs: list[str]) -> CommitStatus:
    """The commit as the gate judges it: on the architectures configured now (a job of one
    removed from the config, cancelled, is no verdict on the commit)."""
    if not status.known or all(a.arch in archs for a in status.archs):
        return status
    kept = [a for a in status.archs if a.arch in archs]
    return dataclasses.replace(status, archs=kept, status=Overall.of(a.state.status for a in kept))


def verdict(status: Optional[CommitStatus]) -> Verdict:
    if status is not None and status.known and failed_early(status):
        return Verdict.FAILED
    if status is None or not status.known or status.status == Overall.PENDING:
        return Verdict.TIMEOUT
    return Verdict.PASSED if status.status == Overall.PASSED else Verdict.FAILED


def wait(connect: Callable[[], Connection], repo: str, commit: str, branch: str, archs: list[str],
         timeout: float, poll: float = POLL_INTERVAL,
         on_update: Callable[[CommitStatus], None] = lambda s: None, every: bool = False,
         address: str = "") -> Optional[CommitStatus]:
    """The commit's last known status once final (or, unless `every`, as soon as one
    architecture failed), or when `timeout` runs out (then possibly still pending).
    Raises Unreachable when the dispatcher never answered within FIRST_CONTACT."""
    began = time.monotonic()
    deadline = began + timeout
    last: Optional[CommitStatus] = None
    submitted = False
    conn: Optional[Connection] = None
    last_error: Optional[Exception] = None
    try:
        while True:
            try:
                if conn is None:
                    conn = connect()
                status = conn.request(Query(repo=repo, commit=commit))
                if not isinstance(status, CommitStatus):
                    raise PolyarchError(f"dispatcher answered query with {status.KIND.value}")
                missing = sorted(set(archs) - {a.arch for a in status.archs})
                status = only(status, archs)
                if missing and not submitted:
                    conn.request_ack(Submit(repo=repo, commit=commit, branch=branch, archs=missing))
                    submitted = True
                    continue
                last, last_error = status, None
                on_update(status)
                # Final and written: whoever runs the gate may read the result files next;
                # they are there a few milliseconds after the result is durable.
                if (status.known and not missing and status.status != Overall.PENDING
                        and all(a.published for a in status.archs)):
                    return status
                if status.known and not every and failed_early(status):
                    return status
            except RemoteError:
                raise  # the dispatcher refused (unknown repo, bad commit): waiting will not help
            except (OSError, PolyarchError) as exc:
                # Restarting or unreachable: keep trying until the deadline.
                last_error = exc
                if conn is not None:
                    conn.close()
                    conn = None
            if last is None and last_error is not None and (
                    time.monotonic() - began > min(FIRST_CONTACT, timeout) or time.monotonic() + poll > deadline):
                raise Unreachable(f"cannot reach the dispatcher at {address or 'its address'}: {last_error}; "
                                  "is it running (polyarch-dispatcher serve)?")
            if time.monotonic() + poll > deadline:
                return last
            time.sleep(poll)
    finally:
        if conn is not None:
            conn.close()


def summary(status: Optional[CommitStatus], repo: str, commit: str, timed_out: bool) -> Group:
    """One screen: the verdict, a line per architecture, the failing tests by name."""
    if status is None or not status.known:
        return Group(Text(f"{repo} {commit[:12]}: not known to the dispatcher yet", style="yellow"))
    # The subject, runner names and test ids come from a commit: text, never markup.
    table = Table(title=Text(f"{repo} {commit[:12]} {status.subject[:50]}", style="table.title"),
                  title_justify="left")
    for col in ("arch", "status", "duration", "runner", "tests"):
        table.add_column(col, no_wrap=True)
    for a in status.archs:
        tests = "" if a.tests_total < 0 else f"{a.tests_total - a.tests_failed}/{a.tests_total} passed"
        runner = a.runner + (" (qemu)" if a.emulated else "")
        duration = f"{a.duration:.1f}s" if a.state != CellState.QUEUED else ""
        table.add_row(a.arch, mark(a.state.value), duration, Text(runner), tests)
    parts: list = [table]
    for a in status.archs:
        if a.failed_tests:
            shown = a.failed_tests[:10]
            more = f" (and {len(a.failed_tests) - 10} more)" if len(a.failed_tests) > 10 else ""
            parts.append(Text(f"failing on {a.arch}: " + ", ".join(shown) + more, style="red"))
        elif a.reason and a.state.final and not _passing(a.state):
            parts.append(Text(f"{a.arch}: {a.reason}", style="red"))
    v = verdict(status)
    if timed_out and v == Verdict.TIMEOUT:
        done = sum(1 for a in status.archs if a.state.final)
        parts.append(Text(f"timed out: {done} of {len(status.archs)} architecture(s) finished", style="yellow"))
    elif v == Verdict.PASSED:
        flaky = [a.arch for a in status.archs if a.state == CellState.FLAKY]
        note = f" (flaky on {', '.join(flaky)})" if flaky else ""
        parts.append(Text(f"all {len(status.archs)} architecture(s) passed{note}", style="green"))
    else:
        failing = [a.arch for a in status.archs if a.state.final and not _passing(a.state)]
        pending = [a.arch for a in status.archs if not a.state.final]
        still = f" ({', '.join(pending)} not finished yet)" if pending else ""
        parts.append(Text(f"failed on {', '.join(failing)}{still}", style="bold red"))
    return Group(*parts)


def _passing(state: CellState) -> bool:
    return state.status is not None and state.status.passing
