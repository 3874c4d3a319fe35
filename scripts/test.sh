#!/usr/bin/env bash
# The test command: lint, format check, strict typing, then the whole test suite (the root/netns tests too when root).
# Every step runs even if an earlier one fails; the exit status is non-zero if any failed. Extra args go to pytest.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
V=.venv/bin
[ -x "$V/python" ] || {
  echo "test.sh: no .venv here; run scripts/setup.sh first" >&2
  exit 1
}
PATHS=(hearth hearth_agent hearth_example tests bench)
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

printf '\n== pytest\n'
"$V/python" -m pytest -q -ra "$@"
rc=$?
if [ $rc -eq 5 ]; then
  echo "test.sh: pytest collected no tests; that counts as a failure" >&2
fi
[ $rc -eq 0 ] || failed+=("pytest (exit $rc)")

echo
if ((${#failed[@]} == 0)); then
  echo "test.sh: all checks passed (ruff check, ruff format, mypy, mypy tests, pytest)"
  exit 0
fi
IFS=,
echo "test.sh: FAILED: ${failed[*]}" >&2
exit 1
