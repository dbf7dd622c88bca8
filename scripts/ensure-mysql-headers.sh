#!/usr/bin/env bash
# Make sure mysqlclient (the MariaDB/MySQL driver, in the dev and mysql extras) can be
# built: it has no Linux wheels on PyPI and compiles against the client library's
# headers, found through pkg-config, with a C compiler. Debian/Ubuntu: libmariadb-dev,
# pkg-config and gcc. Quiet and idempotent: nothing to do when they are here. Run by
# scripts/venv.sh before pip, so `make venv`, `make test` and CI work on a fresh machine.
set -euo pipefail
have_headers() {
  command -v pkg-config >/dev/null 2>&1 || return 1
  local name
  for name in mysqlclient mariadb libmariadb; do
    pkg-config --exists "$name" 2>/dev/null && return 0
  done
  return 1
}
have_compiler() { command -v cc >/dev/null 2>&1 || command -v gcc >/dev/null 2>&1; }
if have_headers && have_compiler; then exit 0; fi
packages=(libmariadb-dev pkg-config)
have_compiler || packages+=(gcc libc6-dev)
status=0
"$(dirname "$0")/apt-install.sh" "the MariaDB client headers (for mysqlclient)" "${packages[@]}" \
  || status=$?
if [ "$status" -eq 0 ] && have_headers && have_compiler; then exit 0; fi
if [ "$status" -eq 0 ]; then status=1; fi
echo "mysqlclient cannot be built without the MariaDB or MySQL client headers, pkg-config" >&2
echo "and a C compiler (Debian/Ubuntu: apt-get install ${packages[*]})." >&2
exit "$status"
