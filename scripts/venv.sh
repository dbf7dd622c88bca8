#!/usr/bin/env bash
# Create (or refresh) a virtualenv with the project and its dev tools.
#   scripts/venv.sh .venv        newest Python >= 3.12 found, newest Django
#   scripts/venv.sh .venv-lts    Python 3.11 (or the oldest >= 3.10 found), Django 5.2 LTS
set -euo pipefail
dir=${1:-.venv}
cd "$(dirname "$0")/.."

candidates() {  # $@: versions, in order of preference
  local root
  root=$(pyenv root 2>/dev/null || true)
  for v in "$@"; do
    command -v "python$v" 2>/dev/null || true
    if [ -n "$root" ]; then ls -d "$root"/versions/"$v".*/bin/python 2>/dev/null | sort -V | tail -n 1 || true; fi
  done
  command -v python3 2>/dev/null || true
}
pick() {  # $1: minimum minor, $2: maximum minor, then the versions in order of preference
  local py lo=$1 hi=$2
  shift 2
  while read -r py; do
    [ -n "$py" ] && [ -x "$py" ] || continue
    if "$py" -c "import sys, venv; sys.exit(0 if (3, $lo) <= sys.version_info[:2] <= (3, $hi) else 1)" 2>/dev/null; then
      echo "$py"; return 0
    fi
  done < <(candidates "$@")
  return 1
}

if [ "$dir" = ".venv-lts" ]; then
  # The LTS line runs on the oldest Python we support that is here, to cover both ends.
  py=$(pick 10 13 3.10 3.11 3.12 3.13) || { echo "No Python 3.10+ found" >&2; exit 1; }
  django='Django>=5.2,<5.3'
  extras='dev,tasks'  # the django-tasks backport: the django.tasks backend is tested on 5.2 too
else
  if py=$(pick 12 14 3.14 3.13 3.12); then django='Django>=6.0,<7'; else
    py=$(pick 10 11 3.11 3.10) || { echo "No Python 3.10+ found" >&2; exit 1; }
    django='Django>=5.2,<5.3'
  fi
fi

extras=${extras:-dev}

stamp="$dir/.installed"
if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ] && [ "$stamp" -nt scripts/venv.sh ] \
  && [ "$stamp" -nt scripts/ensure-mysql-headers.sh ]; then exit 0; fi
echo "Creating $dir with $("$py" --version) and $django" >&2
# mysqlclient (in the dev extra) compiles against the MariaDB client headers.
scripts/ensure-mysql-headers.sh
[ -x "$dir/bin/python" ] || "$py" -m venv "$dir"
"$dir/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
"$dir/bin/python" -m pip install --quiet --disable-pip-version-check -e ".[$extras]" "$django" 2>&1 | grep -v '^WARNING: Location' || true
"$dir/bin/python" -c "import django, django_qtasks, MySQLdb; print('Django', django.get_version())" >&2
touch "$stamp"
