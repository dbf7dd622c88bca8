#!/usr/bin/env bash
# Install Debian packages that the tests need, quietly:  scripts/apt-install.sh NAME PACKAGE...
# Exit 0 once installed; 2 when it cannot be done here (not root, no apt-get), with the
# reason on stderr; apt-get's own status when apt-get fails.
set -euo pipefail
name=$1
shift
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "Installing $name from the distribution (apt-get install $*)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "$@" >/dev/null
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  why="not running as root"
else
  why="apt-get is not available"
fi
echo "$name is not installed and cannot be installed here ($why)." >&2
exit 2
