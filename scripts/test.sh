#!/usr/bin/env bash
# Install what the tests need into .venv, then run the linters and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
echo "== ruff"; "$VENV/bin/ruff" check src tests bench
echo "== mypy"; "$VENV/bin/mypy"
echo "== pytest"; "$VENV/bin/pytest" "$@"
