#!/usr/bin/env bash
# Make sure the MariaDB (or MySQL) server of the tests' MariaDB pass answers at
# $MARIADB_URL (default mysql://root@127.0.0.1:3306/test): if it is installed here but
# stopped, start it (the distribution's service, else mysqld_safe) and wait for it.
# Exit 0 once it accepts the URL's user; 1 with the reason on stderr otherwise.
set -euo pipefail
url=${MARIADB_URL:-mysql://root@127.0.0.1:3306/test}
rest=${url#*://}
auth=root
if [[ $rest == *@* ]]; then auth=${rest%%@*}; rest=${rest#*@}; fi
hostport=${rest%%/*}
user=${auth%%:*}
password=""
if [[ $auth == *:* ]]; then password=${auth#*:}; fi
host=${hostport%%:*}
port=3306
if [[ $hostport == *:* ]]; then port=${hostport##*:}; fi

client=$(command -v mariadb || command -v mysql || true)
alive() {  # the server accepts this user over TCP (or, without a client, the port is open)
  if [ -n "$client" ]; then
    MYSQL_PWD=$password "$client" --protocol=TCP -h "$host" -P "$port" -u "$user" \
      --connect-timeout=2 -e 'SELECT 1' >/dev/null 2>&1
  else
    (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null
  fi
}
database=${rest#*/}
database=${database%%\?*}
make_database() {  # the URL's database, which Django's test runner connects to first
  if [ -n "$client" ] && [ -n "$database" ]; then
    MYSQL_PWD=$password "$client" --protocol=TCP -h "$host" -P "$port" -u "$user" \
      -e "CREATE DATABASE IF NOT EXISTS \`$database\` CHARACTER SET utf8mb4" >/dev/null 2>&1 || true
  fi
}
if alive; then make_database; exit 0; fi
port_open() { (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; }
if port_open; then
  echo "MariaDB answers at $host:$port but does not accept user $user (check the URL's user" >&2
  echo "and password in MARIADB_URL)." >&2
  exit 1
fi

local_host() { [ "$host" = 127.0.0.1 ] || [ "$host" = localhost ] || [ "$host" = ::1 ]; }
server=$(command -v mariadbd || command -v mysqld || ls /usr/sbin/mariadbd /usr/sbin/mysqld 2>/dev/null | head -n 1 || true)
if local_host && [ -n "$server" ]; then
  echo "Starting the local MariaDB server ($server)" >&2
  started=no
  for service in mariadb mysql; do
    if [ -x "/etc/init.d/$service" ] && command -v service >/dev/null 2>&1; then
      service "$service" start >/dev/null 2>&1 && started=yes && break
    fi
  done
  if [ "$started" = no ] && command -v mysqld_safe >/dev/null 2>&1; then
    mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld 2>/dev/null || true
    nohup mysqld_safe >/dev/null 2>&1 &
  fi
  for _ in $(seq 1 60); do alive && make_database && exit 0; sleep 1; done
fi

if [ -z "$server" ]; then
  why="no MariaDB or MySQL server is installed here (Debian/Ubuntu: apt-get install mariadb-server)"
elif ! local_host; then
  why="$host is not this machine, so it was not started here"
else
  why="it was started but does not accept user $user over TCP (see its error log)"
fi
echo "MariaDB is not reachable at $host:$port as $user: $why." >&2
echo "The MariaDB pass of the tests needs it (set MARIADB_URL to point elsewhere)." >&2
exit 1
