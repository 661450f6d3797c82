"""Writing one result's files, in the order that makes <arch>.json the commit point.

Earlier attempts' logs, the log, the JUnit file (the live log goes), then a summary.json that already counts
this result, and <arch>.json last: a reader who sees <arch>.json finds everything else
of that result there. Each file is written atomically (temporary file, fsync, rename).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from dispatcher.common.files import atomic_write
from dispatcher.results.layout import File, path
from dispatcher.results.record import ResultRecord, dumps


def write_result(root: Path, record: ResultRecord, log: bytes, junit: bytes,
                 summary: Mapping[str, Any]) -> Path:
    """Write every file of `record` (and its commit's `summary`); returns <arch>.json's path."""
    where = dict(repo=record.repo, commit=record.commit, arch=record.arch)
    for attempt in record.earlier:
        # An attempt's log is kept in the state only until it is written once: a later
        # result (a rerun) must not overwrite it with nothing.
        attempt_log = path(root, File.ATTEMPT_LOG, n=attempt.attempt, **where)
        if attempt.log or not attempt_log.exists():
            atomic_write(attempt_log, attempt.log)
    atomic_write(path(root, File.LOG, **where), log)
    if junit and record.tests is not None:
        atomic_write(path(root, File.JUNIT, **where), junit)
    else:  # a rerun without JUnit: the earlier run's file is not this result's
        path(root, File.JUNIT, **where).unlink(missing_ok=True)
    # The live log ends with the final one (before the commit point: a crash here is
    # repaired by publishing again).
    path(root, File.LIVE_LOG, **where).unlink(missing_ok=True)
    atomic_write(path(root, File.SUMMARY, record.repo, record.commit), dumps(summary))
    result = path(root, File.RESULT, **where)
    atomic_write(result, dumps(record.to_dict()))
    return result


def rewrite_record(root: Path, record: ResultRecord, summary: Mapping[str, Any]) -> None:
    """A published result said again with what changed around it (the commit reached
    another branch): its summary.json, then its <arch>.json, each replaced atomically;
    the log and the JUnit file stay as they are."""
    atomic_write(path(root, File.SUMMARY, record.repo, record.commit), dumps(summary))
    atomic_write(path(root, File.RESULT, repo=record.repo, commit=record.commit, arch=record.arch),
                 dumps(record.to_dict()))
