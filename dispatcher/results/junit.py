"""JUnit XML from a job: test counts and each test's outcome.

The file comes from the job, that is from whoever can push to a watched branch, so it
is parsed defensively: no DTDs (no entity expansion tricks), and anything that is not a
<testsuite> or <testsuites> document counts as no JUnit at all.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import xml.etree.ElementTree as ET
import zlib
from typing import Optional

# The result files name at most this many failing tests per arch: a broken build can
# fail thousands, and the file is read by people.
MAX_NAMED_TESTS = 100


class Outcome(str, enum.Enum):
    PASSED = "passed"
    FAILED = "failed"
    ERROR = "error"
    SKIPPED = "skipped"


@dataclasses.dataclass(frozen=True)
class TestCounts:
    total: int
    passed: int
    failed: int
    errors: int
    skipped: int


@dataclasses.dataclass(frozen=True)
class JUnit:
    counts: TestCounts
    outcomes: dict[str, Outcome]  # test id ("classname::name") -> outcome

    @property
    def failing(self) -> list[str]:
        return sorted(t for t, o in self.outcomes.items() if o in (Outcome.FAILED, Outcome.ERROR))

    def to_bytes(self) -> bytes:
        """Compact form for the state database: parsed once, when the result is recorded."""
        data = {"counts": dataclasses.asdict(self.counts), "outcomes": {t: o.value for t, o in self.outcomes.items()}}
        return zlib.compress(json.dumps(data, separators=(",", ":")).encode(), 6)

    @classmethod
    def from_bytes(cls, blob: bytes) -> "JUnit":
        data = json.loads(zlib.decompress(blob))
        return cls(TestCounts(**data["counts"]), {t: Outcome(o) for t, o in data["outcomes"].items()})


def _root(data: bytes) -> Optional[ET.Element]:
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        return None
    try:
        root = ET.fromstring(data)  # noqa: S314 - DTDs refused just above
    except (ET.ParseError, LookupError, ValueError):
        # LookupError: an encoding Python does not know (encoding="x-foo"); ValueError
        # (UnicodeError among them): bytes that do not decode. Not JUnit we can use.
        return None
    return root if root.tag in ("testsuite", "testsuites") else None


def _suites(root: ET.Element) -> list[ET.Element]:
    return [root] if root.tag == "testsuite" else root.findall("testsuite")


def parse(data: bytes) -> Optional[JUnit]:
    """Counts (from the suites' attributes, as test tools write them) and per-test
    outcomes (from the <testcase> elements); None when this is not JUnit XML."""
    root = _root(data)
    if root is None:
        return None
    total = failed = errors = skipped = 0
    outcomes: dict[str, Outcome] = {}
    for suite in _suites(root):
        try:
            total += int(suite.get("tests", 0))
            failed += int(suite.get("failures", 0))
            errors += int(suite.get("errors", 0))
            skipped += int(suite.get("skipped", suite.get("disabled", 0)))
        except ValueError:
            return None
        for case in suite.iter("testcase"):
            outcomes[_test_id(case)] = _outcome(case)
    counts = TestCounts(total, max(0, total - failed - errors - skipped), failed, errors, skipped)
    return JUnit(counts, outcomes)


def _test_id(case: ET.Element) -> str:
    name = case.get("name", "?")
    classname = case.get("classname", "")
    return f"{classname}::{name}" if classname else name


def _outcome(case: ET.Element) -> Outcome:
    if case.find("failure") is not None:
        return Outcome.FAILED
    if case.find("error") is not None:
        return Outcome.ERROR
    if case.find("skipped") is not None:
        return Outcome.SKIPPED
    return Outcome.PASSED


def changes(reports: dict[str, JUnit], parents: dict[str, JUnit]) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """(new_failures, fixed), arch -> tests, against the first parent's reports: failing
    here and passed there, and the reverse. Only the archs both have a report for: on the
    others nothing can be said, and they are left out rather than shown empty."""
    new: dict[str, list[str]] = {}
    fixed: dict[str, list[str]] = {}
    for arch in sorted(reports.keys() & parents.keys()):
        here, there = reports[arch].outcomes, parents[arch].outcomes
        new[arch] = [t for t in reports[arch].failing if there.get(t) == Outcome.PASSED][:MAX_NAMED_TESTS]
        fixed[arch] = [t for t in parents[arch].failing if here.get(t) == Outcome.PASSED][:MAX_NAMED_TESTS]
    return new, fixed


def arch_specific(reports: dict[str, JUnit]) -> list[dict[str, object]]:
    """Tests that fail on some architectures and pass on others: portability bugs.

    A test absent or skipped on an arch says nothing about it there."""
    tests = sorted({t for r in reports.values() for t in r.failing})
    out: list[dict[str, object]] = []
    for test in tests:
        failed_on = sorted(a for a, r in reports.items()
                           if r.outcomes.get(test) in (Outcome.FAILED, Outcome.ERROR))
        passed_on = sorted(a for a, r in reports.items() if r.outcomes.get(test) == Outcome.PASSED)
        if failed_on and passed_on:
            out.append({"test": test, "failed_on": failed_on, "passed_on": passed_on})
        if len(out) >= MAX_NAMED_TESTS:
            break
    return out
