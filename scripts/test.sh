#!/usr/bin/env bash
# Runs the whole test suite: unit, integration and end-to-end tests of every crate.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --workspace --all-targets --locked
cargo test --workspace --locked -- --test-threads=4
