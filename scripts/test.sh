#!/usr/bin/env bash
# Set up (scripts/setup.sh), then: lint with ruff's security rules, audit the locked
# dependencies, and run the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
POLYARCH_WITH_BROWSER=1 POLYARCH_TEST_ROOTS=1 POLYARCH_WITH_POSTGRESQL=1 bash scripts/setup.sh
.venv/bin/ruff check dispatcher observer runner bench scripts tests examples
.venv/bin/python scripts/audit_deps.py
exec .venv/bin/python -m pytest "$@"
