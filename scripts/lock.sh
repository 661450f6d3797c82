#!/usr/bin/env bash
# Re-resolve polyarch's dependencies (runtime + test) in a scratch venv and pin them
# exactly in requirements.lock, the set scripts/setup.sh installs and CI audits.
set -euo pipefail
cd "$(dirname "$0")/.."
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
python3 -m venv "$scratch/venv"
"$scratch/venv/bin/python" -m pip install -q --upgrade pip
"$scratch/venv/bin/python" -m pip install -q ".[test]"
{
  echo "# Exact versions of every dependency, runtime and test. Regenerate: bash scripts/lock.sh"
  "$scratch/venv/bin/python" -m pip freeze --exclude-editable | grep -v -i -E '^polyarch( |==)'
} > requirements.lock
echo "wrote requirements.lock ($(grep -c '==' requirements.lock) packages)"
