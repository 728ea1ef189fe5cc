#!/usr/bin/env bash
# Start a throwaway PostgreSQL for the tests (installing Debian's package if
# missing) and print one line for the caller to eval:
#   export EFFBENCH_TEST_PG_URL=postgresql+psycopg://postgres@127.0.0.1:PORT/postgres EFFBENCH_TEST_PG_DIR=DIR
# Progress goes to stderr, so `eval "$(bash .ci/start-postgres.sh)"` works.
# Stop it (and delete its data) with: bash .ci/start-postgres.sh --stop DIR
set -euo pipefail

log() { echo "start-postgres: $*" >&2; }

pg_bin() { find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -n 1; }

# initdb refuses to run as root: as root, act as the postgres user.
as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

if [ "${1:-}" = --stop ]; then
  dir=${2:?usage: $0 --stop DATA_DIR}
  as_pg "$(pg_bin)/pg_ctl" -D "$dir" stop -m fast >&2 || log "server in $dir was not running"
  rm -rf "$dir"
  exit 0
fi

if [ -z "$(pg_bin)" ]; then
  log "installing postgresql"
  sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y postgresql >&2
fi
bin=$(pg_bin)
[ -n "$bin" ] || { log "no PostgreSQL binaries under /usr/lib/postgresql"; exit 1; }

dir=$(mktemp -d /tmp/effbench-pg.XXXXXX)
[ "$(id -u)" = 0 ] && chown postgres: "$dir"
log "initdb in $dir ($bin)"
as_pg "$bin/initdb" -D "$dir" -A trust -U postgres >"$dir.initdb.log" 2>&1 || { cat "$dir.initdb.log" >&2; exit 1; }
rm -f "$dir.initdb.log"

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Another server may take a port between our check and its start: try the next.
for port in $(shuf -i 20000-60000 -n 20); do
  port_in_use "$port" && continue
  if as_pg "$bin/pg_ctl" -D "$dir" -o "-k /tmp -h 127.0.0.1 -p $port" -l "$dir/log" -w start >&2; then
    log "listening on 127.0.0.1:$port"
    echo "export EFFBENCH_TEST_PG_URL=postgresql+psycopg://postgres@127.0.0.1:$port/postgres EFFBENCH_TEST_PG_DIR=$dir"
    exit 0
  fi
  cat "$dir/log" >&2
done
log "could not start PostgreSQL on a free port"
exit 1
