//! One image layer: a tar archive written deterministically (entries sorted by path, parents first, owner
//! root, every time stamp the build's SOURCE_DATE_EPOCH), gzip-compressed. Its `diff_id` is the SHA-256 of the
//! tar, its digest the SHA-256 of the compressed blob: same inputs, same digests.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use flate2::Compression;
use flate2::write::GzEncoder;
use sha2::{Digest, Sha256};

use crate::error::{ImageError, Result};
use crate::fs::tree;

/// What a path of the layer holds.
#[derive(Debug, Clone)]
enum Node {
    Dir { mode: u32 },
    File { mode: u32, from: Source },
    Symlink { target: PathBuf },
}

#[derive(Debug, Clone)]
enum Source {
    Path(PathBuf),
    Bytes(Vec<u8>),
}

/// A finished layer.
#[derive(Debug, Clone)]
pub struct Layer {
    /// The gzip-compressed tar.
    pub blob: Vec<u8>,
    /// `sha256:<hex>` of the uncompressed tar.
    pub diff_id: String,
    /// Size of the uncompressed tar.
    pub tar_size: u64,
}

pub fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The paths of a layer, added in any order and written sorted.
#[derive(Debug, Default)]
pub struct LayerBuilder {
    nodes: BTreeMap<PathBuf, Node>,
}

/// `path` relative to the layer's root, without `.` or `..` (a layer must not write outside it).
fn clean(path: &Path) -> Result<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            std::path::Component::Normal(p) => out.push(p),
            std::path::Component::RootDir | std::path::Component::CurDir => {}
            _ => {
                return Err(ImageError::Input(format!(
                    "{}: a layer path may not climb out of the root",
                    path.display()
                )));
            }
        }
    }
    if out.as_os_str().is_empty() {
        return Err(ImageError::Input("an empty layer path".into()));
    }
    Ok(out)
}

impl LayerBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the parent directories of `path` that are not there yet (mode 0755).
    fn parents(&mut self, path: &Path) {
        let mut p = path.parent();
        while let Some(dir) = p.filter(|d| !d.as_os_str().is_empty()) {
            self.nodes
                .entry(dir.to_path_buf())
                .or_insert(Node::Dir { mode: 0o755 });
            p = dir.parent();
        }
    }

    fn put(&mut self, path: &Path, node: Node) -> Result<()> {
        let path = clean(path)?;
        self.parents(&path);
        self.nodes.insert(path, node);
        Ok(())
    }

    pub fn dir(&mut self, path: &str, mode: u32) -> Result<()> {
        self.put(Path::new(path), Node::Dir { mode })
    }

    pub fn bytes(&mut self, path: &str, mode: u32, data: Vec<u8>) -> Result<()> {
        self.put(
            Path::new(path),
            Node::File {
                mode,
                from: Source::Bytes(data),
            },
        )
    }

    /// A file copied from `from` when the layer is written.
    pub fn file(&mut self, path: &str, mode: u32, from: &Path) -> Result<()> {
        self.put(
            Path::new(path),
            Node::File {
                mode,
                from: Source::Path(from.to_path_buf()),
            },
        )
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> Result<()> {
        self.put(
            Path::new(path),
            Node::Symlink {
                target: PathBuf::from(target),
            },
        )
    }

    /// Everything under `root` (symlinks as links, modes kept) at `prefix` in the layer, except the paths
    /// (relative to `root`) for which `skip` is true and what is under them. A later tree overrides a file of
    /// an earlier one at the same path.
    pub fn tree(&mut self, root: &Path, prefix: &str, skip: impl Fn(&Path) -> bool) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let mut skipped: Vec<PathBuf> = Vec::new();
        for (rel, ty) in tree(root)? {
            if skipped.iter().any(|s| rel.starts_with(s)) {
                continue;
            }
            if skip(&rel) {
                skipped.push(rel);
                continue;
            }
            let src = root.join(&rel);
            let dest = Path::new(prefix).join(&rel);
            let node = if ty.is_symlink() {
                let target = std::fs::read_link(&src).map_err(|e| ImageError::io(&src, e))?;
                Node::Symlink { target }
            } else {
                let meta = std::fs::metadata(&src).map_err(|e| ImageError::io(&src, e))?;
                let mode = meta.permissions().mode() & 0o7777;
                if ty.is_dir() {
                    Node::Dir { mode }
                } else if ty.is_file() {
                    Node::File {
                        mode,
                        from: Source::Path(src),
                    }
                } else {
                    return Err(ImageError::Input(format!(
                        "{}: only files, directories and symlinks can go into a layer",
                        src.display()
                    )));
                }
            };
            self.put(&dest, node)?;
        }
        Ok(())
    }

    /// The layer's paths, sorted (for tests and listings).
    pub fn paths(&self) -> Vec<String> {
        self.nodes.keys().map(|p| p.display().to_string()).collect()
    }

    /// Writes the tar (every entry owned by root, time stamp `epoch`) and compresses it.
    pub fn finish(&self, epoch: u64) -> Result<Layer> {
        let mut tar = tar::Builder::new(Vec::new());
        tar.mode(tar::HeaderMode::Deterministic);
        fn io(p: &Path) -> impl FnOnce(std::io::Error) -> ImageError + '_ {
            move |e| ImageError::io(p, e)
        }
        for (path, node) in &self.nodes {
            let mut h = tar::Header::new_gnu();
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(epoch);
            match node {
                Node::Dir { mode } => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(*mode);
                    h.set_size(0);
                    tar.append_data(&mut h, path, std::io::empty())
                        .map_err(io(path))?;
                }
                Node::File { mode, from } => {
                    let data = match from {
                        Source::Bytes(b) => b.clone(),
                        Source::Path(p) => std::fs::read(p).map_err(io(p))?,
                    };
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_mode(*mode);
                    h.set_size(data.len() as u64);
                    tar.append_data(&mut h, path, data.as_slice())
                        .map_err(io(path))?;
                }
                Node::Symlink { target } => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_mode(0o777);
                    h.set_size(0);
                    tar.append_link(&mut h, path, target).map_err(io(path))?;
                }
            }
        }
        let data = tar.into_inner().map_err(io(Path::new("layer")))?;
        let diff_id = format!("sha256:{}", sha256_hex(&data));
        let mut gz = GzEncoder::new(Vec::new(), Compression::best());
        gz.write_all(&data).map_err(io(Path::new("layer")))?;
        let blob = gz.finish().map_err(io(Path::new("layer")))?;
        Ok(Layer {
            blob,
            diff_id,
            tar_size: data.len() as u64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn entries(layer: &Layer) -> Vec<(String, tar::EntryType, u64, u32)> {
        let mut tar = Vec::new();
        flate2::read::GzDecoder::new(layer.blob.as_slice())
            .read_to_end(&mut tar)
            .unwrap();
        assert_eq!(format!("sha256:{}", sha256_hex(&tar)), layer.diff_id);
        let mut a = tar::Archive::new(tar.as_slice());
        a.entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                assert_eq!((h.uid().unwrap(), h.gid().unwrap()), (0, 0));
                (
                    e.path().unwrap().display().to_string(),
                    h.entry_type(),
                    h.mtime().unwrap(),
                    h.mode().unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn sorted_parents_first_owned_by_root_at_the_epoch_and_reproducible() {
        let d = tempfile::tempdir().unwrap();
        crate::fs::write(&d.path().join("lib/x/libz.so.1.2"), "z").unwrap();
        std::os::unix::fs::symlink("libz.so.1.2", d.path().join("lib/x/libz.so.1")).unwrap();
        crate::fs::write(&d.path().join("usr/share/doc/z/README"), "doc").unwrap();
        let build = || {
            let mut b = LayerBuilder::new();
            b.file("bin/baetyl", 0o755, &d.path().join("lib/x/libz.so.1.2"))
                .unwrap();
            b.dir("tmp", 0o1777).unwrap();
            b.tree(d.path(), "", |p| p.starts_with("usr/share/doc"))
                .unwrap();
            b.finish(1_700_000_000).unwrap()
        };
        let (one, two) = (build(), build());
        assert_eq!(one.blob, two.blob, "same inputs, same bytes");
        let got = entries(&one);
        let names: Vec<&str> = got.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "bin",
                "bin/baetyl",
                "lib",
                "lib/x",
                "lib/x/libz.so.1",
                "lib/x/libz.so.1.2",
                "tmp",
                "usr",
                "usr/share",
            ]
        );
        assert!(got.iter().all(|e| e.2 == 1_700_000_000));
        let tmp = got.iter().find(|e| e.0 == "tmp").unwrap();
        assert_eq!((tmp.1, tmp.3), (tar::EntryType::Directory, 0o1777));
        let link = got.iter().find(|e| e.0 == "lib/x/libz.so.1").unwrap();
        assert_eq!(link.1, tar::EntryType::Symlink);
    }

    #[test]
    fn paths_may_not_climb_out() {
        let mut b = LayerBuilder::new();
        let err = b.bytes("../etc/passwd", 0o644, vec![]).unwrap_err();
        assert!(err.to_string().contains("climb out"), "{err}");
    }
}
