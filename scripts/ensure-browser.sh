#!/usr/bin/env bash
# Make sure Debian's Chromium is at /usr/bin/chromium for the browser tests.
# Playwright's own browser downloads are never used (they fail on closed networks);
# the tests launch this binary through `executable_path`.
set -euo pipefail
browser=/usr/bin/chromium
if [ -x "$browser" ]; then exit 0; fi
status=0
"$(dirname "$0")/apt-install.sh" Chromium chromium || status=$?
if [ "$status" -ne 2 ]; then exit "$status"; fi
echo "Install it (Debian/Ubuntu: apt-get install chromium); the browser tests skip without it," >&2
echo "and fail when CI is set." >&2
