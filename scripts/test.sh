#!/usr/bin/env bash
# Runs the whole test suite: unit tests and integration tests against the real server binary,
# with the redis crate, raw sockets, valkey-cli and valkey-benchmark as clients.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-valkey.sh
cargo test --release --all-targets --features fault-injection "$@"
