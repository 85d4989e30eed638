#!/usr/bin/env bash
# The test command: formatting, lints, and every test of the workspace.
# Installs what a fresh machine lacks. Run it from anywhere.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
# Snapshots are checked, never rewritten, by the test command.
export INSTA_UPDATE=no
# Tests make their data directories under TMPDIR. One directory per run,
# under target/, emptied when the next run starts: they no longer pile up in
# /tmp, and a failed test's files stay for a look until then.
export TMPDIR="$PWD/target/test-tmp"
rm -rf "$TMPDIR" 2>/dev/null || true
mkdir -p "$TMPDIR"

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "== installing cargo-nextest"
  cargo install --locked cargo-nextest
fi

./scripts/test-tools.sh
echo "== postgresql"
SAGAFLOW_TEST_POSTGRES="$(./scripts/postgres.sh)"
case "$SAGAFLOW_TEST_POSTGRES" in
  postgres://*) ;;
  *) echo "scripts/postgres.sh printed no URL: $SAGAFLOW_TEST_POSTGRES" >&2; exit 1 ;;
esac
export SAGAFLOW_TEST_POSTGRES

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== tests"
cargo nextest run --workspace --locked --no-fail-fast -E 'not binary(simulation)'

# The example workflows' own tests (workflows/*.test.yaml), on the pure core.
echo "== sagaflow test workflows"
cargo run --quiet --locked -- test workflows

# The deterministic simulation prints how many seeds it ran and what it injected.
echo "== simulation"
cargo nextest run -p sagaflow-engine --test simulation --locked --no-capture
