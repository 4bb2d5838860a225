//! What init mounts and where the data partition is.
//!
//! The base mounts come first (in this order, unmounted in reverse at shutdown), then the data partition found
//! by its GPT partition name or ext4 label, then datasets (read-only binds) and volumes (read-write binds).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use nix::mount::MsFlags;

use crate::config::MountConfig;
use crate::sys::MountSpec;

/// The API filesystems every device needs, in mount order.
pub fn base_mounts() -> Vec<MountSpec> {
    let nosuid_nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    let nosuid_nodev_noexec = nosuid_nodev | MsFlags::MS_NOEXEC;
    vec![
        MountSpec::new("proc", "/proc", "proc", nosuid_nodev_noexec, ""),
        MountSpec::new("sysfs", "/sys", "sysfs", nosuid_nodev_noexec, ""),
        MountSpec::new(
            "devtmpfs",
            "/dev",
            "devtmpfs",
            MsFlags::MS_NOSUID,
            "mode=0755",
        ),
        MountSpec::new(
            "devpts",
            "/dev/pts",
            "devpts",
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            "gid=5,mode=620,ptmxmode=666",
        ),
        MountSpec::new("tmpfs", "/run", "tmpfs", nosuid_nodev, "mode=0755"),
        MountSpec::new("tmpfs", "/tmp", "tmpfs", nosuid_nodev, "mode=1777"),
        MountSpec::new(
            "cgroup2",
            "/sys/fs/cgroup",
            "cgroup2",
            nosuid_nodev_noexec,
            "",
        ),
    ]
}

/// Mount points listed in a mountinfo text (field 5, with `\040`-style escapes decoded).
pub fn mount_points(mountinfo: &str) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mountinfo(p)))
        .collect()
}

fn unescape_mountinfo(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && let Some(oct) = s.get(i + 1..i + 4)
            && let Ok(v) = u8::from_str_radix(oct, 8)
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether `/` is an initramfs, which runc cannot pivot_root out of.
pub fn root_is_initramfs() -> bool {
    use nix::sys::statfs::{FsType, TMPFS_MAGIC, statfs};
    // nix names no RAMFS_MAGIC; the initramfs root ("rootfs") is ramfs or tmpfs.
    const RAMFS_MAGIC: FsType = FsType(0x8584_58f6);
    match statfs("/") {
        Ok(st) => st.filesystem_type() == RAMFS_MAGIC || st.filesystem_type() == TMPFS_MAGIC,
        Err(_) => false,
    }
}

/// The entries of `/sys/class/block` (`sys_block`), sorted by name, each with its uevent text.
fn block_devices(sys_block: &Path) -> Option<Vec<(String, String)>> {
    let mut names: Vec<String> = std::fs::read_dir(sys_block)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    Some(
        names
            .into_iter()
            .map(|name| {
                let uevent = std::fs::read_to_string(sys_block.join(&name).join("uevent"))
                    .unwrap_or_default();
                (name, uevent)
            })
            .collect(),
    )
}

/// The block device whose GPT partition name (`PARTNAME` in sysfs) or ext4 label is `label`.
/// `sys_block` is `/sys/class/block`, `dev` is `/dev` (both as seen by this process).
pub fn find_by_label(sys_block: &Path, dev: &Path, label: &str) -> Option<PathBuf> {
    let devices = block_devices(sys_block)?;
    // Partition names first: they are set by the image layout and need no read of the device.
    for (name, uevent) in &devices {
        if uevent_value(uevent, "PARTNAME") == Some(label) {
            let devname = uevent_value(uevent, "DEVNAME").unwrap_or(name);
            return Some(dev.join(devname));
        }
    }
    for (name, uevent) in &devices {
        let devname = uevent_value(uevent, "DEVNAME").unwrap_or(name);
        let path = dev.join(devname);
        if ext4_label(&path).as_deref() == Some(label) {
            return Some(path);
        }
    }
    None
}

/// The partition whose MBR PARTUUID (`SSSSSSSS-PP`: the disk signature at byte 440 of the disk, the partition
/// number, both hex, as the kernel's `root=PARTUUID=` takes it) is `partuuid`. A card with MBR partitions has no
/// partition names; its PARTUUID names the same partition whatever the disk is called (`mmcblk0` on a Pi's SD
/// card, `sda` on USB, `vda` under QEMU). `sys_block` and `dev` as for [`find_by_label`].
pub fn find_by_partuuid(sys_block: &Path, dev: &Path, partuuid: &str) -> Option<PathBuf> {
    let (sig, part) = partuuid.split_once('-')?;
    let sig = u32::from_str_radix(sig, 16).ok()?;
    let part = u32::from_str_radix(part, 16).ok()?;
    for (name, uevent) in block_devices(sys_block)? {
        if uevent_value(&uevent, "PARTN").and_then(|n| n.parse::<u32>().ok()) != Some(part) {
            continue;
        }
        // A partition's sysfs directory sits inside its disk's: /sys/class/block/vda2 -> .../block/vda/vda2.
        let Some(disk) = std::fs::canonicalize(sys_block.join(&name))
            .ok()
            .and_then(|p| Some(p.parent()?.file_name()?.to_string_lossy().into_owned()))
        else {
            continue;
        };
        if mbr_signature(&dev.join(&disk)) == Some(sig) {
            let devname = uevent_value(&uevent, "DEVNAME").unwrap_or(&name);
            return Some(dev.join(devname));
        }
    }
    None
}

/// The disk signature of an MBR (byte 440, little-endian; the boot signature 0x55 0xAA at 510), if `disk` has one.
pub fn mbr_signature(disk: &Path) -> Option<u32> {
    let mut mbr = [0u8; 512];
    File::open(disk).ok()?.read_exact(&mut mbr).ok()?;
    (mbr[510] == 0x55 && mbr[511] == 0xAA)
        .then(|| u32::from_le_bytes([mbr[440], mbr[441], mbr[442], mbr[443]]))
}

fn uevent_value<'a>(uevent: &'a str, key: &str) -> Option<&'a str> {
    uevent
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
}

/// What init needs from an ext2/3/4 superblock (1024 bytes in; magic 0xEF53 at +0x38).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ext4Super {
    pub label: String,
    pub block_size: u64,
    pub blocks: u64,
}

/// Reads the ext2/3/4 superblock of `device` (a block device or an image file).
pub fn ext4_super(device: &Path) -> Option<Ext4Super> {
    let mut f = File::open(device).ok()?;
    let mut sb = [0u8; 0x160];
    f.seek(SeekFrom::Start(1024)).ok()?;
    f.read_exact(&mut sb).ok()?;
    if sb[0x38] != 0x53 || sb[0x39] != 0xEF {
        return None;
    }
    let le32 = |o: usize| u32::from_le_bytes([sb[o], sb[o + 1], sb[o + 2], sb[o + 3]]);
    let raw = &sb[0x78..0x88];
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    let label = String::from_utf8_lossy(&raw[..end]).into_owned();
    let log_block = le32(0x18).min(16);
    // s_blocks_count_hi only counts with the 64bit incompat feature (0x80 in s_feature_incompat at +0x60).
    let hi = if le32(0x60) & 0x80 != 0 {
        u64::from(le32(0x150))
    } else {
        0
    };
    Some(Ext4Super {
        label,
        block_size: 1024u64 << log_block,
        blocks: (hi << 32) | u64::from(le32(0x4)),
    })
}

/// The volume label of an ext2/3/4 filesystem, if it has one.
pub fn ext4_label(device: &Path) -> Option<String> {
    ext4_super(device)
        .map(|s| s.label)
        .filter(|l| !l.is_empty())
}

/// The block count an ext4 filesystem should grow to on a device of `device_bytes`, if it is worth growing
/// (more than 1% or 8 MiB of the device unused).
pub fn grow_target(sb: &Ext4Super, device_bytes: u64) -> Option<u64> {
    let fits = device_bytes / sb.block_size;
    let slack = (fits / 100).max((8 << 20) / sb.block_size);
    (fits > sb.blocks.saturating_add(slack)).then_some(fits)
}

/// Where a dataset or volume comes from: `source` if absolute, else under the data mount point.
pub fn bind_source(data_mountpoint: &Path, kind: &str, m: &MountConfig) -> PathBuf {
    match &m.source {
        Some(s) if s.is_absolute() => s.clone(),
        Some(s) => data_mountpoint.join(s),
        None => data_mountpoint.join(kind).join(&m.name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_points_are_decoded() {
        let text = "22 1 0:21 / /proc rw,nosuid - proc proc rw\n\
                    30 22 0:40 / /mnt/with\\040space rw - tmpfs tmpfs rw\n";
        assert_eq!(
            mount_points(text),
            vec![PathBuf::from("/proc"), PathBuf::from("/mnt/with space")]
        );
    }

    #[test]
    fn partition_found_by_gpt_name_in_sysfs() {
        let dir = tempfile::tempdir().unwrap();
        let block = dir.path().join("class/block");
        for (name, extra) in [
            ("vda", ""),
            ("vda1", "PARTNAME=boot\n"),
            ("vda4", "PARTNAME=baetyl-data\n"),
        ] {
            std::fs::create_dir_all(block.join(name)).unwrap();
            std::fs::write(
                block.join(name).join("uevent"),
                format!("MAJOR=254\nMINOR=0\nDEVNAME={name}\nDEVTYPE=partition\n{extra}"),
            )
            .unwrap();
        }
        let dev = dir.path().join("dev");
        assert_eq!(
            find_by_label(&block, &dev, "baetyl-data"),
            Some(dev.join("vda4"))
        );
        assert_eq!(find_by_label(&block, &dev, "nope"), None);
    }

    #[test]
    fn partition_found_by_mbr_partuuid() {
        let dir = tempfile::tempdir().unwrap();
        // sysfs as the kernel lays it out: class/block/<part> links into the disk's directory.
        let devices = dir.path().join("devices/block");
        let block = dir.path().join("class/block");
        std::fs::create_dir_all(&block).unwrap();
        for (disk, part) in [("vda", 2), ("vdb", 2), ("vdb", 5)] {
            let name = format!("{disk}{part}");
            let d = devices.join(disk).join(&name);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(
                d.join("uevent"),
                format!("DEVNAME={name}\nDEVTYPE=partition\nPARTN={part}\n"),
            )
            .unwrap();
            let _ = std::os::unix::fs::symlink(&d, block.join(&name));
        }
        let dev = dir.path().join("dev");
        std::fs::create_dir_all(&dev).unwrap();
        let mbr = |sig: u32| {
            let mut m = vec![0u8; 512];
            m[440..444].copy_from_slice(&sig.to_le_bytes());
            m[510] = 0x55;
            m[511] = 0xAA;
            m
        };
        std::fs::write(dev.join("vda"), mbr(0x1234_5678)).unwrap();
        std::fs::write(dev.join("vdb"), mbr(0xbae7_7103)).unwrap();
        assert_eq!(mbr_signature(&dev.join("vdb")), Some(0xbae7_7103));
        assert_eq!(
            find_by_partuuid(&block, &dev, "bae77103-05"),
            Some(dev.join("vdb5"))
        );
        assert_eq!(
            find_by_partuuid(&block, &dev, "BAE77103-02"),
            Some(dev.join("vdb2"))
        );
        assert_eq!(
            find_by_partuuid(&block, &dev, "12345678-02"),
            Some(dev.join("vda2"))
        );
        assert_eq!(find_by_partuuid(&block, &dev, "12345678-05"), None);
        assert_eq!(find_by_partuuid(&block, &dev, "not-a-partuuid"), None);
        // No boot signature: no MBR.
        std::fs::write(dev.join("vda"), vec![0u8; 512]).unwrap();
        assert_eq!(find_by_partuuid(&block, &dev, "00000000-02"), None);
    }

    #[test]
    fn ext4_label_read_from_a_real_filesystem() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("fs.img");
        let status = std::process::Command::new("mke2fs")
            .args(["-q", "-F", "-t", "ext4", "-L", "baetyl-data"])
            .arg(&img)
            .arg("4M")
            .stdout(std::process::Stdio::null())
            .status();
        match status {
            Ok(s) if s.success() => {}
            other => panic!("mke2fs (Debian package e2fsprogs) is needed for this test: {other:?}"),
        }
        assert_eq!(ext4_label(&img).as_deref(), Some("baetyl-data"));
        let sb = ext4_super(&img).unwrap();
        assert_eq!(sb.blocks * sb.block_size, 4 << 20, "{sb:?}");
        // The same filesystem on a device twice its size should grow to fill it; on its own size it should not.
        assert_eq!(grow_target(&sb, 64 << 20), Some((64 << 20) / sb.block_size));
        assert_eq!(grow_target(&sb, 4 << 20), None);
        // A file that is not ext4 has no label.
        let other = dir.path().join("zero.img");
        std::fs::write(&other, vec![0u8; 4096]).unwrap();
        assert_eq!(ext4_label(&other), None);

        // And the sysfs scan falls back to the ext4 label when no partition is named.
        let block = dir.path().join("block");
        std::fs::create_dir_all(block.join("fs.img")).unwrap();
        std::fs::write(block.join("fs.img/uevent"), "DEVNAME=fs.img\n").unwrap();
        assert_eq!(find_by_label(&block, dir.path(), "baetyl-data"), Some(img));
    }

    #[test]
    fn bind_sources_default_under_the_data_partition() {
        let m = MountConfig {
            name: "hub".into(),
            source: None,
            target: "/var/lib/hub".into(),
        };
        assert_eq!(
            bind_source(Path::new("/data"), "volumes", &m),
            PathBuf::from("/data/volumes/hub")
        );
        let m2 = MountConfig {
            source: Some("/usr/share/models".into()),
            ..m
        };
        assert_eq!(
            bind_source(Path::new("/data"), "datasets", &m2),
            PathBuf::from("/usr/share/models")
        );
    }
}
