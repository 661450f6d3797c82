"""Audit requirements.lock against the vulnerability records PyPI publishes (from OSV).

Why not pip-audit: it asks PyPI's per-release JSON API (/pypi/NAME/VERSION/json), which
the lab networks polyarch is built on (a PyPI proxy) do not serve, and then it reports
the packages as "could not be audited" and still exits 0. This script asks the same
data, falls back to the per-project record (whose vulnerabilities are those of the
newest release) when the pinned version is the newest, and fails loudly for any
package it could not check, so an unaudited dependency is never mistaken for a safe one.

    python scripts/audit_deps.py [requirements.lock]    exit 0 clean, 1 vulnerable or unaudited
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from pathlib import Path

INDEX = "https://pypi.org/pypi"


def _get(url: str) -> dict | None:
    try:
        with urllib.request.urlopen(url, timeout=30) as reply:  # noqa: S310 - fixed https URL
            return json.load(reply)
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise


def audit(name: str, version: str) -> tuple[str, list[str]]:
    """('ok' | 'vulnerable' | 'unaudited', details)."""
    data = _get(f"{INDEX}/{name}/{version}/json")
    if data is None:
        project = _get(f"{INDEX}/{name}/json")
        if project is None or project["info"]["version"] != version:
            newest = project["info"]["version"] if project else "?"
            return "unaudited", [f"no record for {version} here (newest is {newest}); run: bash scripts/lock.sh"]
        data = project
    vulns = [f"{v.get('id')} (fixed in {', '.join(v.get('fixed_in') or ['-'])}): {(v.get('summary') or '')[:80]}"
             for v in data.get("vulnerabilities", []) if not v.get("withdrawn")]
    return ("vulnerable" if vulns else "ok"), vulns


def main() -> int:
    lock = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent / "requirements.lock")
    pins = [line.split("==", 1) for line in lock.read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    bad = 0
    for name, version in pins:
        try:
            verdict, details = audit(name.strip(), version.strip())
        except (OSError, ValueError) as exc:
            verdict, details = "unaudited", [f"PyPI unreachable: {exc}"]
        print(f"{verdict:10} {name}=={version}")
        for line in details:
            print(f"           {line}")
        bad += verdict != "ok"
    print(f"audit_deps: {len(pins)} packages from {lock.name}, {len(pins) - bad} clean, {bad} vulnerable or unaudited")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
