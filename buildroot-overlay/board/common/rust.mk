# Included by Buildroot before its packages (the defconfigs name this file as BR2_PACKAGE_OVERRIDE_FILE).
#
# baetyl's workspace needs Rust 1.95 (rust-version in ../../../Cargo.toml); Buildroot 2026.02.3 ships 1.88.0.
# `override` keeps package/rust-bin/rust-bin.mk's later assignment from taking effect; the hashes of the 1.95.0
# tarballs are in ../../patches/rust-bin/1.95.0/rust-bin.hash (found through BR2_GLOBAL_PATCH_DIR).
# Put your own <pkg>_OVERRIDE_SRCDIR lines (Buildroot's local.mk) below if you need them.
override RUST_BIN_VERSION = 1.95.0
