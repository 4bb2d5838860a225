//! The partitions' filesystems (FAT ESP with systemd-boot and the boot entries, with mtools, ext4 data with `mke2fs -d`, both without mounting) and the
//! GPT disk laid out by genimage from `image/genimage/disk.cfg`: boot (ESP), root-a (the squashfs), root-b
//! (empty, for an OS update to fill), baetyl-data (ext4, grown by init to fill the medium on first boot).
//! Identifiers are fixed per architecture so that a rebuild from the same inputs gives the same bytes.

use std::path::Path;
use std::process::Command;

use crate::error::{ImageError, Result};
use crate::run::Runner;

pub const MIB: u64 = 1 << 20;

/// The disk's and partitions' UUIDs: fixed, different per architecture and partition (`n` 0 the disk, 1-4 the
/// partitions, as `disk.cfg` writes them; 0x10 the data filesystem).
pub fn uuid(arch_tag: u8, n: u8) -> String {
    format!("bae77100-0000-4000-8000-0000000{arch_tag:02x}{n:03x}")
}

pub struct Layout {
    pub boot_mib: u64,
    pub root_mib: u64,
    pub data_mib: u64,
}

/// Size of a partition holding `bytes`: with `headroom` percent spare (for a later, bigger OS), whole MiB,
/// at least `min_mib`.
pub fn size_mib(bytes: u64, headroom: u64, min_mib: u64) -> u64 {
    let need = bytes + bytes * headroom / 100;
    need.div_ceil(MIB).max(min_mib)
}

/// genimage's configuration of the disk, kept as a file in the repository (`image/genimage/disk.cfg`) so that a
/// Buildroot board lays out the same disk; the builder fills its variables through the environment
/// ([`genimage_env`]).
pub const DISK_CONFIG: &str = include_str!("../genimage/disk.cfg");

/// The values of [`DISK_CONFIG`]'s variables for this build (every one is set: none falls back to its default).
pub fn genimage_env(arch_tag: u8, l: &Layout) -> Vec<(&'static str, String)> {
    vec![
        ("BAETYL_ARCH_TAG", format!("{arch_tag:02x}")),
        ("BAETYL_BOOT_MIB", l.boot_mib.to_string()),
        ("BAETYL_ROOT_MIB", l.root_mib.to_string()),
        ("BAETYL_DATA_MIB", l.data_mib.to_string()),
    ]
}

/// systemd-boot's `loader/loader.conf` on the ESP. No `default`: systemd-boot then boots the first entry in its
/// order, which puts entries without tries left (`+0`) last and otherwise sorts UKIs whose os-release has the
/// same ID and no version by file name, newest first (systemd's `config_entry_compare`): the newest generation
/// that still has tries (`baetyl-<generation>-<slot>[+LEFT[-DONE]].efi`, [`baetyl_sdk::os::BootEntry`]). No
/// menu (timeout 0), no editing of the command line, no automatic entries (firmware setup, other loaders), and
/// no random seed file written to the ESP on every boot.
pub const LOADER_CONF: &str = "# baetyl: boot the newest EFI/Linux/baetyl-*.efi that has tries left\n\
timeout 0\neditor no\nauto-entries no\nauto-firmware no\nrandom-seed-mode off\n";

/// A FAT ESP of `mib` MiB with the tree of `dir` (`EFI/BOOT/<name>`, the removable-media path firmware boots:
/// systemd-boot; `loader/`; `EFI/Linux/`, the boot entries). The tree's times are copied (`mcopy -m`), the
/// volume id is fixed (`--invariant`).
pub fn esp(run: &dyn Runner, out: &Path, mib: u64, dir: &Path) -> Result<()> {
    let _ = std::fs::remove_file(out);
    run.output(
        Command::new("mkfs.vfat")
            .args(["-C", "-n", "BAETYL-BOOT", "--invariant"])
            .arg(out)
            .arg((mib * 1024).to_string()),
    )?;
    // The top-level entries in a fixed order (the FAT's directory order is part of its bytes).
    let mut top: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| ImageError::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    top.sort();
    run.output(
        Command::new("mcopy")
            .args(["-s", "-m", "-i"])
            .arg(out)
            .args(&top)
            .arg("::")
            .env("MTOOLS_SKIP_CHECK", "1"),
    )?;
    Ok(())
}

/// An ext4 filesystem labelled `baetyl-data` of `mib` MiB with the contents of `dir`.
pub fn data_ext4(
    run: &dyn Runner,
    out: &Path,
    mib: u64,
    dir: &Path,
    arch_tag: u8,
    epoch: u64,
) -> Result<()> {
    let _ = std::fs::remove_file(out);
    let id = uuid(arch_tag, 0x10);
    run.output(
        Command::new("mke2fs")
            .args(["-q", "-F", "-t", "ext4", "-L", "baetyl-data", "-U", &id])
            .arg("-E")
            .arg(format!("hash_seed={id},root_owner=0:0"))
            .arg("-d")
            .arg(dir)
            .arg(out)
            .arg(format!("{mib}M"))
            .env("E2FSPROGS_FAKE_TIME", epoch.to_string()),
    )?;
    // mke2fs -d copies each file's ctime, which no tool can set on the staged tree: set them here.
    let mut script = format!("sif / ctime @{epoch}\n");
    for (rel, _) in crate::fs::tree(dir)? {
        script += &format!("sif /{} ctime @{epoch}\n", rel.display());
    }
    let cmds = out.with_extension("debugfs");
    std::fs::write(&cmds, script).map_err(|e| ImageError::io(&cmds, e))?;
    run.output(
        Command::new("debugfs")
            .arg("-w")
            .arg("-f")
            .arg(&cmds)
            .arg(out)
            .env("E2FSPROGS_FAKE_TIME", epoch.to_string()),
    )?;
    Ok(())
}

/// Lays out the disk with genimage ([`DISK_CONFIG`] with `env`) from the partition images in `input`; the result
/// is `out/disk.img`.
pub fn genimage(
    run: &dyn Runner,
    env: &[(&str, String)],
    input: &Path,
    out: &Path,
    work: &Path,
) -> Result<()> {
    genimage_config(run, DISK_CONFIG, env, input, out, work)
}

/// Runs genimage on the layout `config` (one of `image/genimage/`'s files) with `env`, partition images from
/// `input`, the result in `out`.
pub fn genimage_config(
    run: &dyn Runner,
    config: &str,
    env: &[(&str, String)],
    input: &Path,
    out: &Path,
    work: &Path,
) -> Result<()> {
    let cfg = work.join("genimage.cfg");
    std::fs::write(&cfg, config).map_err(|e| ImageError::io(&cfg, e))?;
    let root = work.join("genimage-root");
    let tmp = work.join("genimage-tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&root).map_err(|e| ImageError::io(&root, e))?;
    run.output(
        Command::new("genimage")
            .arg("--config")
            .arg(&cfg)
            .arg("--inputpath")
            .arg(input)
            .arg("--outputpath")
            .arg(out)
            .arg("--rootpath")
            .arg(&root)
            .arg("--tmppath")
            .arg(&tmp)
            .envs(env.iter().map(|(k, v)| (k, v))),
    )?;
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_and_ids() {
        assert_eq!(uuid(1, 2), "bae77100-0000-4000-8000-000000001002");
        assert_eq!(uuid(2, 0x10), "bae77100-0000-4000-8000-000000002010");
        assert_eq!(size_mib(10 * MIB, 100, 64), 64);
        assert_eq!(size_mib(40 * MIB + 1, 100, 16), 81);
    }

    /// `${NAME}` and `${NAME:-default}` replaced as genimage (libconfuse) does; the names found, in order.
    fn expand(text: &str, env: &[(&str, String)]) -> (String, Vec<String>) {
        let (mut out, mut names, mut rest) = (String::new(), Vec::new(), text);
        while let Some(at) = rest.find("${") {
            out.push_str(&rest[..at]);
            let end = rest[at..].find('}').expect("unclosed ${") + at;
            let inner = &rest[at + 2..end];
            let (name, default) = inner.split_once(":-").unwrap_or((inner, ""));
            let value = env
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.as_str());
            out.push_str(value.unwrap_or(default));
            names.push(name.to_string());
            rest = &rest[end + 1..];
        }
        out.push_str(rest);
        (out, names)
    }

    #[test]
    fn the_disk_config_file_gets_every_variable_from_the_build() {
        let layout = Layout {
            boot_mib: 49,
            root_mib: 65,
            data_mib: 100,
        };
        let env = genimage_env(2, &layout);
        let (cfg, names) = expand(DISK_CONFIG, &env);
        // Each variable the file uses is set by the build, and each one the build sets is used.
        for n in &names {
            assert!(
                env.iter().any(|(k, _)| k == n),
                "{n} is not set by genimage_env"
            );
        }
        for (k, _) in &env {
            assert!(names.iter().any(|n| n == k), "{k} is not used by disk.cfg");
        }
        // The identifiers are the builder's (uuid), the sizes the layout's, in partition order.
        assert!(
            cfg.contains(&format!("disk-uuid = \"{}\"", uuid(2, 0))),
            "{cfg}"
        );
        let mut at = 0;
        for (n, name, size) in [
            (1, "boot", 49),
            (2, "root-a", 65),
            (3, "root-b", 65),
            (4, "baetyl-data", 100),
        ] {
            let p = cfg[at..]
                .find(&format!("partition {name} {{"))
                .unwrap_or_else(|| panic!("partition {name} missing or out of order in\n{cfg}"))
                + at;
            let end = cfg[p..].find('}').unwrap() + p;
            let part = &cfg[p..end];
            assert!(
                part.contains(&format!("partition-uuid = \"{}\"", uuid(2, n))),
                "{part}"
            );
            assert!(part.contains(&format!("size = \"{size}M\"")), "{part}");
            at = end;
        }
        for want in [
            "partition-table-type = \"gpt\"",
            "align = 1M",
            "image = \"boot.vfat\"",
            "image = \"rootfs.squashfs\"",
            "image = \"data.ext4\"",
        ] {
            assert!(cfg.contains(want), "{want} missing from\n{cfg}");
        }
    }
}
