#!/usr/bin/env bash
# The test command: formatting, lints, and every test of the workspace.
# Installs what a fresh machine lacks. Run it from anywhere.
set -euo pipefail
cd "$(dirname "$0")/.."

# Each part says when it starts, in seconds since the command did.
phase() { echo "== $1 (${SECONDS} s)"; }

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
  phase "installing cargo-nextest"
  # A debug build: half the time of a release one (3.4 against 7.2 minutes
  # here), for a runner that only starts the tests and reads their output.
  cargo install --locked --debug cargo-nextest
fi

phase "test tools"
./scripts/test-tools.sh
phase "postgresql"
SAGAFLOW_TEST_POSTGRES="$(./scripts/postgres.sh)"
case "$SAGAFLOW_TEST_POSTGRES" in
  postgres://*) ;;
  *) echo "scripts/postgres.sh printed no URL: $SAGAFLOW_TEST_POSTGRES" >&2; exit 1 ;;
esac
export SAGAFLOW_TEST_POSTGRES

phase "cargo fmt --check"
cargo fmt --all -- --check

phase "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

phase "tests"
# Twice as many tests at a time as there are cores: many of them wait on
# timers, servers and child processes for most of their run (on 2 cores,
# 276 s instead of 410 for the same tests).
cargo nextest run --workspace --locked --no-fail-fast -E 'not binary(simulation)' \
  --test-threads "$(( $(nproc) * 2 ))"

# The example workflows' own tests (workflows/*.test.yaml), on the pure core,
# by the binary the tests were built with: `cargo run` selects one package
# and so other features of the shared dependencies, and would build them again.
phase "sagaflow test workflows"
target_dir="$(cargo metadata --format-version 1 --no-deps --locked | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
"$target_dir/debug/sagaflow" test workflows

# The deterministic simulation prints how many seeds it ran and what it injected.
phase "simulation"
# (selected from the whole workspace, as above, so nothing is built again)
cargo nextest run --workspace --locked --no-capture -E 'binary(simulation)'
phase "done"
