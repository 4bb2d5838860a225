//! `baetyl image build`: the OS image, from Debian's packages for the target architecture and our static
//! binaries.
//!
//! Outputs (in `--out`, default `out/<arch>`):
//! - `vmlinuz` + `initramfs.img`: the kernel and an initramfs holding only the static `baetyl-init` as `/init`,
//!   the kernel modules it loads (in dependency order) and `/etc/baetyl/init.yml`;
//! - `rootfs.squashfs`: the read-only root: `/bin/baetyl`, `/etc/baetyl/conf.yml` (the master's), Debian's
//!   `/sbin/e2fsck` with its libraries and loader (init checks the data partition with it), mount points; with
//!   `--engine containerd` (the default) also Debian's containerd, its runc shim and runc, and the services'
//!   OCI image layout in `/usr/share/baetyl/oci`; no shell, no getty, no sshd, no package manager;
//! - `boot.efi`: a unified kernel image (systemd's EFI stub + kernel + initramfs + command line naming root-a);
//! - `disk.img`: a raw GPT disk (boot ESP, root-a, root-b, baetyl-data) that UEFI firmware boots: systemd-boot
//!   at the removable-media path boots `EFI/Linux/baetyl-000001-a.efi` (A/B slots with boot counting);
//! - `os-update.bundle`: the signed OS update ([`bundle`]): each slot's UKI and the root squashfs;
//! - with `--board rpi4|rpi5` (aarch64): `sdcard.img`, the Raspberry Pi SD card (MBR: autoboot.txt, boot slots A
//!   and B for the firmware's `tryboot`, root-a, root-b, baetyl-data; [`rpi`]) and `sdcard.img.bmap`;
//! - `manifest.txt`: size and SHA-256 of each output.
//!
//! Init switches from the initramfs to root-a (found by GPT partition name), mounts baetyl-data on
//! /var/lib/baetyl and starts `/bin/baetyl master` there (containerd first, for a containerd image); the data
//! partition ships with the example application (a containerd image: `examples/default`, hub, timer, SQL and
//! Python functions; a native one: `examples/image`, without Python; or the tree given with `--app`), whose hub keeps its
//! sessions and retained messages on a volume. A cloud-managed image (`--cloud URL --provisioning-key FILE`,
//! or `baetyl image configure` on a built one: [`cloud`]) ships the cloud agent alone instead.
//!
//! Layout: [`builder`] (the [`Build`] and its steps, in order), [`args`] (the command line), [`arch`] (what
//! differs between the architectures), [`binaries`] (the static binaries, with cargo), [`apt`] (Debian's
//! packages and their cache), [`modules`] (load order), [`initramfs`] (the cpio writer), [`configs`] (init's
//! and the master's config files), [`rootfs`] and [`data`] (the root's and the data partition's trees),
//! [`uki`] (the unified kernel image), [`disk`] (the ESP and data filesystems, the genimage layout in
//! `image/genimage/disk.cfg`), [`debbins`] (Debian executables with exactly the libraries they need: e2fsck,
//! containerd, runc), [`elf`] (ELF headers: static check, interpreter, needed libraries), [`fs`] (file
//! helpers), [`rpi`] (the Raspberry Pi card and its block map, the layout in `image/genimage/rpi.cfg`), [`run`]
//! (the external tools behind a trait), [`error`].

pub mod apt;
pub mod arch;
pub mod args;
pub mod binaries;
pub mod builder;
pub mod bundle;
pub mod cloud;
pub mod configs;
pub mod data;
pub mod debbins;
pub mod disk;
pub mod elf;
pub mod error;
pub mod fs;
pub mod initramfs;
pub mod modules;
pub mod oci;
pub mod rootfs;
pub mod rpi;
pub mod run;
pub mod uki;

pub use arch::{ARCHES, Arch, arch};
pub use args::{BuildArgs, ImageArgs, ImageCommand};
pub use builder::{Build, Outputs, build, build_with};
pub use configs::DATA_MOUNT;
