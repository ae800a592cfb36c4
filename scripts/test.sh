#!/usr/bin/env bash
# Set up a fresh machine and run the whole test suite: virtual environment, pinned CPU install,
# Debian's chromium for the browser test and PostgreSQL for the shared-store tests when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then SUDO="sudo"; fi
need_apt=()
command -v chromium >/dev/null || need_apt+=(chromium)
if [ -z "${SSMPLAN_TEST_PG:-}" ] && ! command -v pg_ctl >/dev/null && ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
  need_apt+=(postgresql)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing Debian packages: ${need_apt[*]}"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q -e ".[test]" -c requirements/cpu.txt

exec .venv/bin/python -m pytest "$@"
