#!/usr/bin/env bash
# The long version of the fault-injection and hostile-input tests (tests/faults/), then
# docs/RELIABILITY.md regenerated from what they checked. About 15 minutes on 2 cores.
# Needs root for the full-disk tests (tmpfs mounts), like CI.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
record=$(mktemp)
trap 'rm -f "$record"' EXIT
started=$(date +%s)
status=0
POLYARCH_FAULTS=long POLYARCH_RELIABILITY_RECORD="$record" \
  .venv/bin/python -m pytest tests/faults -q --timeout 3600 "$@" || status=$?
.venv/bin/python scripts/reliability_report.py "$record" docs/RELIABILITY.md \
  --pytest-exit "$status" --seconds "$(( $(date +%s) - started ))"
exit "$status"
