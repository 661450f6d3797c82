"""Branch patterns, forges' review refs and the branches a commit is seen on, through real
daemons (observer, dispatcher, runner) and a real repository."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import ROOT, Polyarch, wait_for

pytestmark = pytest.mark.daemons


def _summary(polyarch: Polyarch, sha: str) -> dict:
    path = polyarch.results / "demo" / sha / "summary.json"
    return json.loads(path.read_text()) if path.exists() else {}


def test_patterns_and_pull_request_refs_are_watched_and_a_commit_is_tested_once(polyarch: Polyarch) -> None:
    repo = polyarch.repo
    base = repo.commit("exit 0", message="base")
    polyarch.write_config(repo_settings='branches = ["main", "release/*", "refs/pull/*/head"]')
    polyarch.dispatcher()
    polyarch.runner("r1")
    polyarch.observer()
    assert polyarch.wait_results([base])[base]["branches"] == ["main"]

    # A release branch, seen for the first time: its head is tested, on that branch.
    repo.git("checkout", "-q", "-b", "release/1.0")
    rel = repo.commit("exit 0", message="release fix")
    assert polyarch.wait_results([rel])[rel]["branch"] == "release/1.0"
    # A forge's pull request head: a ref outside refs/heads, by its full name.
    repo.git("checkout", "-q", "-b", "scratch", base)
    pr = repo.commit("exit 0", message="proposed change")
    repo.git("update-ref", "refs/pull/7/head", pr)
    result = polyarch.wait_results([pr])[pr]
    assert result["branch"] == "refs/pull/7/head" and result["branches"] == ["refs/pull/7/head"]
    # Not watched: neither a branch outside the patterns nor a ref namespace not named.
    repo.git("checkout", "-q", "-b", "feature/x", base)
    ignored = repo.commit("exit 0", message="not watched")
    repo.git("update-ref", "refs/other/1", ignored)
    # More commits on a watched release branch are each tested.
    repo.git("checkout", "-q", "release/1.0")
    later = [repo.commit("exit 0", message=f"release {i}") for i in range(2)]
    polyarch.wait_results(later)

    # main moves to the release's commits: none runs again, and each one's files name both.
    repo.git("checkout", "-q", "main")
    repo.git("merge", "-q", "--ff-only", "release/1.0")
    for sha in [rel, *later]:
        wait_for(lambda sha=sha: (_summary(polyarch, sha).get("branches") == ["release/1.0", "main"]
                                  and polyarch.result(sha)["branches"] == ["release/1.0", "main"]),
                 what=f"{sha[:12]}'s files to name both branches")
        assert polyarch.result(sha)["attempt"] == 1
    jobs = json.loads(polyarch.cli("dispatcher", "status", "--config", str(polyarch.config), "--json",
                                   "--limit", "100").stdout)
    tested = {c["commit"] for c in jobs["commits"]}
    assert tested == {base, rel, pr, *later} and ignored not in tested
    assert not (polyarch.results / "demo" / ignored).exists()


def test_every_git_valid_branch_name_works_with_the_gate(polyarch: Polyarch) -> None:
    polyarch.repo.git("checkout", "-q", "-b", "fix#12-arm")
    sha = polyarch.repo.commit("exit 0")
    polyarch.dispatcher()
    polyarch.runner("r1")
    out = subprocess.run([sys.executable, "-m", "dispatcher", "wait", "--config", str(polyarch.config), "--repo",
                          "demo", "--commit", sha, "--branch", "fix#12-arm", "--timeout", "60"],
                         cwd=polyarch.root, capture_output=True, text=True, env={"PYTHONPATH": str(ROOT),
                                                                                   "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stdout + out.stderr
    assert polyarch.result(sha)["branch"] == "fix#12-arm"
    refused = subprocess.run([sys.executable, "-m", "dispatcher", "wait", "--config", str(polyarch.config),
                              "--repo", "demo", "--commit", sha, "--branch", "x;reboot", "--timeout", "5"],
                             cwd=polyarch.root, capture_output=True, text=True, env={"PYTHONPATH": str(ROOT)})
    assert refused.returncode == 2 and "invalid branch name 'x;reboot'" in refused.stderr
