//! The target architectures and what differs between them: Debian's names, the kernel package, the Rust target,
//! the console, the EFI stub and boot file name, the modules init loads, the tag in the image's identifiers.

use crate::elf;
use crate::error::{ImageError, Result};

/// What differs between the architectures.
#[derive(Debug)]
pub struct Arch {
    pub name: &'static str,
    pub debarch: &'static str,
    pub kernel_meta: &'static str,
    pub rust_target: &'static str,
    /// Debian's multiarch triplet: the library directories (`lib/<triplet>`, `usr/lib/<triplet>`).
    pub triplet: &'static str,
    pub elf_machine: u16,
    pub console: &'static str,
    pub stub: &'static str,
    pub efi_name: &'static str,
    /// systemd-boot, from the same package as the stub: the ESP's removable-media boot file.
    pub loader: &'static str,
    pub objcopy: &'static str,
    /// Modules init loads from the initramfs (virtio disk, network and entropy source, the root's squashfs,
    /// ext4 where it is not built in; the ESP's vfat with its code pages and efivarfs, for OS updates and boot
    /// counting); their dependencies are added in order. Without an entropy source the
    /// kernel's random pool may take minutes to initialise under TCG, and every getrandom() blocks until then.
    pub modules: &'static [&'static str],
    pub tag: u8,
}

pub const ARCHES: &[Arch] = &[
    Arch {
        name: "x86_64",
        debarch: "amd64",
        kernel_meta: "linux-image-cloud-amd64",
        rust_target: "x86_64-unknown-linux-gnu",
        triplet: "x86_64-linux-gnu",
        elf_machine: elf::EM_X86_64,
        console: "ttyS0",
        stub: "usr/lib/systemd/boot/efi/linuxx64.efi.stub",
        efi_name: "BOOTX64.EFI",
        loader: "usr/lib/systemd/boot/efi/systemd-bootx64.efi",
        objcopy: "objcopy",
        modules: &[
            "virtio_pci",
            "virtio_blk",
            "virtio_net",
            "virtio_rng",
            "squashfs",
            "vfat",
            "nls_cp437",
            "nls_ascii",
            "efivarfs",
        ],
        tag: 1,
    },
    Arch {
        name: "aarch64",
        debarch: "arm64",
        kernel_meta: "linux-image-arm64",
        rust_target: "aarch64-unknown-linux-gnu",
        triplet: "aarch64-linux-gnu",
        elf_machine: elf::EM_AARCH64,
        console: "ttyAMA0",
        stub: "usr/lib/systemd/boot/efi/linuxaa64.efi.stub",
        efi_name: "BOOTAA64.EFI",
        loader: "usr/lib/systemd/boot/efi/systemd-bootaa64.efi",
        objcopy: "aarch64-linux-gnu-objcopy",
        modules: &[
            "virtio_pci",
            "virtio_blk",
            "virtio_net",
            "virtio_rng",
            "squashfs",
            "ext4",
            "vfat",
            "nls_cp437",
            "nls_ascii",
            "efivarfs",
        ],
        tag: 2,
    },
];

pub fn arch(name: &str) -> Result<&'static Arch> {
    ARCHES
        .iter()
        .find(|a| a.name == name || a.debarch == name)
        .ok_or_else(|| ImageError::Input(format!("--arch {name}: use x86_64 or aarch64")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn architectures_by_rust_or_debian_name() {
        assert_eq!(arch("arm64").unwrap().name, "aarch64");
        assert_eq!(arch("x86_64").unwrap().debarch, "amd64");
        assert!(
            arch("riscv64")
                .unwrap_err()
                .to_string()
                .contains("x86_64 or aarch64")
        );
    }
}
