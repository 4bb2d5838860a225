#!/usr/bin/env bash
# Installs what building and testing baetyl needs on a Debian 12 machine, idempotently: it only calls apt
# when a package is missing. Sourced by scripts/run.sh and scripts/test.sh.
set -euo pipefail

need_debs=(python3 util-linux procps)

missing=()
for p in "${need_debs[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ! command -v cargo >/dev/null 2>&1; then
    # No rustup toolchain: Debian's own Rust (1.78+ as rustc-web) builds the workspace too.
    missing+=(rustc-web cargo-web)
fi
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]}" >&2
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
