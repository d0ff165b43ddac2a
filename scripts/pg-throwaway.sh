#!/usr/bin/env bash
# A throwaway PostgreSQL server for the tests that need one: Debian's packages, a new cluster in a
# temp folder, listening on 127.0.0.1 only, trusting local connections, without fsync.
#
#   eval "$(scripts/pg-throwaway.sh start [port])"   sets PG_URL and PGDIR (default port 55432)
#   scripts/pg-throwaway.sh stop "$PGDIR"             stops it and removes its folder
#
# initdb refuses to run as root: as root, the server runs as the user `postgres` (which Debian's
# package creates); as another user, it runs as that user.
set -euo pipefail
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
if [ -z "$bin" ]; then
  echo "no PostgreSQL server found in /usr/lib/postgresql (apt-get install postgresql)" >&2
  exit 1
fi
# (from /: the user postgres may not enter the current folder)
as() { if [ "$(id -u)" = 0 ]; then (cd / && runuser -u postgres -- "$@"); else "$@"; fi; }
case "${1:-}" in
start)
  port=${2:-55432}
  dir=$(mktemp -d /tmp/pg-throwaway.XXXXXX)
  chmod 755 "$dir"
  if [ "$(id -u)" = 0 ]; then chown postgres "$dir"; fi
  as "$bin/initdb" -D "$dir/data" -U postgres -A trust --no-sync -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log"
  as "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c fsync=off -c max_connections=300" start >/dev/null
  echo "PG_URL=postgres://postgres@127.0.0.1:$port/postgres; PGDIR=$dir; export PG_URL PGDIR"
  ;;
stop)
  dir=${2:?usage: pg-throwaway.sh stop <dir>}
  as "$bin/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null || true
  rm -rf "$dir"
  ;;
*)
  echo "usage: pg-throwaway.sh start [port] | stop <dir>" >&2
  exit 2
  ;;
esac
