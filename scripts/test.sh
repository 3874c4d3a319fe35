#!/usr/bin/env bash
# The test command: lint, format check, strict typing, then the whole test suite (the root/netns tests too when root)
# on SQLite, then the tests that touch the store (`-m store`, tests/conftest.py) again on a throwaway PostgreSQL 15
# cluster (HEARTH_TEST_PG=all: the whole suite there too). pytest runs on HEARTH_TEST_WORKERS pytest-xdist workers
# (default 1, the most reliable on 2 cores; 3 takes the suite from ~40 to ~14 min: the tests mostly wait on sandboxes, sockets and timers; 1 runs them in this process).
# Every step runs even if an earlier one fails; the exit status is non-zero if any failed. Extra args go to pytest.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
V=.venv/bin
[ -x "$V/python" ] || {
  echo "test.sh: no .venv here; run scripts/setup.sh first" >&2
  exit 1
}
PATHS=(hearth hearth_agent hearth_example tests bench)
WORKERS=${HEARTH_TEST_WORKERS:-1}
XDIST=()
[ "$WORKERS" -gt 1 ] && XDIST=(-n "$WORKERS" --dist loadgroup)
failed=()
run() {
  local name=$1
  shift
  printf '\n== %s\n' "$name"
  "$@" || failed+=("$name")
}

run "ruff check" "$V/ruff" check "${PATHS[@]}"
run "ruff format" "$V/ruff" format --check "${PATHS[@]}"
run "mypy" "$V/mypy"
run "mypy tests" "$V/mypy" --strict --explicit-package-bases tests bench

printf '\n== pytest (SQLite)\n'
"$V/python" -m pytest -q -ra "${XDIST[@]}" "$@"
rc=$?
if [ $rc -eq 5 ]; then
  echo "test.sh: pytest collected no tests; that counts as a failure" >&2
fi
[ $rc -eq 0 ] || failed+=("pytest sqlite (exit $rc)")

# The store's tests again on PostgreSQL 15 (the whole suite with HEARTH_TEST_PG=all): a throwaway cluster (initdb as `postgres` into a temp dir, unix socket in
# that dir + 127.0.0.1 on a random port), each test on a fresh database of its own (tests/conftest.py), then removed.
# An already running server can be used instead: set TEST_DATABASE_URL.
PG_SELECT=(-m store)
[ "${HEARTH_TEST_PG:-store}" = all ] && PG_SELECT=()
printf '\n== pytest (PostgreSQL: %s)\n' "${HEARTH_TEST_PG:-store}"
PG_BIN=/usr/lib/postgresql/15/bin
pg_dir=""
stop_pg() {
  if [ -n "$pg_dir" ]; then
    runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$pg_dir/data" -m immediate -w stop >/dev/null 2>&1
    rm -rf "$pg_dir"
    pg_dir=""
  fi
}
trap stop_pg EXIT
if [ -z "${TEST_DATABASE_URL:-}" ]; then
  if [ "$(id -u)" != 0 ] || [ ! -x "$PG_BIN/initdb" ]; then
    echo "test.sh: PostgreSQL pass needs root and Debian's postgresql (scripts/setup.sh installs it)" >&2
    failed+=("pytest postgresql (no server)")
  else
    pg_dir=$(mktemp -d /tmp/hearth-pg-test.XXXXXX)
    chown postgres "$pg_dir"
    port=$("$V/python" -c 'from hearth.serving.local import free_port; print(free_port())')
    if runuser -u postgres -- "$PG_BIN/initdb" -D "$pg_dir/data" -A trust -U postgres -E UTF8 --no-sync >"$pg_dir/initdb.log" 2>&1 &&
      runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$pg_dir/data" -l "$pg_dir/log" -w -t 30 \
        -o "-p $port -k $pg_dir -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300" start >/dev/null; then
      export TEST_DATABASE_URL="postgresql+psycopg://postgres@127.0.0.1:$port/postgres"
    else
      cat "$pg_dir/initdb.log" "$pg_dir/log" >&2 2>/dev/null
      failed+=("pytest postgresql (cluster did not start)")
    fi
  fi
fi
if [ -n "${TEST_DATABASE_URL:-}" ]; then
  "$V/python" -m pytest -q -ra "${XDIST[@]}" "${PG_SELECT[@]}" "$@"
  rc=$?
  [ $rc -eq 0 ] || failed+=("pytest postgresql (exit $rc)")
fi
stop_pg

echo
if ((${#failed[@]} == 0)); then
  echo "test.sh: all checks passed (ruff check, ruff format, mypy, mypy tests, pytest on SQLite, the store's tests on PostgreSQL)"
  exit 0
fi
IFS=,
echo "test.sh: FAILED: ${failed[*]}" >&2
exit 1
