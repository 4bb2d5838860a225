//! File helpers of the builder, with errors that name the path: read, write, a sorted walk of a tree, the
//! timestamps every output file gets (reproducible builds), SHA-256 of an output.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{ImageError, Result};

pub fn write(path: &Path, data: impl AsRef<[u8]>) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| ImageError::io(dir, e))?;
    }
    std::fs::write(path, data).map_err(|e| ImageError::io(path, e))
}

pub fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| ImageError::io(path, e))
}

pub fn sha256(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| ImageError::io(path, e))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(|e| ImageError::io(path, e))?;
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Every entry under `dir`: path relative to it and type, sorted, each directory before what it holds; symlinks
/// are listed, not followed.
pub fn tree(dir: &Path) -> Result<Vec<(PathBuf, std::fs::FileType)>> {
    let mut out = Vec::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(rel) = pending.pop() {
        let here = dir.join(&rel);
        let mut entries = Vec::new();
        for e in std::fs::read_dir(&here).map_err(|e| ImageError::io(&here, e))? {
            let e = e.map_err(|err| ImageError::io(&here, err))?;
            let ty = e
                .file_type()
                .map_err(|err| ImageError::io(&e.path(), err))?;
            entries.push((rel.join(e.file_name()), ty));
        }
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        pending.extend(
            entries
                .iter()
                .rev()
                .filter(|(_, t)| t.is_dir())
                .map(|(p, _)| p.clone()),
        );
        out.extend(entries);
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Sets the times of `dir` and everything in it (symlinks aside) to `epoch`: mksquashfs, mke2fs -d and mcopy -m
/// copy them.
pub fn touch_tree(dir: &Path, epoch: u64) -> Result<()> {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(epoch);
    let times = std::fs::FileTimes::new().set_accessed(t).set_modified(t);
    let entries = tree(dir)?;
    let paths = entries
        .iter()
        .filter(|(_, ty)| !ty.is_symlink())
        .map(|(rel, _)| dir.join(rel));
    for p in std::iter::once(dir.to_path_buf()).chain(paths) {
        std::fs::File::open(&p)
            .and_then(|f| f.set_times(times))
            .map_err(|e| ImageError::io(&p, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tree_lists_parents_first_and_does_not_follow_links() {
        let d = tempfile::tempdir().unwrap();
        write(&d.path().join("b/c/f"), "x").unwrap();
        write(&d.path().join("a"), "y").unwrap();
        std::os::unix::fs::symlink("/", d.path().join("b/l")).unwrap();
        let t: Vec<(String, bool)> = tree(d.path())
            .unwrap()
            .into_iter()
            .map(|(p, ty)| (p.display().to_string(), ty.is_symlink()))
            .collect();
        let want = [
            ("a", false),
            ("b", false),
            ("b/c", false),
            ("b/c/f", false),
            ("b/l", true),
        ];
        assert_eq!(t, want.map(|(p, l)| (p.to_string(), l)));
        touch_tree(d.path(), 1_700_000_000).unwrap();
        let m = std::fs::metadata(d.path().join("b/c/f"))
            .unwrap()
            .modified()
            .unwrap();
        assert_eq!(
            m,
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000)
        );
    }
}
