#!/usr/bin/env bash
# Install Debian's Chromium (as root) for the page's browser tests (tests/web/test_page.py), which drive it
# through Playwright's Python API. Never `playwright install`: no browser is downloaded. Idempotent.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
say() { printf '[setup-browser] %s\n' "$*"; }
if [ -x /usr/bin/chromium ]; then
    say "already installed: $(/usr/bin/chromium --version 2>/dev/null || echo /usr/bin/chromium)"
    exit 0
fi
cand=$(apt-cache policy chromium 2>/dev/null | awk '/Candidate:/{print $2}')
if [ -z "$cand" ] || [ "$cand" = "(none)" ]; then apt-get update -q >/dev/null; fi
apt-get install -y -q --no-install-recommends chromium >/tmp/setup-browser.log 2>&1 \
    || { tail -20 /tmp/setup-browser.log; exit 1; }
say "installed: $(/usr/bin/chromium --version 2>/dev/null || echo /usr/bin/chromium)"
