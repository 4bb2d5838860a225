//! The initramfs: a gzip-compressed newc cpio archive written from a list of entries, in order, with fixed
//! owners and times, so the same inputs give the same bytes (no mknod or root needed for /dev/console).

use std::io::Write;

use cpio::newc;
use flate2::{Compression, GzBuilder};

pub enum Kind {
    Dir,
    File(Vec<u8>),
    /// A character device (major, minor).
    Char(u32, u32),
}

pub struct Entry {
    pub path: String,
    pub mode: u32,
    pub kind: Kind,
}

impl Entry {
    pub fn dir(path: &str) -> Self {
        Entry {
            path: path.into(),
            mode: 0o755,
            kind: Kind::Dir,
        }
    }
    pub fn file(path: &str, mode: u32, data: Vec<u8>) -> Self {
        Entry {
            path: path.into(),
            mode,
            kind: Kind::File(data),
        }
    }
}

/// Adds the parent directories an entry needs before it, each once, keeping the given order otherwise.
pub fn with_parents(entries: Vec<Entry>) -> Vec<Entry> {
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    for e in entries {
        let parts: Vec<&str> = e.path.split('/').collect();
        for i in 1..parts.len() {
            let dir = parts[..i].join("/");
            if seen.insert(dir.clone()) {
                out.push(Entry::dir(&dir));
            }
        }
        if matches!(e.kind, Kind::Dir) && !seen.insert(e.path.clone()) {
            continue;
        }
        out.push(e);
    }
    out
}

/// Writes the archive: gzip without a name or time in its header, every entry owned by root with `mtime`.
pub fn write(entries: &[Entry], mtime: u32) -> std::io::Result<Vec<u8>> {
    let gz = GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), Compression::best());
    let mut out = gz;
    for (i, e) in entries.iter().enumerate() {
        let (ty, data, rdev): (u32, &[u8], (u32, u32)) = match &e.kind {
            Kind::Dir => (0o040000, &[], (0, 0)),
            Kind::File(d) => (0o100000, d, (0, 0)),
            Kind::Char(ma, mi) => (0o020000, &[], (*ma, *mi)),
        };
        let size = u32::try_from(data.len()).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{} is over 4 GiB", e.path),
            )
        })?;
        let b = newc::Builder::new(&e.path)
            .ino(i as u32 + 1)
            .mode(ty | e.mode)
            .uid(0)
            .gid(0)
            .nlink(if matches!(e.kind, Kind::Dir) { 2 } else { 1 })
            .mtime(mtime)
            .rdev_major(rdev.0)
            .rdev_minor(rdev.1);
        let mut w = b.write(out, size);
        w.write_all(data)?;
        out = w.finish()?;
    }
    let out = newc::trailer(out)?;
    out.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn archive_round_trips_and_is_reproducible() {
        let entries = with_parents(vec![
            Entry::file("init", 0o755, b"#!init".to_vec()),
            Entry {
                path: "dev/console".into(),
                mode: 0o600,
                kind: Kind::Char(5, 1),
            },
            Entry::file("etc/baetyl/init.yml", 0o644, b"hostname: x\n".to_vec()),
        ]);
        let names: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            names,
            [
                "init",
                "dev",
                "dev/console",
                "etc",
                "etc/baetyl",
                "etc/baetyl/init.yml"
            ]
        );
        let a = write(&entries, 1_700_000_000).unwrap();
        let b = write(&entries, 1_700_000_000).unwrap();
        assert_eq!(a, b, "same inputs, same bytes");

        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(&a[..])
            .read_to_end(&mut raw)
            .unwrap();
        let mut rest = &raw[..];
        let mut seen = Vec::new();
        loop {
            let mut r = newc::Reader::new(rest).unwrap();
            if r.entry().is_trailer() {
                break;
            }
            let e = r.entry();
            let name = e.name().to_string();
            seen.push((
                name.clone(),
                e.mode(),
                e.mtime(),
                e.rdev_major(),
                e.rdev_minor(),
            ));
            let mut body = Vec::new();
            r.read_to_end(&mut body).unwrap();
            if name == "init" {
                assert_eq!(body, b"#!init");
            }
            rest = r.finish().unwrap();
        }
        assert_eq!(seen.len(), 6);
        assert!(seen.contains(&("dev/console".into(), 0o020600, 1_700_000_000, 5, 1)));
        assert!(seen.contains(&("init".into(), 0o100755, 1_700_000_000, 0, 0)));
    }
}
