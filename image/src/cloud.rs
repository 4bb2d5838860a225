//! Cloud-managed images. `baetyl image build --cloud URL --provisioning-key FILE` ships, instead of the default
//! application, the agent's bootstrap on the data partition (the agent alone with the cloud's URL, the fleet CA
//! and signing key to pin, and the provisioning key or a device token: `baetyl_agent::bootstrap`), so a freshly
//! flashed device registers itself on first boot and gets its application, with its own secrets, from the
//! cloud. `baetyl image configure IMG --cloud URL --provisioning-key FILE` does the same to an image already
//! built: it finds the `baetyl-data` partition in the GPT, makes a new ext4 filesystem of the same size, label
//! and UUID with the bootstrap tree (`mke2fs -d`, as the build does) and writes it over that partition; nothing
//! else of the image changes.
//!
//! The image's root (conf.yml, from [`crate::configs::master_config`]) gives the service named `agent` the agent
//! role and lets it run as root, so the same root serves both kinds of image.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use baetyl_agent::bootstrap::{FleetFile, write_workdir};

use crate::disk::{self, MIB};
use crate::error::{ImageError, Result};
use crate::fs::touch_tree;
use crate::run::{Runner, System};

/// The cloud options of `image build` and `image configure`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct CloudArgs {
    /// The cloud's URL as the device reaches it (e.g. https://10.0.2.2:9443 from a QEMU guest); default: the
    /// fleet file's `url`.
    #[arg(long, value_name = "URL", requires = "provisioning_key")]
    pub cloud: Option<String>,
    /// A cloud-managed image: the fleet file (`baetyl ctl provisioning-key --fleet-file FILE`, or `baetyl ctl
    /// provision NAME --fleet-file FILE` for one device) whose CA and signing key the device pins and whose
    /// provisioning key (or device token) it registers with. The image then runs the agent alone: no default
    /// application, no hub password.
    #[arg(long, value_name = "FILE")]
    pub provisioning_key: Option<PathBuf>,
}

impl CloudArgs {
    /// The fleet file with `--cloud` applied, checked; None for an image without a cloud.
    pub fn fleet(&self) -> Result<Option<FleetFile>> {
        let Some(path) = &self.provisioning_key else {
            return Ok(None);
        };
        let mut fleet = FleetFile::load(path)
            .map_err(|e| ImageError::Input(format!("--provisioning-key {e}")))?;
        if let Some(url) = &self.cloud {
            fleet.url = url.clone();
            fleet
                .check()
                .map_err(|e| ImageError::Input(format!("--cloud {url}: {e}")))?;
        }
        Ok(Some(fleet))
    }
}

/// The data partition's tree for an image build: the agent's bootstrap when `--provisioning-key` is given,
/// else the application of `--app` or the default one.
pub fn stage_data(dir: &Path, args: &crate::BuildArgs) -> Result<()> {
    match args.cloud.fleet()? {
        Some(fleet) => stage(dir, &fleet, None),
        None => crate::data::stage_data(
            dir,
            args.app.as_deref(),
            args.engine == crate::args::Engine::Containerd,
        ),
    }
}

/// Writes the bootstrap tree of a cloud-managed device into an empty `dir`.
pub fn stage(dir: &Path, fleet: &FleetFile, name: Option<&str>) -> Result<()> {
    let _ = std::fs::remove_dir_all(dir);
    write_workdir(dir, fleet, name).map_err(|e| ImageError::io(dir, e))?;
    println!(
        "    cloud-managed: the agent alone, for {} (no default application, no hub password)",
        fleet.url
    );
    Ok(())
}

#[derive(clap::Args, Debug, Clone)]
pub struct ConfigureArgs {
    /// The disk image to change in place (`disk.img` of `baetyl image build`), before its first boot.
    pub image: PathBuf,
    #[command(flatten)]
    pub cloud: CloudArgs,
    /// The name the device registers with (a fleet key only; default: its serial number, else a name made from
    /// its key). Give it only to an image for one device: a second device with the same name is refused.
    #[arg(long)]
    pub name: Option<String>,
    /// Replace the data partition even if the image has booted already (its state and registration are lost).
    #[arg(long)]
    pub force: bool,
    /// Timestamp of every file written (reproducible outputs).
    #[arg(long, env = "SOURCE_DATE_EPOCH", default_value_t = 1_700_000_000)]
    pub source_date_epoch: u64,
}

pub fn configure(args: &ConfigureArgs) -> Result<()> {
    configure_with(&System, args)
}

/// A GPT partition: byte offset and length in the disk image.
#[derive(Debug, PartialEq)]
pub struct Partition {
    pub offset: u64,
    pub len: u64,
}

const SECTOR: u64 = 512;

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from(le32(b, at)) | (u64::from(le32(b, at + 4)) << 32)
}

fn read_at(f: &mut std::fs::File, path: &Path, offset: u64, len: usize) -> Result<Vec<u8>> {
    let mut buf = vec![0; len];
    f.seek(SeekFrom::Start(offset))
        .and_then(|_| f.read_exact(&mut buf))
        .map_err(|e| ImageError::io(path, e))?;
    Ok(buf)
}

/// Finds the partition named `name` in the GPT of the disk image `path` (512-byte sectors, as genimage writes).
pub fn find_partition(path: &Path, name: &str) -> Result<Partition> {
    let mut f = std::fs::File::open(path).map_err(|e| ImageError::io(path, e))?;
    let size = f.metadata().map_err(|e| ImageError::io(path, e))?.len();
    let not_gpt = |why: &str| {
        ImageError::Input(format!(
            "{}: not a GPT disk image of `baetyl image build` ({why})",
            path.display()
        ))
    };
    if size < 34 * SECTOR {
        return Err(not_gpt("too small"));
    }
    let header = read_at(&mut f, path, SECTOR, SECTOR as usize)?;
    if &header[..8] != b"EFI PART" {
        return Err(not_gpt("no GPT header"));
    }
    let (entries_lba, count, entry_size) =
        (le64(&header, 72), le32(&header, 80), le32(&header, 84));
    if !(128..=1024).contains(&entry_size) || count > 1024 {
        return Err(not_gpt("unusual partition entries"));
    }
    let entries = read_at(
        &mut f,
        path,
        entries_lba.saturating_mul(SECTOR),
        (count * entry_size) as usize,
    )?;
    for e in entries.chunks(entry_size as usize) {
        let units: Vec<u16> = e[56..128]
            .chunks(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|u| *u != 0)
            .collect();
        if String::from_utf16_lossy(&units) != name {
            continue;
        }
        let (first, last) = (le64(e, 32), le64(e, 40));
        let (offset, end) = (
            first.saturating_mul(SECTOR),
            last.saturating_add(1).saturating_mul(SECTOR),
        );
        if first == 0 || end <= offset || end > size {
            return Err(not_gpt(&format!("partition {name} lies outside the file")));
        }
        return Ok(Partition {
            offset,
            len: end - offset,
        });
    }
    Err(not_gpt(&format!("no partition named {name}")))
}

/// What the data partition's ext4 superblock tells: the architecture tag in its UUID (as `disk::uuid` makes
/// it) and whether it was ever mounted.
fn data_filesystem(path: &Path, part: &Partition) -> Result<(u8, bool)> {
    let mut f = std::fs::File::open(path).map_err(|e| ImageError::io(path, e))?;
    let sb = read_at(&mut f, path, part.offset + 1024, 1024)?;
    if u16::from_le_bytes([sb[0x38], sb[0x39]]) != 0xEF53 {
        return Err(ImageError::Input(format!(
            "{}: the baetyl-data partition holds no ext4 filesystem",
            path.display()
        )));
    }
    let uuid: String = sb[0x68..0x78].iter().map(|b| format!("{b:02x}")).collect();
    let tag = crate::ARCHES
        .iter()
        .map(|a| a.tag)
        .find(|t| disk::uuid(*t, 0x10).replace('-', "") == uuid)
        .ok_or_else(|| {
            ImageError::Input(format!(
                "{}: the data filesystem's UUID {uuid} is not one `baetyl image build` makes",
                path.display()
            ))
        })?;
    // s_mtime (last mount) and s_mnt_count: zero until the kernel first mounts it.
    let mounted = le32(&sb, 0x2C) != 0 || u16::from_le_bytes([sb[0x34], sb[0x35]]) != 0;
    Ok((tag, mounted))
}

/// `baetyl image configure`: the disk image's data partition replaced by the bootstrap of a cloud-managed
/// device.
pub fn configure_with(run: &dyn Runner, args: &ConfigureArgs) -> Result<()> {
    let fleet = args.cloud.fleet()?.ok_or_else(|| {
        ImageError::Input(
            "give --provisioning-key FILE (a fleet file: `baetyl ctl provisioning-key --fleet-file FILE`)"
                .into(),
        )
    })?;
    crate::run::require(&[("mke2fs", "e2fsprogs"), ("debugfs", "e2fsprogs")])?;
    let img = &args.image;
    let part = find_partition(img, "baetyl-data")?;
    let (tag, mounted) = data_filesystem(img, &part)?;
    if mounted && !args.force {
        return Err(ImageError::Input(format!(
            "{}: this image has booted (its data partition was mounted and holds the device's state and \
             registration); configure a freshly built image, or give --force to replace its data",
            img.display()
        )));
    }
    if part.len % MIB != 0 {
        return Err(ImageError::Input(format!(
            "{}: the baetyl-data partition is not a whole number of MiB",
            img.display()
        )));
    }
    let work = img.with_extension("configure.d");
    let _ = std::fs::remove_dir_all(&work);
    let result = (|| {
        let tree = work.join("data");
        stage(&tree, &fleet, args.name.as_deref())?;
        touch_tree(&tree, args.source_date_epoch)?;
        let ext4 = work.join("data.ext4");
        disk::data_ext4(
            run,
            &ext4,
            part.len / MIB,
            &tree,
            tag,
            args.source_date_epoch,
        )?;
        let mut from = std::fs::File::open(&ext4).map_err(|e| ImageError::io(&ext4, e))?;
        let len = from.metadata().map_err(|e| ImageError::io(&ext4, e))?.len();
        if len > part.len {
            return Err(ImageError::Input(format!(
                "{}: the new data filesystem ({len} bytes) is larger than the partition",
                ext4.display()
            )));
        }
        let mut to = std::fs::OpenOptions::new()
            .write(true)
            .open(img)
            .map_err(|e| ImageError::io(img, e))?;
        to.seek(SeekFrom::Start(part.offset))
            .and_then(|_| std::io::copy(&mut from, &mut to))
            .and_then(|_| to.sync_all())
            .map_err(|e| ImageError::io(img, e))?;
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&work);
    result?;
    println!(
        "configured {}: data partition ({} MiB) holds the agent for {}",
        img.display(),
        part.len / MIB,
        fleet.url
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A GPT with one partition per (name, first LBA, last LBA), in a sparse file of `sectors` sectors.
    fn gpt(path: &Path, sectors: u64, parts: &[(&str, u64, u64)]) {
        let mut f = std::fs::File::create(path).unwrap();
        f.set_len(sectors * SECTOR).unwrap();
        let mut header = vec![0u8; 512];
        header[..8].copy_from_slice(b"EFI PART");
        header[72..80].copy_from_slice(&2u64.to_le_bytes());
        header[80..84].copy_from_slice(&128u32.to_le_bytes());
        header[84..88].copy_from_slice(&128u32.to_le_bytes());
        f.seek(SeekFrom::Start(SECTOR)).unwrap();
        f.write_all(&header).unwrap();
        let mut entries = vec![0u8; 128 * 128];
        for (i, (name, first, last)) in parts.iter().enumerate() {
            let e = &mut entries[i * 128..(i + 1) * 128];
            e[0] = 1;
            e[32..40].copy_from_slice(&first.to_le_bytes());
            e[40..48].copy_from_slice(&last.to_le_bytes());
            for (j, u) in name.encode_utf16().enumerate() {
                e[56 + 2 * j..58 + 2 * j].copy_from_slice(&u.to_le_bytes());
            }
        }
        f.write_all(&entries).unwrap();
    }

    #[test]
    fn partitions_are_found_by_name_and_bounds_checked() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("disk.img");
        gpt(
            &p,
            8192,
            &[("boot", 2048, 4095), ("baetyl-data", 4096, 8191)],
        );
        assert_eq!(
            find_partition(&p, "baetyl-data").unwrap(),
            Partition {
                offset: 4096 * 512,
                len: 4096 * 512
            }
        );
        let e = find_partition(&p, "root-a").unwrap_err().to_string();
        assert!(e.contains("no partition named root-a"), "{e}");
        gpt(&p, 8192, &[("baetyl-data", 4096, 9000)]);
        let e = find_partition(&p, "baetyl-data").unwrap_err().to_string();
        assert!(e.contains("outside the file"), "{e}");
        std::fs::write(&p, vec![0u8; 64 * 1024]).unwrap();
        let e = find_partition(&p, "baetyl-data").unwrap_err().to_string();
        assert!(e.contains("no GPT header"), "{e}");
    }

    #[test]
    fn configure_needs_a_fleet_file_and_a_baetyl_data_filesystem() {
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("disk.img");
        gpt(&img, 8192, &[("baetyl-data", 4096, 8191)]);
        let mut args = ConfigureArgs {
            image: img.clone(),
            cloud: CloudArgs::default(),
            name: None,
            force: false,
            source_date_epoch: 1,
        };
        let e = configure(&args).unwrap_err().to_string();
        assert!(e.contains("--provisioning-key"), "{e}");
        let fleet = d.path().join("fleet.yml");
        std::fs::write(&fleet, "url: https://x:1\n").unwrap();
        args.cloud.provisioning_key = Some(fleet);
        let e = configure(&args).unwrap_err().to_string();
        assert!(e.contains("not a fleet file"), "{e}");
    }
}
