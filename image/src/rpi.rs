//! The Raspberry Pi 4/5 SD card (`baetyl image build --arch aarch64 --board rpi4|rpi5`): an MBR card laid out by
//! genimage from `image/genimage/rpi.cfg`, written as `sdcard.img` with its block map `sdcard.img.bmap` beside
//! it (bmaptool's format, [`bmap`]).
//!
//! The Pi's boot loader (in its EEPROM) reads `autoboot.txt` from the first FAT partition: `tryboot_a_b=1` with
//! `boot_partition=2` boots slot A, and a reboot with the one-shot `tryboot` flag (`reboot "0 tryboot"`) boots
//! the `[tryboot]` section's `boot_partition=3`, slot B, once; committing an update swaps the two numbers. The
//! firmware boots only from MBR partitions 1-4 (Raspberry Pi documentation, autoboot.txt), so the three FAT
//! partitions are primary and the roots and the data partition are logical ones in the extended partition 4.
//! Each slot's FAT holds the whole boot: `config.txt`, `cmdline.txt` (naming its root by PARTUUID: the disk
//! signature and partition 5 or 6), Debian's arm64 kernel as `vmlinuz` (the aarch64 image's), the initramfs
//! (with the board's SD host, Ethernet and RNG modules added), the board's device trees from the kernel package
//! and, for the Pi 4, the firmware `start4.elf`/`fixup4.dat` from Debian's raspi-firmware (non-free-firmware).
//! The root squashfs and the data partition are the same files as the disk image's.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::apt;
use crate::disk::{self, Layout};
use crate::error::{ImageError, Result};
use crate::fs::{read, touch_tree, write};
use crate::run::Runner;

pub mod bmap;

/// The card's genimage layout, kept as a file in the repository so that a Buildroot Pi board lays out the same
/// card; the builder fills its variables through the environment ([`genimage_env`]).
pub const CARD_CONFIG: &str = include_str!("../genimage/rpi.cfg");

/// The outputs a board build adds, in the order of the manifest.
pub const OUTPUTS: [&str; 2] = ["sdcard.img", "sdcard.img.bmap"];

/// Size of the first FAT partition (autoboot.txt only), as `rpi.cfg` has it.
pub const CONFIG_MIB: u64 = 8;

/// The boards `--board` names.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Board {
    Rpi4,
    Rpi5,
}

/// What differs between the boards.
#[derive(Debug)]
pub struct BoardSpec {
    pub name: &'static str,
    pub title: &'static str,
    /// The last byte of the disk signature (0xbae771TT), so each board's card has its own PARTUUIDs.
    pub tag: u8,
    /// The device trees the firmware picks from (by the board's SoC and model), from the kernel package's
    /// `broadcom/` directory: every file with this prefix.
    pub dtb_prefix: &'static str,
    /// The device tree of the board itself, which the kernel package must have.
    pub dtb: &'static str,
    /// Firmware files from raspi-firmware's `usr/lib/raspi-firmware/` (the Pi 5 runs its firmware from the
    /// EEPROM and reads no start file).
    pub firmware: &'static [&'static str],
    /// The serial console with the upstream device trees Debian's kernel uses.
    pub console: &'static str,
    /// config.txt lines after the common ones.
    pub config: &'static str,
    /// Modules init loads on this board besides the architecture's (their dependencies come with them).
    pub modules: &'static [&'static str],
}

pub const RPI4: BoardSpec = BoardSpec {
    name: "rpi4",
    title: "Raspberry Pi 4",
    tag: 0x03,
    dtb_prefix: "bcm2711-",
    dtb: "bcm2711-rpi-4-b.dtb",
    firmware: &["start4.elf", "fixup4.dat"],
    // The mini UART on GPIO 14/15 (Debian's raspi-firmware hook writes the same for arm64 Pi 3/4).
    console: "ttyS1,115200",
    // The firmware picks bcm2711-rpi-4-b.dtb, -rpi-400.dtb or -rpi-cm4-io.dtb by itself.
    config: "",
    modules: &[
        // The SD card (emmc2, with its I/O voltage regulator), the on-board Ethernet (GENET, its MDIO bus and
        // Broadcom PHY) and the hardware RNG: all modules in Debian's arm64 kernel.
        "sdhci_iproc",
        "gpio_regulator",
        "genet",
        "mdio_bcm_unimac",
        "broadcom",
        "iproc_rng200",
    ],
};

pub const RPI5: BoardSpec = BoardSpec {
    name: "rpi5",
    title: "Raspberry Pi 5",
    tag: 0x05,
    dtb_prefix: "bcm2712-",
    dtb: "bcm2712-rpi-5-b.dtb",
    firmware: &[],
    // The debug UART connector (uart10 in the upstream device tree).
    console: "ttyAMA10,115200",
    // The Pi 5 firmware loads kernel_2712.img (16K pages) unless config.txt names a kernel; Debian's generic
    // arm64 kernel has 4K pages, which the Pi 5 runs as well. Newer (D0) boards would look for
    // bcm2712d0-rpi-5-b.dtb, which upstream Linux does not ship: name the device tree.
    config: "device_tree=bcm2712-rpi-5-b.dtb\n",
    modules: &[],
};

impl Board {
    pub fn spec(self) -> &'static BoardSpec {
        match self {
            Board::Rpi4 => &RPI4,
            Board::Rpi5 => &RPI5,
        }
    }
}

/// The MBR disk signature of a board's card.
pub fn disk_signature(b: &BoardSpec) -> u32 {
    0xbae7_7100 | u32::from(b.tag)
}

/// The PARTUUID of partition `n` of a board's card, as init and the kernel write it.
pub fn partuuid(b: &BoardSpec, n: u8) -> String {
    format!("{:08x}-{n:02x}", disk_signature(b))
}

/// `autoboot.txt` (at most 512 bytes; the firmware reads only `[all]`, `[none]` and `[tryboot]` here): slot A
/// (partition 2) by default, slot B (partition 3) when booted with the `tryboot` flag.
pub fn autoboot_txt() -> String {
    "[all]\ntryboot_a_b=1\nboot_partition=2\n[tryboot]\nboot_partition=3\n".into()
}

/// `config.txt` of a boot slot.
pub fn config_txt(b: &BoardSpec) -> String {
    format!(
        "# baetyl, {title}: one boot slot (autoboot.txt on partition 1 picks slot A or, with `tryboot`, slot B)\n\
         arm_64bit=1\n\
         enable_uart=1\n\
         # Debian's kernel and upstream device trees, not the Raspberry Pi kernel\n\
         upstream_kernel=1\n\
         kernel=vmlinuz\n\
         initramfs initramfs.img followkernel\n\
         {extra}",
        title = b.title,
        extra = b.config
    )
}

/// `cmdline.txt` of a boot slot whose root is partition `root_part` (one line: the firmware passes it to the
/// kernel as it is).
pub fn cmdline_txt(b: &BoardSpec, root_part: u8) -> String {
    format!(
        "console={} baetyl.root.device=PARTUUID={} quiet panic=10\n",
        b.console,
        partuuid(b, root_part)
    )
}

/// The values of [`CARD_CONFIG`]'s variables for this build (boot-a and boot-b are `boot_mib` each, root-a and
/// root-b `root_mib` each).
pub fn genimage_env(b: &BoardSpec, l: &Layout) -> Vec<(&'static str, String)> {
    vec![
        ("BAETYL_BOARD_TAG", format!("{:02x}", b.tag)),
        ("BAETYL_BOOT_MIB", l.boot_mib.to_string()),
        ("BAETYL_ROOT_MIB", l.root_mib.to_string()),
        ("BAETYL_DATA_MIB", l.data_mib.to_string()),
    ]
}

/// What the card is made of: the aarch64 build's outputs and the unpacked kernel package.
pub struct CardInputs<'a> {
    pub board: Board,
    /// The unpacked kernel package (device trees in `usr/lib/linux-image-<kver>/broadcom/`).
    pub kernel_root: &'a Path,
    pub kver: &'a str,
    pub vmlinuz: &'a Path,
    pub initramfs: &'a Path,
    pub squashfs: &'a Path,
    /// The data partition's image (`data.ext4`), as the disk image has it.
    pub data: &'a Path,
    pub data_mib: u64,
    /// The package cache (raspi-firmware is fetched into it).
    pub cache: &'a Path,
    pub epoch: u64,
}

/// The board's device trees in the kernel package, sorted; an error naming what is missing when the board's own
/// is not there.
pub fn device_trees(b: &BoardSpec, kernel_root: &Path, kver: &str) -> Result<Vec<PathBuf>> {
    let dir = kernel_root
        .join("usr/lib")
        .join(format!("linux-image-{kver}"))
        .join("broadcom");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|e| ImageError::io(&dir, e))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(b.dtb_prefix) && n.ends_with(".dtb"))
        })
        .collect();
    found.sort();
    if !found.iter().any(|p| p.file_name() == Some(b.dtb.as_ref())) {
        let detail = if b.name == "rpi5" {
            "; bookworm's kernel predates the Pi 5's upstream device tree (bookworm-backports' 6.12 ships a \
             minimal one), and no Debian arm64 kernel enables the Pi 5's SD host \
             (CONFIG_MMC_SDHCI_BRCMSTB) or its RP1 Ethernet, so the Pi 5 could not read its root from the card \
             with Debian's kernel even then: build --board rpi4, or a kernel of your own with \
             buildroot-overlay/'s baetyl_raspberrypi5_defconfig"
        } else {
            ""
        };
        return Err(ImageError::Input(format!(
            "--board {}: the kernel package linux-image-{kver} has no {} in {}{detail}",
            b.name,
            b.dtb,
            dir.display()
        )));
    }
    Ok(found)
}

/// An empty FAT of `mib` MiB labelled `label` with the files of `dir` (none for an empty slot), fixed volume id
/// and times (`--invariant`, `mcopy -m`) for reproducible bytes.
fn fat(
    run: &dyn Runner,
    out: &Path,
    label: &str,
    volume_id: u32,
    mib: u64,
    dir: &Path,
) -> Result<()> {
    let _ = std::fs::remove_file(out);
    run.output(
        Command::new("mkfs.vfat")
            .args(["-C", "--invariant", "-n", label, "-i"])
            .arg(format!("{volume_id:08x}"))
            .arg(out)
            .arg((mib * 1024).to_string()),
    )?;
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| ImageError::io(dir, e))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .collect();
    if names.is_empty() {
        return Ok(());
    }
    names.sort();
    run.output(
        Command::new("mcopy")
            .args(["-s", "-m", "-i"])
            .arg(out)
            .args(&names)
            .arg("::")
            .env("MTOOLS_SKIP_CHECK", "1"),
    )?;
    Ok(())
}

fn tree_bytes(dir: &Path) -> Result<u64> {
    let mut n = 0;
    for (rel, ty) in crate::fs::tree(dir)? {
        if ty.is_file() {
            let p = dir.join(rel);
            n += std::fs::metadata(&p)
                .map_err(|e| ImageError::io(&p, e))?
                .len();
        }
    }
    Ok(n)
}

/// Builds `out/sdcard.img` and `out/sdcard.img.bmap` from the aarch64 build's outputs, in `work/rpi`.
pub fn card(run: &dyn Runner, i: &CardInputs, work: &Path, out: &Path) -> Result<Layout> {
    let b = i.board.spec();
    let dtbs = device_trees(b, i.kernel_root, i.kver)?;
    let work = work.join("rpi");
    let _ = std::fs::remove_dir_all(&work);
    let (config, slot_a, slot_b, parts) = (
        work.join("config"),
        work.join("boot-a"),
        work.join("boot-b"),
        work.join("parts"),
    );
    for d in [&config, &slot_a, &slot_b, &parts] {
        std::fs::create_dir_all(d).map_err(|e| ImageError::io(d, e))?;
    }

    write(&config.join("autoboot.txt"), autoboot_txt())?;
    write(&slot_a.join("config.txt"), config_txt(b))?;
    write(&slot_a.join("cmdline.txt"), cmdline_txt(b, 5))?;
    write(&slot_a.join("vmlinuz"), read(i.vmlinuz)?)?;
    write(&slot_a.join("initramfs.img"), read(i.initramfs)?)?;
    for d in &dtbs {
        if let Some(name) = d.file_name() {
            write(&slot_a.join(name), read(d)?)?;
        }
    }
    if !b.firmware.is_empty() {
        let fw = apt::fetch(run, i.cache, "raspi-firmware", "all")?;
        println!(
            "    {} {}",
            if fw.cached {
                "cached    "
            } else {
                "downloaded"
            },
            fw.deb.display()
        );
        for f in b.firmware {
            write(
                &slot_a.join(f),
                read(&fw.root.join("usr/lib/raspi-firmware").join(f))?,
            )?;
        }
        // The firmware's licence travels with it.
        write(
            &slot_a.join("LICENCE.raspi-firmware"),
            read(&fw.root.join("usr/share/doc/raspi-firmware/copyright"))?,
        )?;
    }
    for d in [&config, &slot_a, &slot_b] {
        touch_tree(d, i.epoch)?;
    }

    let squash_len = std::fs::metadata(i.squashfs)
        .map_err(|e| ImageError::io(i.squashfs, e))?
        .len();
    let layout = Layout {
        boot_mib: disk::size_mib(tree_bytes(&slot_a)?, 100, 64),
        root_mib: disk::size_mib(squash_len, 100, 64),
        data_mib: i.data_mib,
    };
    let sig = disk_signature(b);
    fat(
        run,
        &parts.join("config.vfat"),
        "BAETYL-CFG",
        sig ^ 0x0100_0001,
        CONFIG_MIB,
        &config,
    )?;
    fat(
        run,
        &parts.join("boot-a.vfat"),
        "BOOT-A",
        sig ^ 0x0100_0002,
        layout.boot_mib,
        &slot_a,
    )?;
    fat(
        run,
        &parts.join("boot-b.vfat"),
        "BOOT-B",
        sig ^ 0x0100_0003,
        layout.boot_mib,
        &slot_b,
    )?;
    for (from, name) in [(i.squashfs, "rootfs.squashfs"), (i.data, "data.ext4")] {
        std::fs::copy(from, parts.join(name)).map_err(|e| ImageError::io(from, e))?;
    }
    let img = out.join(OUTPUTS[0]);
    let _ = std::fs::remove_file(&img);
    disk::genimage_config(
        run,
        CARD_CONFIG,
        &genimage_env(b, &layout),
        &parts,
        out,
        &work,
    )?;
    let map = bmap::Bmap::of_file(&img, bmap::BLOCK)?;
    write(&out.join(OUTPUTS[1]), map.xml())?;
    println!(
        "    {}: config {CONFIG_MIB} MiB, boot-a/boot-b {} MiB each, root-a/root-b {} MiB each, data {} MiB; \
         {} of {} mapped (bmap)",
        b.title,
        layout.boot_mib,
        layout.root_mib,
        layout.data_mib,
        baetyl_sdk::config::human_bytes(map.mapped_bytes()),
        baetyl_sdk::config::human_bytes(map.image_size),
    );
    let _ = std::fs::remove_dir_all(&parts);
    Ok(layout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_files_name_the_slots_root_and_the_boards_needs() {
        assert_eq!(partuuid(&RPI4, 5), "bae77103-05");
        assert_eq!(partuuid(&RPI5, 6), "bae77105-06");
        let auto = autoboot_txt();
        assert!(auto.len() <= 512, "the firmware reads 512 bytes of it");
        assert_eq!(
            auto,
            "[all]\ntryboot_a_b=1\nboot_partition=2\n[tryboot]\nboot_partition=3\n"
        );
        let a = cmdline_txt(&RPI4, 5);
        assert_eq!(a.lines().count(), 1);
        assert!(a.contains("baetyl.root.device=PARTUUID=bae77103-05"), "{a}");
        assert!(a.starts_with("console=ttyS1,115200 "), "{a}");
        assert!(
            cmdline_txt(&RPI5, 6)
                .contains("console=ttyAMA10,115200 baetyl.root.device=PARTUUID=bae77105-06")
        );
        let c4 = config_txt(&RPI4);
        for want in [
            "arm_64bit=1\n",
            "kernel=vmlinuz\n",
            "initramfs initramfs.img followkernel\n",
            "upstream_kernel=1\n",
        ] {
            assert!(c4.contains(want), "{want} missing from\n{c4}");
        }
        assert!(
            !c4.contains("device_tree="),
            "the Pi 4 firmware picks its own: {c4}"
        );
        assert!(config_txt(&RPI5).ends_with("device_tree=bcm2712-rpi-5-b.dtb\n"));
        assert_eq!(RPI4.firmware, ["start4.elf", "fixup4.dat"]);
        assert!(
            RPI5.firmware.is_empty(),
            "the Pi 5 runs its firmware from the EEPROM"
        );
    }

    #[test]
    fn the_card_config_file_gets_every_variable_from_the_build() {
        let l = Layout {
            boot_mib: 70,
            root_mib: 100,
            data_mib: 64,
        };
        let env = genimage_env(&RPI4, &l);
        let used: Vec<&str> = CARD_CONFIG
            .split("${")
            .skip(1)
            .filter_map(|s| s.split([':', '}']).next())
            .collect();
        for n in &used {
            assert!(
                env.iter().any(|(k, _)| k == n),
                "{n} is not set by genimage_env"
            );
        }
        for (k, _) in &env {
            assert!(used.contains(k), "{k} is not used by rpi.cfg");
        }
        for want in [
            "partition-table-type = \"mbr\"",
            "extended-partition = 4",
            "disk-signature = \"0xbae771${BAETYL_BOARD_TAG}\"",
            "image = \"config.vfat\"",
            "image = \"boot-a.vfat\"",
            "image = \"boot-b.vfat\"",
            "image = \"rootfs.squashfs\"",
            "image = \"data.ext4\"",
            &format!("size = {CONFIG_MIB}M"),
        ] {
            assert!(CARD_CONFIG.contains(want), "{want} missing from rpi.cfg");
        }
        // Partition order: the MBR slots 1-3, then the logical 5-7.
        let order: Vec<usize> = [
            "config",
            "boot-a",
            "boot-b",
            "root-a",
            "root-b",
            "baetyl-data",
        ]
        .iter()
        .map(|n| CARD_CONFIG.find(&format!("partition {n} {{")).expect(n))
        .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}");
    }

    #[test]
    fn a_kernel_without_the_boards_device_tree_is_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let bc = dir
            .path()
            .join("usr/lib/linux-image-6.1.0-57-arm64/broadcom");
        std::fs::create_dir_all(&bc).unwrap();
        for f in [
            "bcm2711-rpi-4-b.dtb",
            "bcm2711-rpi-400.dtb",
            "bcm2837-rpi-3-b.dtb",
        ] {
            std::fs::write(bc.join(f), "dtb").unwrap();
        }
        let got = device_trees(&RPI4, dir.path(), "6.1.0-57-arm64").unwrap();
        let names: Vec<_> = got.iter().filter_map(|p| p.file_name()?.to_str()).collect();
        assert_eq!(names, ["bcm2711-rpi-4-b.dtb", "bcm2711-rpi-400.dtb"]);
        let e = device_trees(&RPI5, dir.path(), "6.1.0-57-arm64")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--board rpi5") && e.contains("bcm2712-rpi-5-b.dtb"),
            "{e}"
        );
        assert!(e.contains("CONFIG_MMC_SDHCI_BRCMSTB"), "{e}");
    }
}
