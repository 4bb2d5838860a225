#!/usr/bin/env bash
# Installs what building and testing baetyl needs on a Debian 12 machine, idempotently: apt only runs when a
# package is missing, pip only when the project's virtualenv lacks a module. Run by scripts/run.sh and
# scripts/test.sh.
#   protobuf-compiler   protoc, for the Function gRPC protocol (tonic-prost-build)
#   nodejs, npm         the Node.js function runtime (`baetyl runtime-node`): its gRPC modules from npm, pinned
#                       by services/function/runtimes/node/package-lock.json, go into that directory's
#                       node_modules/ (npm only when no npm is there: NodeSource's nodejs ships its own)
#   python3, python3-venv  the Python function runtime (grpcio from PyPI goes into .venv/) and the hub's
#                       paho-mqtt tests (paho-mqtt from PyPI, pinned, into .venv/ too)
#   e2fsprogs, fdisk    init tests: a real ext4 label and GPT growth checked with sfdisk
#   mosquitto, mosquitto-clients  a real third-party broker and clients as outside peers in tests
#                       (the package's daemon is kept from starting: tests start their own on free ports)
#   postgresql          the cloud's tests run `baetyl cloud` on PostgreSQL too: each starts a temporary cluster
#                       of its own (initdb, as the unprivileged postgres user, on a free port); the package's
#                       own cluster is kept from starting
#   chromium chromium-driver  the dashboard's test drives Debian's headless Chromium through chromedriver
# The OS image (`baetyl image build`) and its boot tests:
#   genimage squashfs-tools mtools dosfstools kmod binutils   disk layout, read-only root, ESP, module order,
#                       the unified kernel image (objcopy)
#   ovmf qemu-efi-aarch64   UEFI firmware for QEMU; qemu-system-x86 qemu-system-arm from bookworm-backports
#                       (bookworm's 7.2 conflicts with the machine's qemu-utils 10), added in a sources file of
#                       our own
#   arm64 architecture, rustc-web cargo-web libstd-rust-web-dev:arm64 gcc-aarch64-linux-gnu
#   libc6-dev-arm64-cross binutils-aarch64-linux-gnu   Debian's Rust cross toolchain for the aarch64 image
#   bmap-tools          the Raspberry Pi card's test flashes the card through its .bmap with bmaptool
#   non-free-firmware (a sources file of our own)   raspi-firmware for the Raspberry Pi card, downloaded by
#                       the image build into its package cache (not installed)
# buildroot-overlay/'s check (tests/buildroot.rs) against Buildroot's release tarball:
#   make gcc xz-utils   unpack it and build and run Buildroot's kconfig (defconfig, savedefconfig, show-info)
# Containers (`baetyl image oci`, the containerd engine and its tests):
#   containerd runc     the engine's tests start a containerd of their own (temporary root, state and socket)
#   qemu-user-static    (bookworm-backports) runs the aarch64 Python image's interpreter in the OCI tests
set -euo pipefail
cd "$(dirname "$0")/.."

need_debs=(python3 python3-venv util-linux procps e2fsprogs fdisk protobuf-compiler mosquitto mosquitto-clients
    postgresql chromium chromium-driver
    genimage squashfs-tools mtools dosfstools kmod binutils ovmf qemu-efi-aarch64
    rustc-web cargo-web libstd-rust-web-dev:arm64 gcc-aarch64-linux-gnu libc6-dev-arm64-cross
    binutils-aarch64-linux-gnu containerd runc make gcc xz-utils nodejs bmap-tools)
backports_debs=(qemu-system-x86 qemu-system-arm qemu-user-static)

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
update=""
backports=/etc/apt/sources.list.d/baetyl-backports.sources
if [ ! -e "$backports" ]; then
    echo "setup: adding bookworm-backports ($backports)" >&2
    printf '%s\n' "# baetyl project: QEMU 10 comes from bookworm-backports (bookworm's qemu-system 7.2 conflicts with qemu-utils 10)" \
        "Types: deb" "URIs: http://deb.debian.org/debian" "Suites: bookworm-backports" "Components: main" \
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg" | $SUDO tee "$backports" >/dev/null
    update=1
fi
# The Raspberry Pi card (`baetyl image build --board rpi4|rpi5`) takes the Pi's boot firmware from Debian's
# raspi-firmware, which is in bookworm's non-free-firmware component (the machine's sources name main only).
firmware=/etc/apt/sources.list.d/baetyl-non-free-firmware.sources
if [ ! -e "$firmware" ]; then
    echo "setup: adding bookworm's non-free-firmware component ($firmware)" >&2
    printf '%s\n' "# baetyl project: raspi-firmware (the Raspberry Pi card's boot firmware) is in non-free-firmware" \
        "Types: deb" "URIs: http://deb.debian.org/debian" "Suites: bookworm bookworm-updates" \
        "Components: non-free-firmware" "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg" \
        | $SUDO tee "$firmware" >/dev/null
    update=1
fi
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    echo "setup: adding the arm64 architecture (cross toolchain for the aarch64 image)" >&2
    $SUDO dpkg --add-architecture arm64
    update=1
fi

missing=()
for p in "${need_debs[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
command -v npm >/dev/null 2>&1 || missing+=(npm)
missing_bp=()
for p in "${backports_debs[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing_bp+=("$p")
done
if [ ${#missing[@]} -gt 0 ] || [ ${#missing_bp[@]} -gt 0 ] || [ -n "$update" ]; then
    echo "setup: installing ${missing[*]} ${missing_bp[*]}" >&2
    # Keep package scripts from starting daemons (mosquitto's would take port 1883).
    added_policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
        $SUDO chmod +x /usr/sbin/policy-rc.d
        added_policy=1
    fi
    $SUDO apt-get update -qq
    if [ ${#missing[@]} -gt 0 ]; then
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    if [ ${#missing_bp[@]} -gt 0 ]; then
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq -t bookworm-backports "${missing_bp[@]}" >/dev/null
    fi
    [ -z "$added_policy" ] || $SUDO rm -f /usr/sbin/policy-rc.d
fi

# A project virtualenv (PyPI): grpcio for the Python runtime, paho-mqtt (pinned) for the hub's tests with a
# second MQTT client library (services/hub/tests/paho.rs).
if ! .venv/bin/python3 -c 'import grpc, paho.mqtt' >/dev/null 2>&1; then
    echo "setup: creating .venv with grpcio and paho-mqtt" >&2
    python3 -m venv .venv
    .venv/bin/pip install -q --disable-pip-version-check 'grpcio>=1.60' 'paho-mqtt==2.1.0'
fi

# The Node.js runtime's modules (@grpc/grpc-js, @grpc/proto-loader, protobufjs), exactly as the lock file pins
# them (`npm ci` checks every package's integrity hash; no install scripts run). Reinstalled when the lock
# file changes; `baetyl runtime-node` finds them through BAETYL_NODE_MODULES.
node_dir=services/function/runtimes/node
if ! cmp -s "$node_dir/package-lock.json" "$node_dir/node_modules/.baetyl-installed-lock"; then
    echo "setup: installing the Node.js runtime's modules into $node_dir/node_modules (npm ci)" >&2
    (cd "$node_dir" && npm ci --ignore-scripts --omit=dev --no-audit --no-fund --loglevel=error)
    cp "$node_dir/package-lock.json" "$node_dir/node_modules/.baetyl-installed-lock"
fi
