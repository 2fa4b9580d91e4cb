#!/usr/bin/env bash
# Builds berth (release) and runs `berth serve` on its embedded defaults:
# the Docker API on 127.0.0.1:2375 and the data in /var/lib/berth (as root)
# or ~/.local/share/berth. Extra arguments go to `berth serve`.
source "$(dirname "$0")/lib.sh"
ensure_build_dependencies
ensure_runtime_dependencies
cd "$BERTH_ROOT"
log "building berth (release; the first build compiles RocksDB and takes a while)"
cargo build --release --locked --bin berth
target_dir="${CARGO_TARGET_DIR:-$BERTH_ROOT/target}"
exec "$target_dir/release/berth" serve "$@"
