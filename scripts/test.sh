#!/usr/bin/env bash
# Install what the tests need (.venv, Podman from Debian, locally built images, PostgreSQL, Slurm,
# Chromium), then run the linters and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
echo "== podman and the images the container tests run"
bash scripts/setup-podman.sh
bash scripts/build-images.sh
echo "== PostgreSQL server for the store tests"
bash scripts/setup-postgres.sh
echo "== Slurm single-node cluster for the Slurm runner tests"
bash scripts/setup-slurm.sh
echo "== Debian's Chromium for the page's browser tests"
bash scripts/setup-browser.sh
echo "== ruff"; "$VENV/bin/ruff" check src tests bench
echo "== mypy"; "$VENV/bin/mypy"
echo "== pytest"; "$VENV/bin/pytest" "$@"
