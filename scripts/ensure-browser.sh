#!/usr/bin/env bash
# Make sure Debian's Chromium is at /usr/bin/chromium for the browser tests.
# Playwright's own browser downloads are never used (they fail on closed networks);
# the tests launch this binary through `executable_path`.
set -euo pipefail
browser=/usr/bin/chromium
if [ -x "$browser" ]; then exit 0; fi
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "Installing Chromium from the distribution (apt-get install chromium)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends chromium >/dev/null
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  why="not running as root"
else
  why="apt-get is not available"
fi
echo "Chromium is not installed at $browser and cannot be installed here ($why)." >&2
echo "Install it (Debian/Ubuntu: apt-get install chromium); the browser tests skip without it," >&2
echo "and fail when CI is set." >&2
