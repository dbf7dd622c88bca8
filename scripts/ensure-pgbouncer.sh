#!/usr/bin/env bash
# Make sure Debian's PgBouncer is installed for the tests that run the worker behind it
# (tests/pgbouncer). The tests start their own pgbouncer process on a free port; the
# package's own service is never used. Quiet and idempotent: nothing to do when it is here.
set -euo pipefail
if command -v pgbouncer >/dev/null 2>&1 || [ -x /usr/sbin/pgbouncer ]; then exit 0; fi
status=0
"$(dirname "$0")/apt-install.sh" PgBouncer pgbouncer || status=$?
if [ "$status" -ne 2 ]; then exit "$status"; fi
echo "Install it (Debian/Ubuntu: apt-get install pgbouncer); the PgBouncer tests skip" >&2
echo "without it, and fail when CI is set." >&2
if [ -n "${CI:-}" ]; then exit 1; fi
