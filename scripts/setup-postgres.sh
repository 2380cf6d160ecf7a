#!/usr/bin/env bash
# Install PostgreSQL's server from Debian's packages (as root), for the tests that run the store on a
# real PostgreSQL server. The tests start their own throwaway cluster (tests/store/conftest.py); the
# cluster the package creates is left down. Idempotent.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
say() { printf '[setup-postgres] %s\n' "$*"; }
if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    say "already installed: $(ls -d /usr/lib/postgresql/*/bin | head -1)"
    exit 0
fi
cand=$(apt-cache policy postgresql 2>/dev/null | awk '/Candidate:/{print $2}')
if [ -z "$cand" ] || [ "$cand" = "(none)" ]; then apt-get update -q >/dev/null; fi
apt-get install -y -q --no-install-recommends postgresql >/tmp/setup-postgres.log 2>&1 \
    || { tail -20 /tmp/setup-postgres.log; exit 1; }
say "installed: $(ls -d /usr/lib/postgresql/*/bin | head -1)"
