#!/usr/bin/env bash
# Create (or refresh) one virtualenv per peer queue under .bench/, for bench/compare.py.
#   bench/peers/setup.sh [peer ...]      peers: djangotasks procrastinate celery (default: all)
# Each venv gets the peer pinned in bench/peers/requirements-<peer>.txt and nothing of
# ours (its driver uses bench/measure.py, which needs only the standard library). The
# interpreter is the one behind the project's .venv, so every system runs on the same
# Python; BENCH_PYTHON=/path/to/python picks another.
set -euo pipefail
cd "$(dirname "$0")/../.."
py=${BENCH_PYTHON:-}
if [ -z "$py" ]; then
  py=$(.venv/bin/python -c 'import sys; print(getattr(sys, "_base_executable", sys.executable))')
fi
peers=("$@")
[ ${#peers[@]} -gt 0 ] || peers=(djangotasks procrastinate celery)
mkdir -p .bench
for peer in "${peers[@]}"; do
  req=bench/peers/requirements-$peer.txt
  [ -f "$req" ] || { echo "unknown peer: $peer (no $req)" >&2; exit 2; }
  dir=.bench/venv-$peer
  stamp=$dir/.installed
  if [ -f "$stamp" ] && [ "$stamp" -nt "$req" ]; then continue; fi
  echo "Creating $dir with $("$py" --version)" >&2
  [ -x "$dir/bin/python" ] || "$py" -m venv "$dir"
  # A peer that fails to install is reported and left unstamped; the benchmark still
  # runs and shows "failed" for it.
  if ! "$dir/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req" \
      > "$dir/pip.log" 2>&1; then
    echo "installing $peer failed (see $dir/pip.log):" >&2
    tail -n 5 "$dir/pip.log" >&2
    continue
  fi
  "$dir/bin/python" -m pip freeze --disable-pip-version-check > "$dir/freeze.txt"
  touch "$stamp"
done
