#!/usr/bin/env bash
# Installs what building and testing baetyl needs on a Debian 12 machine, idempotently: apt only runs when a
# package is missing, pip only when the project's virtualenv lacks a module. Run by scripts/run.sh and
# scripts/test.sh.
#   protobuf-compiler   protoc, for the Function gRPC protocol (tonic-prost-build)
#   python3, python3-venv  the Python function runtime (grpcio from PyPI goes into .venv/)
#   e2fsprogs, fdisk    init tests: a real ext4 label and GPT growth checked with sfdisk
#   mosquitto, mosquitto-clients  a real third-party broker and clients as outside peers in tests
#                       (the package's daemon is kept from starting: tests start their own on free ports)
set -euo pipefail
cd "$(dirname "$0")/.."

need_debs=(python3 python3-venv util-linux procps e2fsprogs fdisk protobuf-compiler mosquitto mosquitto-clients)

missing=()
for p in "${need_debs[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ! command -v cargo >/dev/null 2>&1; then
    # No rustup toolchain: Debian's own Rust (rustc-web) builds the workspace too.
    missing+=(rustc-web cargo-web)
fi
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]}" >&2
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO=sudo
    # Keep package scripts from starting daemons (mosquitto's would take port 1883).
    added_policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
        $SUDO chmod +x /usr/sbin/policy-rc.d
        added_policy=1
    fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
    [ -z "$added_policy" ] || $SUDO rm -f /usr/sbin/policy-rc.d
fi

# The Python runtime's interpreter: a project virtualenv with grpcio (PyPI).
if ! .venv/bin/python3 -c 'import grpc' >/dev/null 2>&1; then
    echo "setup: creating .venv with grpcio" >&2
    python3 -m venv .venv
    .venv/bin/pip install -q --disable-pip-version-check 'grpcio>=1.60'
fi
