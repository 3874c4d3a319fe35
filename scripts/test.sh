#!/usr/bin/env bash
# The test command: lint, format check, strict typing, then the whole test suite (root tests included when root).
set -uo pipefail
cd "$(dirname "$0")/.."
V=.venv/bin
status=0
run() { printf '\n== %s\n' "$*"; "$@" || status=1; }

run "$V/ruff" check hearth hearth_agent hearth_example tests bench
run "$V/ruff" format --check hearth hearth_agent hearth_example tests bench
run "$V/mypy"
printf '\n== pytest\n'
"$V/python" -m pytest -q -ra "$@"
rc=$?
if [ $rc -eq 5 ]; then echo "pytest collected no tests: that is a failure" >&2; rc=1; fi
[ $rc -eq 0 ] || status=1
if [ $status -eq 0 ]; then echo "test.sh: all checks passed"; else echo "test.sh: FAILED" >&2; fi
exit $status
