"""retry_failed and per-test results, end to end with real daemons."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from importlib import metadata

import pytest
from packaging.requirements import Requirement

from conftest import ROOT, Polyarch, wait_for

pytestmark = pytest.mark.daemons


def test_a_failure_retried_on_another_runner_that_passes_is_flaky(polyarch: Polyarch) -> None:
    polyarch.write_config(repo_settings="retry_failed = 1")
    marker = polyarch.shared / "failed-once"
    sha = polyarch.repo.commit(f"if [ -e {marker} ]; then echo second try; exit 0; fi; "
                               f"touch {marker}; echo first try; exit 1")
    polyarch.dispatcher()
    polyarch.runner("r1")
    polyarch.runner("r2")
    # Both runners are connected before the commit is seen, so "another runner" exists.
    wait_for(lambda: polyarch.cli("dispatcher", "status", "--config", str(polyarch.config), "--json")
             .stdout.count('"arch": "amd64"') >= 2, what="both runners to register")
    polyarch.observer()
    result = polyarch.wait_results([sha])[sha]
    assert result["status"] == "flaky", result
    [earlier] = result["earlier_attempts"]
    assert earlier["status"] == "failed" and earlier["runner"] != result["runner"]
    assert result["attempt"] == 2
    folder = polyarch.results / "demo" / sha
    assert "first try" in (folder / earlier["log"]).read_text()
    assert "second try" in (folder / "amd64.log").read_text()
    # <arch>.json is the commit point: the summary that counts it is already there.
    assert json.loads((folder / "summary.json").read_text())["flaky_architectures"] == ["amd64"]


def test_a_real_failure_is_retried_then_failed_with_both_logs(polyarch: Polyarch) -> None:
    polyarch.write_config(repo_settings="retry_failed = 1")
    sha = polyarch.repo.commit('echo "attempt $POLYARCH_ATTEMPT"; exit 3')
    polyarch.dispatcher()
    polyarch.runner("only")
    polyarch.observer()
    result = polyarch.wait_results([sha])[sha]
    # Alone for its arch, the runner takes its own retry.
    assert result["status"] == "failed" and result["runner"] == "only" and result["exit_code"] == 3
    assert [a["attempt"] for a in result["earlier_attempts"]] == [1]
    folder = polyarch.results / "demo" / sha
    assert "attempt 1" in (folder / "amd64.attempt1.log").read_text()
    assert "attempt 2" in (folder / "amd64.log").read_text()


def _pytest_for_jobs(polyarch: Polyarch) -> Path:
    """A copy of pytest and everything it needs (pure Python) where jobs can import it: the
    job user may not reach this venv (a clone under /root is out of its reach, as it should
    be). The closure comes from the installed distributions' own requirements."""
    site = polyarch.shared / "site"
    todo, seen = ["pytest"], set()
    while todo:
        dist = metadata.distribution(todo.pop())
        if dist.metadata["Name"].lower() in seen:
            continue
        seen.add(dist.metadata["Name"].lower())
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
        tops = {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in tops - {"__pycache__"}:
            if top.endswith((".dist-info", ".pth")):
                continue
            source = Path(str(dist.locate_file(top)))
            if source.is_dir():
                shutil.copytree(source, site / top, ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)
            elif source.suffix == ".py":
                site.mkdir(parents=True, exist_ok=True)
                shutil.copy(source, site / top)
    return site


def test_plain_pytest_gets_per_test_results_without_config(polyarch: Polyarch) -> None:
    # The command is exactly what users write; polyarch adds --junitxml itself.
    site = _pytest_for_jobs(polyarch)
    polyarch.write_config(test_command="python3 -m pytest -q -p no:cacheprovider",
                          runner_settings='pass_env = ["PYTHONPATH"]')
    tests = ("def test_ok():\n    assert True\n\n\ndef test_broken():\n    assert 1 == 2\n\n\n"
             "def test_later():\n    import pytest\n    pytest.skip('not yet')\n")
    sha = polyarch.repo.commit(files={"test_calc.py": tests})
    polyarch.dispatcher()
    polyarch.runner("r1", prefix=("env", f"PYTHONPATH={ROOT}:{site}"))
    polyarch.observer()
    result = polyarch.wait_results([sha])[sha]
    assert result["status"] == "failed", (polyarch.results / "demo" / sha / "amd64.log").read_text()
    assert result["tests"] == {"total": 3, "passed": 1, "failed": 1, "errors": 0, "skipped": 1}
    assert result["failed_tests"] == ["test_calc::test_broken"]
    assert result["junit"] == "amd64.junit.xml"
