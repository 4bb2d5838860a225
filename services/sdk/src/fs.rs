//! Crash-safe state files: [`write_atomic`] replaces a file so that after a crash or power cut the path holds
//! either the old content or the new one, never a mix or an empty file, and a symlink planted at the path is
//! replaced, never followed.
//!
//! The steps: a new file next to the target, created with `O_EXCL` (so an existing file or symlink of that
//! name is never opened) and the requested mode from the start; the data; fsync; rename over the target;
//! fsync of the directory, so the rename itself is on disk.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Replaces `path` with `data`, atomically and durably; the file gets exactly `mode` (e.g. `0o600`).
/// On error the target is untouched and no temporary file is left behind.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    write_atomic_with(path, mode, |file| file.write_all(data))
}

/// [`write_atomic`] for content that `fill` writes into the new file (a large one streamed from a reader):
/// an error from `fill` leaves the target untouched and no temporary file behind.
pub fn write_atomic_with(
    path: &Path,
    mode: u32,
    fill: impl FnOnce(&mut File) -> io::Result<()>,
) -> io::Result<()> {
    let dir = parent_of(path);
    let (tmp, mut file) = create_temp(path, mode)?;
    let written = (|| {
        // The mode given at creation is masked by the umask; set it exactly.
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        fill(&mut file)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    sync_dir(dir)
}

/// Flushes a directory's entries (a rename or a new file in it) to disk.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// A new, empty file `.<name>.tmp-<pid>-<n>` next to `path`, opened with `O_CREAT|O_EXCL|O_NOFOLLOW`. A name
/// already taken (by anything, a symlink included) is skipped, never opened.
fn create_temp(path: &Path, mode: u32) -> io::Result<(PathBuf, File)> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let dir = parent_of(path);
    let mut last = None;
    for _ in 0..16 {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(
            ".{}.tmp-{}-{n}",
            name.to_string_lossy(),
            std::process::id()
        ));
        // O_EXCL alone already refuses to follow a symlink at the name; O_NOFOLLOW says so explicitly.
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
        {
            Ok(f) => return Ok((tmp, f)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no free temporary name")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn replaces_the_file_with_a_new_one_and_the_exact_mode() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.yml");
        std::fs::write(&p, "old").unwrap();
        // A hard link to the old file shows whether it was rewritten in place.
        std::fs::hard_link(&p, dir.path().join("link")).unwrap();
        write_atomic(&p, b"new", 0o640).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "new");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("link")).unwrap(),
            "old",
            "the old file was not rewritten in place"
        );
        assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o7777, 0o640);
        assert_eq!(
            names(dir.path()),
            ["link", "state.yml"],
            "no temp file left"
        );
    }

    #[test]
    fn a_planted_symlink_is_replaced_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        std::fs::write(&outside, "precious").unwrap();
        let p = dir.path().join("token");
        std::os::unix::fs::symlink(&outside, &p).unwrap();
        write_atomic(&p, b"secret", 0o600).unwrap();
        assert_eq!(std::fs::read_to_string(&outside).unwrap(), "precious");
        let md = std::fs::symlink_metadata(&p).unwrap();
        assert!(md.file_type().is_file());
        assert_eq!(md.mode() & 0o7777, 0o600);
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "secret");
    }

    #[test]
    fn a_failure_leaves_the_target_and_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        // The target is a non-empty directory: the rename fails.
        let p = dir.path().join("busy");
        std::fs::create_dir(&p).unwrap();
        std::fs::write(p.join("x"), "x").unwrap();
        assert!(write_atomic(&p, b"data", 0o600).is_err());
        assert_eq!(names(dir.path()), ["busy"]);
        assert!(write_atomic(&dir.path().join("missing/x"), b"d", 0o600).is_err());
    }
}
