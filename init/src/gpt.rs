//! Growing the last GPT partition to the end of a larger medium (first boot after the image was written to a
//! bigger disk or SD card): move the backup header to the new end, extend the partition entry, fix the CRCs and
//! the protective MBR. Works on a block device or an image file; 512-byte sectors.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};

const SECTOR: u64 = 512;
/// Partitions end on a 1 MiB boundary, as the image builder lays them out.
const ALIGN: u64 = (1 << 20) / SECTOR;

#[derive(Debug, thiserror::Error)]
pub enum GptError {
    #[error("disk I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("no valid GPT header (signature or CRC)")]
    NoGpt,
    #[error("partition {0} is not in the table")]
    NoPartition(u32),
    #[error("partition {0} is not the last one on the disk; not growing it")]
    NotLast(u32),
    #[error("GPT entry table of {0} bytes is unreasonable")]
    BadTable(u64),
}

/// CRC-32 (IEEE 802.3), as GPT uses.
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn le64(b: &[u8], o: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(a)
}
fn le32(b: &[u8], o: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[o..o + 4]);
    u32::from_le_bytes(a)
}
fn put64(b: &mut [u8], o: usize, v: u64) {
    b[o..o + 8].copy_from_slice(&v.to_le_bytes());
}
fn put32(b: &mut [u8], o: usize, v: u32) {
    b[o..o + 4].copy_from_slice(&v.to_le_bytes());
}

fn read_at(f: &mut File, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    f.seek(SeekFrom::Start(offset))?;
    f.read_exact(&mut buf)?;
    Ok(buf)
}

fn write_at(f: &mut File, offset: u64, data: &[u8]) -> std::io::Result<()> {
    f.seek(SeekFrom::Start(offset))?;
    f.write_all(data)
}

/// A partition grown: its first sector and old/new sector counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grown {
    pub start: u64,
    pub old_sectors: u64,
    pub new_sectors: u64,
}

/// Grows partition `partno` (1-based) of the disk in `f` (of `disk_bytes`) to the end of the disk.
/// Ok(None) when the table already spans the disk and the partition cannot grow.
pub fn grow_last_partition(
    f: &mut File,
    disk_bytes: u64,
    partno: u32,
) -> Result<Option<Grown>, GptError> {
    let disk_last = (disk_bytes / SECTOR)
        .checked_sub(1)
        .ok_or(GptError::NoGpt)?;
    let mut hdr = read_at(f, SECTOR, SECTOR as usize)?;
    if &hdr[0..8] != b"EFI PART" {
        return Err(GptError::NoGpt);
    }
    let hsize = le32(&hdr, 12) as usize;
    if !(92..=SECTOR as usize).contains(&hsize) {
        return Err(GptError::NoGpt);
    }
    let mut check = hdr[..hsize].to_vec();
    put32(&mut check, 16, 0);
    if crc32(&check) != le32(&hdr, 16) {
        return Err(GptError::NoGpt);
    }
    let entries_lba = le64(&hdr, 72);
    let count = le32(&hdr, 80);
    let esize = le32(&hdr, 84);
    let table_bytes = u64::from(count) * u64::from(esize);
    if esize < 128 || table_bytes == 0 || table_bytes > 1 << 20 {
        return Err(GptError::BadTable(table_bytes));
    }
    let table_at = entries_lba.checked_mul(SECTOR).ok_or(GptError::NoGpt)?;
    let mut table = read_at(f, table_at, table_bytes as usize)?;
    if partno == 0 || partno > count {
        return Err(GptError::NoPartition(partno));
    }
    let entry = |i: u32| (i as usize) * esize as usize;
    let me = entry(partno - 1);
    if table[me..me + 16].iter().all(|&b| b == 0) {
        return Err(GptError::NoPartition(partno));
    }
    let start = le64(&table, me + 32);
    let old_last = le64(&table, me + 40);
    for i in 0..count {
        let o = entry(i);
        if i != partno - 1
            && table[o..o + 16].iter().any(|&b| b != 0)
            && le64(&table, o + 32) > old_last
        {
            return Err(GptError::NotLast(partno));
        }
    }
    let table_sectors = table_bytes.div_ceil(SECTOR);
    let new_last_usable = disk_last
        .checked_sub(table_sectors + 1)
        .ok_or(GptError::BadTable(table_bytes))?;
    // End on an alignment boundary (the sector before one), within the usable area.
    let new_last = ((new_last_usable + 1) / ALIGN * ALIGN).saturating_sub(1);
    let header_ok = le64(&hdr, 32) == disk_last && le64(&hdr, 48) == new_last_usable;
    if new_last <= old_last {
        if header_ok {
            return Ok(None);
        }
    } else {
        put64(&mut table, me + 40, new_last);
    }
    let final_last = le64(&table, me + 40);
    let table_crc = crc32(&table);

    // Primary header.
    put64(&mut hdr, 32, disk_last);
    put64(&mut hdr, 48, new_last_usable);
    put32(&mut hdr, 88, table_crc);
    put32(&mut hdr, 16, 0);
    let c = crc32(&hdr[..hsize]);
    put32(&mut hdr, 16, c);

    // Backup header and table at the new end.
    let backup_entries = disk_last - table_sectors;
    let mut backup = hdr.clone();
    put64(&mut backup, 24, disk_last);
    put64(&mut backup, 32, 1);
    put64(&mut backup, 72, backup_entries);
    put32(&mut backup, 16, 0);
    let c = crc32(&backup[..hsize]);
    put32(&mut backup, 16, c);

    // Backup first, then primary: a crash in between leaves a valid primary describing the old layout.
    write_at(f, backup_entries * SECTOR, &table)?;
    write_at(f, disk_last * SECTOR, &backup)?;
    write_at(f, table_at, &table)?;
    write_at(f, SECTOR, &hdr)?;
    // Protective MBR: one 0xEE partition covering the disk (capped at 32 bits).
    let mut mbr = read_at(f, 0, SECTOR as usize)?;
    if mbr[510] == 0x55 && mbr[511] == 0xAA && mbr[446 + 4] == 0xEE {
        put32(
            &mut mbr,
            446 + 12,
            u32::try_from(disk_last).unwrap_or(u32::MAX),
        );
        write_at(f, 0, &mbr)?;
    }
    f.sync_all()?;
    Ok(Some(Grown {
        start,
        old_sectors: old_last.saturating_add(1).saturating_sub(start),
        new_sectors: final_last.saturating_add(1).saturating_sub(start),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    fn sfdisk(args: &[&str], input: Option<&str>) -> (bool, String) {
        let mut child = Command::new("sfdisk")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("sfdisk (Debian package fdisk) is needed for this test");
        if let Some(text) = input {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
        }
        drop(child.stdin.take());
        let out = child.wait_with_output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    #[test]
    fn last_partition_grows_to_the_end_of_a_larger_disk_and_sfdisk_agrees() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("disk.img");
        let img_s = img.to_str().unwrap();
        File::create(&img).unwrap().set_len(20 << 20).unwrap();
        let (ok, out) = sfdisk(
            &["-q", img_s],
            Some("label: gpt\nsize=4MiB, name=boot\nname=baetyl-data\n"),
        );
        assert!(ok, "{out}");
        // The image is written to a medium twice its size.
        File::options()
            .write(true)
            .open(&img)
            .unwrap()
            .set_len(40 << 20)
            .unwrap();
        let (ok, out) = sfdisk(&["--verify", img_s], None);
        assert!(
            !ok || out.contains("backup GPT table is not on the end"),
            "{out}"
        );

        let mut f = File::options().read(true).write(true).open(&img).unwrap();
        // Partition 1 is not the last: refused.
        assert!(matches!(
            grow_last_partition(&mut f, 40 << 20, 1),
            Err(GptError::NotLast(1))
        ));
        let grown = grow_last_partition(&mut f, 40 << 20, 2).unwrap().unwrap();
        assert_eq!(grown.start, 10240);
        assert_eq!(grown.old_sectors, 28672);
        // 40 MiB disk: the backup table and header take the end of the last MiB, so the partition ends at 39 MiB.
        assert_eq!(grown.new_sectors, 39 * 2048 - 10240);
        drop(f);

        let (ok, out) = sfdisk(&["--verify", img_s], None);
        assert!(ok && out.contains("No errors detected"), "{out}");
        let (ok, dump) = sfdisk(&["--dump", img_s], None);
        assert!(ok, "{dump}");
        assert!(
            dump.contains(&format!(
                "start=       10240, size=       {}",
                grown.new_sectors
            )),
            "{dump}"
        );
        assert!(dump.contains("name=\"baetyl-data\""), "{dump}");
        assert!(dump.contains("last-lba: 81886"), "{dump}");

        // A second run finds nothing to do.
        let mut f = File::options().read(true).write(true).open(&img).unwrap();
        assert_eq!(grow_last_partition(&mut f, 40 << 20, 2).unwrap(), None);
    }
}
