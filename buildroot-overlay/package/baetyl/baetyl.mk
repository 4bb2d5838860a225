################################################################################
#
# baetyl
#
################################################################################

# The repository this tree lives in (local site method: rsynced, never downloaded).
BAETYL_SITE = $(realpath $(BR2_EXTERNAL_BAETYL_PATH)/..)
BAETYL_SITE_METHOD = local
BAETYL_VERSION = $(shell sed -n 's/^version = "\(.*\)"/\1/p' $(BAETYL_SITE)/Cargo.toml | head -n 1)
BAETYL_LICENSE = Apache-2.0
# The build outputs and work dirs of the repository are not sources (target/ can hold many GB).
BAETYL_OVERRIDE_SRCDIR_RSYNC_EXCLUSIONS = \
	--exclude /target --exclude /.demo --exclude /.venv --exclude /out --exclude /output \
	--exclude /buildroot-overlay
# protoc: containerd-client's build script compiles containerd's API.
BAETYL_DEPENDENCIES = host-protobuf

# Vendor the crates of Cargo.lock the way Buildroot's cargo download post-process does for downloaded packages
# (support/download/cargo-post-process): `cargo vendor --locked VENDOR` and the source replacement in
# .cargo/config.toml, with the crates cached in $(BR_CARGO_HOME) under DL_DIR. A local package is never
# "downloaded", so this runs before configuring (host-rustc is there by then); it needs crates.io the first time.
define BAETYL_VENDOR_CRATES
	mkdir -p $(@D)/.cargo $(BR_CARGO_HOME)
	cd $(@D) && $(TARGET_MAKE_ENV) $(PKG_COMMON_CARGO_ENV) \
		flock $(BR_CARGO_HOME)/.br-lock \
		cargo vendor --locked --manifest-path Cargo.toml VENDOR > .cargo/config.toml
endef
BAETYL_PRE_CONFIGURE_HOOKS += BAETYL_VENDOR_CRATES

# The two static binaries, as image/src/binaries.rs builds them (profile `image`, crt-static, the device build
# without the fleet server and the image builder).
BAETYL_CARGO_ENV = \
	PROTOC=$(HOST_DIR)/bin/protoc \
	RUSTFLAGS="-C target-feature=+crt-static"
BAETYL_BIN_DIR = $(@D)/target/$(RUSTC_TARGET_NAME)/image

define BAETYL_BUILD_CMDS
	cd $(@D) && $(TARGET_MAKE_ENV) $(TARGET_CONFIGURE_OPTS) $(PKG_CARGO_ENV) $(BAETYL_CARGO_ENV) \
		cargo build --offline --locked --profile image --no-default-features \
			-p baetyl --bin baetyl -p baetyl-init --bin baetyl-init
endef

# /bin/baetyl (every service role), /init (PID 1; also kept in the root for reference), the master's conf.yml,
# the data partition's mount point.
define BAETYL_INSTALL_TARGET_CMDS
	$(INSTALL) -D -m 0755 $(BAETYL_BIN_DIR)/baetyl $(TARGET_DIR)/bin/baetyl
	$(INSTALL) -D -m 0755 $(BAETYL_BIN_DIR)/baetyl-init $(TARGET_DIR)/init
	$(INSTALL) -D -m 0644 $(BAETYL_PKGDIR)/conf.yml $(TARGET_DIR)/etc/baetyl/conf.yml
	mkdir -p $(TARGET_DIR)/var/lib/baetyl
endef

# The initramfs's parts in $(BINARIES_DIR)/baetyl-initramfs: init, init.yml and the kernel's list file.
BAETYL_INITRAMFS_DIR = $(BINARIES_DIR)/baetyl-initramfs
BAETYL_INITRAMFS_LIST = $(BAETYL_INITRAMFS_DIR)/initramfs.list
BAETYL_NET_ADDRESS = $(call qstrip,$(BR2_PACKAGE_BAETYL_NET_ADDRESS))
BAETYL_NET_GATEWAY = $(call qstrip,$(BR2_PACKAGE_BAETYL_NET_GATEWAY))
BAETYL_INSTALL_IMAGES = YES
define BAETYL_INSTALL_IMAGES_CMDS
	$(INSTALL) -D -m 0755 $(BAETYL_BIN_DIR)/baetyl-init $(BAETYL_INITRAMFS_DIR)/init
	sed 's|@HOSTNAME@|$(call qstrip,$(BR2_PACKAGE_BAETYL_HOSTNAME))|' $(BAETYL_PKGDIR)/init.yml.in \
		> $(BAETYL_INITRAMFS_DIR)/init.yml
	$(if $(BAETYL_NET_ADDRESS),
		printf 'network:\n  address: %s\n' '$(BAETYL_NET_ADDRESS)' >> $(BAETYL_INITRAMFS_DIR)/init.yml
		$(if $(BAETYL_NET_GATEWAY),
			printf '  gateway: %s\n' '$(BAETYL_NET_GATEWAY)' >> $(BAETYL_INITRAMFS_DIR)/init.yml))
	sed 's|@DIR@|$(BAETYL_INITRAMFS_DIR)|' $(BAETYL_PKGDIR)/initramfs.list.in > $(BAETYL_INITRAMFS_LIST)
endef

# The kernel carries the initramfs (like the UKI of `baetyl image build`, one EFI binary or one Pi kernel file
# boots the whole device): its list file becomes CONFIG_INITRAMFS_SOURCE, so the kernel is configured after
# baetyl is installed. This file is read after linux/linux.mk: the rule below orders the kernel's configure step
# (what LINUX_DEPENDENCIES does for Buildroot's own packages); the dependency is also listed for show-info.
ifeq ($(BR2_LINUX_KERNEL),y)
define BAETYL_LINUX_INITRAMFS
	$(call KCONFIG_ENABLE_OPT,CONFIG_BLK_DEV_INITRD)
	$(call KCONFIG_SET_OPT,CONFIG_INITRAMFS_SOURCE,"$(BAETYL_INITRAMFS_LIST)")
endef
# $(sep): the appended commands are recipe lines of their own.
LINUX_KCONFIG_FIXUP_CMDS += $(sep)$(BAETYL_LINUX_INITRAMFS)
LINUX_DEPENDENCIES += baetyl
$(LINUX_TARGET_CONFIGURE): | baetyl
endif

$(eval $(cargo-package))
