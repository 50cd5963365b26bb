#!/usr/bin/env bash
# Installs the PostgreSQL server from Debian's packages when it is missing (the tests start a
# throwaway cluster of their own with its initdb and postgres: tests/conftest.py). Run by
# `make test` and `make bench`; not needed by `make run`, which keeps SQLite.
#
# The package may start a system cluster on 5432; Baton never uses it, so it is stopped
# through the init system that started it (never by name: other servers may run here).
# POSTGRES_BIN_GLOB exists for the tests.
set -u
. "$(dirname "$0")/apt-install.sh"
glob="${POSTGRES_BIN_GLOB:-/usr/lib/postgresql/*/bin}"
have_server() {
  command -v initdb >/dev/null 2>&1 && command -v postgres >/dev/null 2>&1 && return 0
  local dir
  for dir in $glob; do
    [ -x "$dir/initdb" ] && [ -x "$dir/postgres" ] && return 0
  done
  return 1
}
if have_server; then
  exit 0
fi
echo "install-postgres: installing the PostgreSQL server from Debian's packages..." >&2
apt_install postgresql
case $? in
  0)
    if have_server; then
      if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
        as_root systemctl stop postgresql </dev/null >/dev/null 2>&1 || true
      elif command -v service >/dev/null 2>&1; then
        as_root service postgresql stop </dev/null >/dev/null 2>&1 || true
      fi
      echo "install-postgres: PostgreSQL installed." >&2
      exit 0
    fi
    ;;
  2) echo "install-postgres: no PostgreSQL server and no apt-get: install initdb and postgres (PostgreSQL 15+)." >&2; exit 1 ;;
  3) echo "install-postgres: no PostgreSQL server, and installing one needs root (or sudo without a password)." >&2; exit 1 ;;
esac
echo "install-postgres: could not install PostgreSQL (apt-get failed); the tests on PostgreSQL cannot run." >&2
exit 1
