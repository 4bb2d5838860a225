#!/usr/bin/env bash
# Buildroot's post-build script of every baetyl board ($1: the target directory). The root becomes a read-only
# squashfs: this checks that it holds what init and the master need and nothing a device must not have (no
# shell, no getty, no other init: a device is managed from the cloud only).
set -euo pipefail
target=$1

fail() { echo "post-build: $*" >&2; exit 1; }

for f in init bin/baetyl etc/baetyl/conf.yml; do
    [ -e "$target/$f" ] || fail "/$f is missing: enable BR2_PACKAGE_BAETYL"
done
[ -x "$target/sbin/e2fsck" ] || fail "/sbin/e2fsck is missing: init checks the data partition with it (BR2_PACKAGE_E2FSPROGS)"
for f in containerd containerd-shim-runc-v2 runc; do
    [ -x "$target/usr/bin/$f" ] || [ -x "$target/usr/sbin/$f" ] || fail "$f is missing (BR2_PACKAGE_CONTAINERD, BR2_PACKAGE_RUNC)"
done
for f in bin/sh bin/bash bin/ash bin/dash bin/busybox sbin/getty sbin/agetty sbin/init usr/sbin/sshd usr/sbin/dropbear; do
    [ ! -e "$target/$f" ] && [ ! -L "$target/$f" ] || fail "/$f is in the root: a baetyl image has no shell, getty, sshd or other init (BR2_SYSTEM_BIN_SH_NONE, BR2_INIT_NONE, no busybox)"
done

# The master's work dir is the data partition's mount point; containerd's state lives under it.
mkdir -p "$target/var/lib/baetyl"
# The root is read-only: /tmp and /run are tmpfs mounted by init.
rm -rf "${target:?}/tmp" "${target:?}/run"
mkdir -p "$target/tmp" "$target/run"
