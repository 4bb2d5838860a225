//! The block map of a sparse image file in bmaptool's format (version 2.0): which blocks hold data, with the
//! SHA-256 of each mapped range and of the map file itself, so that `bmaptool copy --bmap sdcard.img.bmap
//! sdcard.img /dev/sdX` writes only those blocks and checks what it wrote. The data ranges come from the file's
//! own sparse map (`lseek` with `SEEK_DATA`/`SEEK_HOLE`), as `bmaptool create` finds them.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use nix::errno::Errno;
use nix::unistd::{Whence, lseek};
use sha2::{Digest, Sha256};

use crate::error::{ImageError, Result};

/// bmaptool's default block size.
pub const BLOCK: u64 = 4096;

/// The block map of one image file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bmap {
    pub image_size: u64,
    pub block_size: u64,
    /// Mapped block ranges (first, last; inclusive), in order, none adjacent to the next, each with the SHA-256
    /// of its bytes (the last block cut at the end of the image).
    pub ranges: Vec<(u64, u64, String)>,
}

/// The data extents of `f` as (offset, length), from its sparse map.
fn data_extents(f: &File, path: &Path, size: u64) -> Result<Vec<(u64, u64)>> {
    let at = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    let mut out = Vec::new();
    let mut pos = 0u64;
    while pos < size {
        let start = match lseek(f, at(pos), Whence::SeekData) {
            Ok(s) => s as u64,
            // No data after pos.
            Err(Errno::ENXIO) => break,
            Err(e) => return Err(ImageError::io(path, e.into())),
        };
        let end = match lseek(f, at(start), Whence::SeekHole) {
            Ok(e) => e as u64,
            Err(e) => return Err(ImageError::io(path, e.into())),
        };
        out.push((start, end.min(size) - start));
        pos = end;
    }
    Ok(out)
}

/// Block ranges (first, last) covering the extents, merged where they touch.
pub fn block_ranges(extents: &[(u64, u64)], block: u64) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &(off, len) in extents.iter().filter(|(_, l)| *l > 0) {
        let (first, last) = (off / block, (off + len - 1) / block);
        match out.last_mut() {
            Some(prev) if first <= prev.1 + 1 => prev.1 = prev.1.max(last),
            _ => out.push((first, last)),
        }
    }
    out
}

impl Bmap {
    /// The map of the image file at `path`.
    pub fn of_file(path: &Path, block_size: u64) -> Result<Bmap> {
        let mut f = File::open(path).map_err(|e| ImageError::io(path, e))?;
        let image_size = f.metadata().map_err(|e| ImageError::io(path, e))?.len();
        let extents = data_extents(&f, path, image_size)?;
        let mut ranges = Vec::new();
        let mut buf = vec![0u8; 1 << 20];
        for (first, last) in block_ranges(&extents, block_size) {
            let start = first * block_size;
            let end = ((last + 1) * block_size).min(image_size);
            f.seek(SeekFrom::Start(start))
                .map_err(|e| ImageError::io(path, e))?;
            let mut h = Sha256::new();
            let mut left = end - start;
            while left > 0 {
                let n = left.min(buf.len() as u64) as usize;
                f.read_exact(&mut buf[..n])
                    .map_err(|e| ImageError::io(path, e))?;
                h.update(&buf[..n]);
                left -= n as u64;
            }
            ranges.push((first, last, hex(&h.finalize())));
        }
        Ok(Bmap {
            image_size,
            block_size,
            ranges,
        })
    }

    pub fn blocks(&self) -> u64 {
        self.image_size.div_ceil(self.block_size)
    }

    pub fn mapped_blocks(&self) -> u64 {
        self.ranges.iter().map(|(a, b, _)| b - a + 1).sum()
    }

    /// Bytes bmaptool writes (the mapped blocks, the last cut at the end of the image).
    pub fn mapped_bytes(&self) -> u64 {
        (self.mapped_blocks() * self.block_size).min(self.image_size)
    }

    /// The map file: bmaptool's XML, its `BmapFileChecksum` the SHA-256 of the file with that field's value
    /// written as 64 zeros (how bmaptool checks it).
    pub fn xml(&self) -> String {
        const ZEROS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
        let mut s = String::from("<?xml version=\"1.0\" ?>\n");
        s += "<!-- The block map of an image file (bmaptool's format): the blocks that hold data, with the\n\
              \x20    SHA-256 of each range. Written by `baetyl image build`; bmaptool copy takes it with the\n\
              \x20    image (an XML comment may not hold a double hyphen). -->\n";
        s += "<bmap version=\"2.0\">\n";
        s += &format!(
            "    <!-- Image size in bytes: {} -->\n",
            baetyl_sdk::config::human_bytes(self.image_size)
        );
        s += &format!("    <ImageSize> {} </ImageSize>\n\n", self.image_size);
        s += &format!("    <BlockSize> {} </BlockSize>\n\n", self.block_size);
        s += &format!("    <BlocksCount> {} </BlocksCount>\n\n", self.blocks());
        s += &format!(
            "    <!-- Count of mapped blocks: {} or {:.1}% -->\n",
            baetyl_sdk::config::human_bytes(self.mapped_bytes()),
            100.0 * self.mapped_blocks() as f64 / self.blocks().max(1) as f64
        );
        s += &format!(
            "    <MappedBlocksCount> {} </MappedBlocksCount>\n\n",
            self.mapped_blocks()
        );
        s += "    <ChecksumType> sha256 </ChecksumType>\n\n";
        s += &format!("    <BmapFileChecksum> {ZEROS} </BmapFileChecksum>\n\n");
        s += "    <BlockMap>\n";
        for (first, last, sum) in &self.ranges {
            if first == last {
                s += &format!("        <Range chksum=\"{sum}\"> {first} </Range>\n");
            } else {
                s += &format!("        <Range chksum=\"{sum}\"> {first}-{last} </Range>\n");
            }
        }
        s += "    </BlockMap>\n</bmap>\n";
        let sum = hex(&Sha256::digest(s.as_bytes()));
        s.replacen(ZEROS, &sum, 1)
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn ranges_merge_and_round_to_blocks() {
        assert_eq!(
            block_ranges(
                &[(0, 10), (4096, 4096), (3 * 4096 + 1, 1), (20 * 4096, 0)],
                4096
            ),
            [(0, 1), (3, 3)]
        );
        assert_eq!(block_ranges(&[(8191, 2)], 4096), [(1, 2)]);
    }

    #[test]
    fn a_sparse_file_maps_its_data_blocks_only_and_the_map_checks_itself() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("img");
        let mut f = File::create(&img).unwrap();
        f.write_all(b"head").unwrap();
        f.seek(SeekFrom::Start(1 << 20)).unwrap();
        f.write_all(&[7u8; 5000]).unwrap();
        f.set_len((4 << 20) + 100).unwrap();
        drop(f);
        let map = Bmap::of_file(&img, BLOCK).unwrap();
        assert_eq!(map.image_size, (4 << 20) + 100);
        assert_eq!(map.blocks(), 1025);
        // On a filesystem without holes (tmpfs has them) everything would be data; both are valid maps, the
        // sparse one must be exactly the written blocks.
        if map.ranges.len() == 2 {
            assert_eq!((map.ranges[0].0, map.ranges[0].1), (0, 0));
            assert_eq!((map.ranges[1].0, map.ranges[1].1), (256, 257));
            let mut first = vec![0u8; 4096];
            first[..4].copy_from_slice(b"head");
            assert_eq!(map.ranges[0].2, hex(&Sha256::digest(&first)));
        }
        let xml = map.xml();
        let sum = xml
            .split("<BmapFileChecksum> ")
            .nth(1)
            .and_then(|s| s.split(' ').next())
            .unwrap()
            .to_string();
        assert_eq!(sum.len(), 64);
        let zeroed = xml.replacen(&sum, &"0".repeat(64), 1);
        assert_eq!(hex(&Sha256::digest(zeroed.as_bytes())), sum);
        assert!(xml.contains("<ImageSize> 4194404 </ImageSize>"), "{xml}");
        assert!(xml.contains("<BlocksCount> 1025 </BlocksCount>"), "{xml}");
    }
}
