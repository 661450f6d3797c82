"""JUnit XML: counts, per-test outcomes, tests that fail on one arch only, and the
`--junitxml` polyarch adds to a plain pytest command."""

from __future__ import annotations

import pytest

from dispatcher.results.junit import Outcome, arch_specific, parse
from dispatcher.results.record import summary_dict
from runner.junit import is_plain_pytest, with_junit

DOC = b"""<?xml version="1.0"?>
<testsuites><testsuite name="pytest" tests="4" failures="1" errors="1" skipped="1">
<testcase classname="tests.test_calc" name="test_add"/>
<testcase classname="tests.test_calc" name="test_sub"><failure message="boom"/></testcase>
<testcase classname="tests.test_calc" name="test_io"><error message="fixture"/></testcase>
<testcase classname="tests.test_calc" name="test_win"><skipped/></testcase>
</testsuite></testsuites>"""


def test_counts_and_outcomes() -> None:
    report = parse(DOC)
    assert report is not None
    assert (report.counts.total, report.counts.passed, report.counts.failed, report.counts.errors,
            report.counts.skipped) == (4, 1, 1, 1, 1)
    assert report.outcomes["tests.test_calc::test_win"] == Outcome.SKIPPED
    assert report.failing == ["tests.test_calc::test_io", "tests.test_calc::test_sub"]


def test_entities_and_other_documents_are_not_junit() -> None:
    assert parse(b'<!DOCTYPE x [<!ENTITY a "b">]><testsuite tests="1"/>') is None
    assert parse(b"<html/>") is None
    assert parse(b"<testsuite") is None


def test_arch_specific_needs_a_pass_elsewhere() -> None:
    fails = parse(DOC)
    passes = parse(b'<testsuite tests="3"><testcase classname="tests.test_calc" name="test_add"/>'
                   b'<testcase classname="tests.test_calc" name="test_sub"/>'
                   b'<testcase classname="tests.test_calc" name="test_win"><skipped/></testcase></testsuite>')
    assert fails is not None and passes is not None
    # test_io fails on amd64 but never ran on arm64: not evidence of an arch-specific bug.
    assert arch_specific({"amd64": fails, "arm64": passes}) == [
        {"test": "tests.test_calc::test_sub", "failed_on": ["amd64"], "passed_on": ["arm64"]}]
    summary = summary_dict("demo", "a" * 40, "main", {"amd64": "failed", "arm64": "passed"},
                           {"amd64": fails, "arm64": passes})
    assert summary["arch_specific_tests"][0]["test"] == "tests.test_calc::test_sub"
    assert summary["arch_specific_failure"] is True


def test_flaky_counts_as_passed_in_the_summary() -> None:
    summary = summary_dict("demo", "a" * 40, "main", {"amd64": "flaky", "arm64": "passed"})
    assert summary["status"] == "passed" and summary["flaky_architectures"] == ["amd64"]
    assert summary["failing_architectures"] == [] and summary["arch_specific_failure"] is False


@pytest.mark.parametrize("command", ["pytest", "pytest -q tests", "python -m pytest -q", "python3 -m pytest -x",
                                     "/usr/bin/python3.11 -m pytest", ".venv/bin/pytest -k 'not slow'"])
def test_plain_pytest_gets_junitxml(command: str) -> None:
    assert is_plain_pytest(command)
    assert with_junit(command) == f'{command} --junitxml="$POLYARCH_JUNIT"'


@pytest.mark.parametrize("command", ["make check", "pytest -q && echo ok", "pytest | tee out", "pytest; true",
                                     "pytest > out.txt", "cd src && pytest", "python -m unittest",
                                     "pytest --junitxml=my.xml", "pytest --junit-xml my.xml", "pytest 'unclosed",
                                     "python -c 'import pytest'", "pytest $(cat args)"])
def test_anything_else_is_left_as_written(command: str) -> None:
    assert with_junit(command) == command
