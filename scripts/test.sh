#!/usr/bin/env bash
# Runs berth's whole test suite: installs what the tests need when it is
# missing, builds everything, and runs every test of the workspace.
source "$(dirname "$0")/lib.sh"
ensure_build_dependencies
ensure_test_dependencies
# The NATS relay and follower are tested against real nats-server processes.
ensure_debian_packages nats-server
cd "$BERTH_ROOT"
if cargo fmt --version >/dev/null 2>&1; then
  log "checking the formatting (rustfmt.toml)"
  cargo fmt --all -- --check
fi
log "building the workspace and its tests"
cargo build --locked --workspace --all-targets
log "running the tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --locked --workspace --profile ci "$@"
else
  cargo test --locked --workspace "$@"
fi
