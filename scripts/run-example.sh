#!/usr/bin/env bash
# Run the example project: migrate, make sure an admin login exists, then start a
# qtasks worker in the background and the development server, until Ctrl-C.
#
#   PORT=8001 scripts/run-example.sh          another port (default 8000)
#   DATABASE_URL=postgres://... scripts/...   another database (default ./db.sqlite3)
#   PYTHON=/path/to/python scripts/...        another interpreter (default .venv/bin/python)
#
# The Makefile's `run` target creates .venv first; this script assumes it exists.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-.venv/bin/python}
HOST=127.0.0.1
PORT=${PORT:-8000}
export DJANGO_SETTINGS_MODULE=example_project.settings
export PYTHONUNBUFFERED=1  # worker and server lines appear as they happen

if [ ! -x "$PY" ]; then
  echo "No Python at $PY: run 'make run' (it creates .venv) or set PYTHON." >&2
  exit 1
fi

# A shell that starts with SIGINT ignored (any background job of a non-interactive
# shell, such as `make test &` or a CI step, passes that on) can neither trap it nor
# restore it, and Ctrl-C would do nothing. So start once more with SIGINT at its
# default: Python can reset it, and exec keeps the default for the new bash.
if [ -z "${QTASKS_SIGINT_RESET:-}" ]; then
  export QTASKS_SIGINT_RESET=1
  exec "$PY" -c 'import os, signal, sys
signal.signal(signal.SIGINT, signal.SIG_DFL)
os.execvp("bash", ["bash", *sys.argv[1:]])' "$PWD/scripts/run-example.sh" "$@"
fi
unset QTASKS_SIGINT_RESET

port_open() { (exec 3<>"/dev/tcp/$HOST/$PORT") 2>/dev/null; }
if port_open; then
  echo "Something already answers on $HOST:$PORT: stop it, or choose another port (PORT=8001)." >&2
  exit 1
fi

if [ -t 1 ]; then say() { printf '\033[1m%s\033[0m\n' "$*"; }; else say() { printf '%s\n' "$*"; }; fi

worker_pid=
server_pid=

# Stop the server, then the worker with one SIGTERM: it stops claiming and lets running
# tasks finish (up to QTASKS['GRACE']). A second Ctrl-C during that wait forwards one
# more signal, which makes the worker leave at once.
cleanup() {
  local status=$?
  set +e  # a failing echo (terminal closed) must not cut the cleanup short
  trap - EXIT
  trap 'if [ -n "$worker_pid" ]; then kill -TERM "$worker_pid" 2>/dev/null; fi' INT TERM HUP
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null || true
  fi
  if [ -n "$worker_pid" ] && kill -0 "$worker_pid" 2>/dev/null; then
    say "Stopping the worker (running tasks may finish; Ctrl-C again to stop at once)..."
    kill -TERM "$worker_pid" 2>/dev/null || true
  fi
  for pid in $server_pid $worker_pid; do
    while kill -0 "$pid" 2>/dev/null; do wait "$pid" 2>/dev/null || true; done
  done
  say "Stopped the example site and its worker."
  exit "$status"
}
trap cleanup EXIT
trap 'exit 0' INT TERM HUP  # a requested stop is a clean exit (make prints no error)

say "Migrating the database..."
"$PY" manage.py migrate --noinput

"$PY" manage.py shell -v 0 -c '
from django.contrib.auth import get_user_model
User = get_user_model()
if not User.objects.filter(username="admin").exists():
    User.objects.create_superuser("admin", "admin@example.com", "admin")
    print("Created the admin login: admin / admin")
'

# The worker gets a process group of its own (set -m), so a Ctrl-C in the terminal
# reaches only this script, which then sends the worker exactly one SIGTERM. Were it in
# our group, Ctrl-C plus our SIGTERM would be two signals: "stop now, abandon tasks".
set -m
"$PY" manage.py qtasks_worker -v 1 &
worker_pid=$!
set +m

# No autoreload: the worker would not reload with it, and a web process running new
# task code next to a worker running the old is more confusing than a restart.
"$PY" manage.py runserver --noreload "$HOST:$PORT" &
server_pid=$!

# Wait (with a deadline) until the server accepts connections, or fail if it died.
ready=
for _ in $(seq 1 300); do
  if ! kill -0 "$server_pid" 2>/dev/null; then break; fi
  if port_open; then ready=1; break; fi
  sleep 0.1
done
if [ -z "$ready" ]; then
  echo "The development server did not start on $HOST:$PORT (see its error above)." >&2
  exit 1
fi

url="http://$HOST:$PORT"
echo
say "django-qtasks example is running"
say "  Site:    $url/"
say "  Admin:   $url/admin/   (login: admin / password: admin)"
say "  Worker:  pid $worker_pid, server: pid $server_pid (both log below)"
say "  Stop:    press Ctrl-C (stops the site and the worker)"
echo

# The server is the foreground job; `wait` returns early when a signal is trapped.
status=0
wait "$server_pid" || status=$?
server_pid=
echo "The development server exited (status $status)." >&2
exit "$status"
