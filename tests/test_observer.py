"""What the observer finds new, on real git repositories (Mirror and Cursors below the daemon)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import GitRepo, Polyarch, wait_for
from dispatcher.common.errors import StateError
from observer.cursors import Cursors
from observer.mirror import Change, FetchError, Mirror, local_git_dir


@pytest.fixture
def mirror(tmp_path: Path, repo: GitRepo) -> Mirror:
    repo.commit()
    return Mirror(tmp_path / "mirror.git", str(repo.path), fetch_timeout=30)


def test_first_sighting_is_the_head_only(mirror: Mirror, repo: GitRepo) -> None:
    repo.burst(3)
    mirror.fetch()
    head = mirror.heads()["main"]
    update = mirror.update("main", None, head, 100)
    assert update.change == Change.FIRST_SIGHTING and [c.sha for c in update.commits] == [head]


def test_new_commits_oldest_first_with_metadata(mirror: Mirror, repo: GitRepo) -> None:
    mirror.fetch()
    cursor = mirror.heads()["main"]
    shas = repo.burst(4)
    mirror.fetch()
    update = mirror.update("main", cursor, mirror.heads()["main"], 100)
    assert update.change == Change.NEW_COMMITS and update.skipped == 0
    assert [c.sha for c in update.commits] == shas
    assert update.commits[0].author == "Dev" and update.commits[0].subject.startswith("change")


@pytest.mark.parametrize("pushed", [7, 4, 3, 2])
def test_backfill_cap_keeps_the_newest_and_counts_the_rest(mirror: Mirror, repo: GitRepo, pushed: int) -> None:
    mirror.fetch()
    cursor = mirror.heads()["main"]
    shas = repo.burst(pushed)
    mirror.fetch()
    update = mirror.update("main", cursor, mirror.heads()["main"], 3)
    assert [c.sha for c in update.commits] == shas[-3:] and update.skipped == max(0, pushed - 3)


def test_force_push_queues_the_commits_of_the_new_history(mirror: Mirror, repo: GitRepo) -> None:
    repo.burst(2)
    mirror.fetch()
    cursor = mirror.heads()["main"]
    repo.git("reset", "-q", "--hard", "HEAD~2")
    rewritten = [repo.commit("exit 0", message="rewritten"), repo.commit("exit 0", message="rewritten 2")]
    mirror.fetch()
    update = mirror.update("main", cursor, mirror.heads()["main"], 100)
    # Not only the new head: every commit the old head did not have, oldest first.
    assert update.change == Change.FORCE_PUSHED and [c.sha for c in update.commits] == rewritten


def test_deleted_branch_disappears_from_heads(mirror: Mirror, repo: GitRepo) -> None:
    repo.git("branch", "topic")
    mirror.fetch()
    assert "topic" in mirror.heads()
    repo.git("branch", "-D", "topic")
    mirror.fetch()
    assert "topic" not in mirror.heads()


def test_unreachable_remote_is_a_fetch_error_naming_it(tmp_path: Path) -> None:
    mirror = Mirror(tmp_path / "m.git", str(tmp_path / "nowhere"), fetch_timeout=10)
    with pytest.raises(FetchError, match="nowhere"):
        mirror.fetch()


def test_local_git_dir(tmp_path: Path, repo: GitRepo) -> None:
    assert local_git_dir(str(repo.path)) == repo.path / ".git"
    assert local_git_dir("file://" + str(repo.path)) == repo.path / ".git"
    assert local_git_dir("https://example.invalid/x.git") is None


def test_cursors_persist_and_a_corrupt_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "cursors.json"
    cursors = Cursors(path)
    cursors.set("demo", "main", "a" * 40)
    assert Cursors(path).get("demo", "main") == "a" * 40
    cursors.drop("demo", "main")
    assert json.loads(path.read_text()) == {"demo": {}}
    path.write_text("{not json")
    with pytest.raises(StateError, match=f"{path}: unreadable cursor file"):
        Cursors(path)


def test_heads_read_from_files_match_git_and_local_mirror_skips_fetch(tmp_path: Path, repo: GitRepo) -> None:
    from dispatcher.common.git import read_heads

    repo.commit("exit 0")
    repo.git("branch", "feature")
    repo.git("pack-refs", "--all")  # one head packed ...
    repo.git("checkout", "-q", "-b", "loose/nested")
    repo.commit("exit 0")  # ... one loose, in a nested folder
    expected = dict(line.split(" ", 1)[::-1] for line in
                    repo.git("for-each-ref", "--format=%(objectname) %(refname:lstrip=2)", "refs/heads/").splitlines())
    assert read_heads(repo.path / ".git") == expected
    mirror = Mirror(tmp_path / "m.git", str(repo.path), 30)
    assert not mirror.up_to_date()
    mirror.fetch()
    assert mirror.up_to_date() and mirror.heads() == expected
    repo.commit("exit 0")
    assert not mirror.up_to_date()  # a new commit: fetch again
    assert not Mirror(tmp_path / "r.git", "https://example.invalid/x.git", 30).up_to_date()  # remote: always fetch


def test_a_push_after_the_dispatcher_closed_the_idle_connection_is_no_outage(polyarch: Polyarch) -> None:
    # The dispatcher closes a connection silent for idle_timeout; the observer's next
    # report must reconnect at once: no "unreachable" warning, no backoff.
    polyarch.write_config(dispatcher_settings="idle_timeout = 1")
    first = polyarch.repo.commit("exit 0")
    dispatcher = polyarch.dispatcher()
    polyarch.runner()
    observer = polyarch.observer()
    polyarch.wait_results([first])
    wait_for(lambda: "closing idle or slow connection" in dispatcher.log(), what="the dispatcher to close it")
    second = polyarch.repo.commit("exit 0")
    polyarch.wait_results([second])
    log = observer.log()
    assert "unreachable" not in log and "retry in" not in log, log


def test_a_repository_that_fails_unexpectedly_backs_off_and_never_spins(polyarch: Polyarch, caplog) -> None:
    # Whatever a commit provokes in a poll (here a stand-in mirror raising ValueError), the
    # repository backs off like an unreachable one, with one traceback, not one per loop.
    import time

    from dispatcher.common.config import load_config
    from observer.service import Observer

    polyarch.dispatcher()  # makes the shared secret the observer loads
    observer = Observer(load_config(polyarch.config))
    repo = observer.config.repos[0]

    class Broken:
        def up_to_date(self) -> bool:
            raise ValueError("a commit nobody can parse")

    observer.mirrors[repo.name] = Broken()
    assert observer._poll_one(repo) is False and observer._poll_one(repo) is False
    assert observer.failures[repo.name] == 2 and observer.next_poll[repo.name] > time.monotonic() + 0.3
    assert caplog.text.count("Traceback") <= 1 and caplog.text.count("polling failed unexpectedly") == 1
