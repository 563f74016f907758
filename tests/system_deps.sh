#!/usr/bin/env bash
# System packages the test suite drives for real: Debian's Chromium for the browser test
# (tests/test_demo_browser.py; Playwright launches /usr/bin/chromium, it never downloads a
# browser). Installs with apt-get when run as root and the package is missing; otherwise
# says what to install, and the browser test skips with that reason.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
  command -v chromium >/dev/null
else
  echo "tests/system_deps.sh: Chromium is not installed; as root: apt-get install chromium (the browser test skips without it)" >&2
fi
