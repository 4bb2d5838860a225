//! Files that hold secrets or state: created 0600 with O_EXCL and O_NOFOLLOW (never through a planted symlink,
//! never over an existing file), replaced atomically (temp file, fsync, rename, directory fsync).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Creates `path` with `data` and mode 0600. Fails if anything (file, symlink, dangling symlink) is already
/// there. The data is synced before this returns.
pub fn create_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc_nofollow())
        .open(path)?;
    f.write_all(data)?;
    f.sync_all()?;
    sync_dir(path);
    Ok(())
}

/// Replaces `path` with `data` atomically (mode `mode`): a crash leaves the old or the new content, never a mix.
/// A symlink at `path` is replaced, not followed.
pub fn replace(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    let tmp = temp_beside(path);
    let _ = std::fs::remove_file(&tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc_nofollow())
        .open(&tmp)?;
    let result = f.write_all(data).and_then(|()| f.sync_all());
    drop(f);
    if let Err(e) = result.and_then(|()| std::fs::rename(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    sync_dir(path);
    Ok(())
}

/// Reads a file of at most `limit` bytes without following a symlink at its last component.
pub fn read_limited(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc_nofollow())
        .open(path)?;
    let len = f.metadata()?.len();
    if len > limit {
        return Err(std::io::Error::other(format!(
            "{} is {len} bytes, more than the limit of {limit}",
            path.display()
        )));
    }
    let mut buf = Vec::with_capacity(len as usize);
    f.take(limit + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > limit {
        return Err(std::io::Error::other(format!(
            "{} grew past the limit of {limit} bytes",
            path.display()
        )));
    }
    Ok(buf)
}

/// Reads a small text secret (a token, a key in text form): trimmed, at most 64 KiB.
pub fn read_secret(path: &Path) -> std::io::Result<String> {
    let bytes = read_limited(path, 64 * 1024)?;
    String::from_utf8(bytes)
        .map(|s| s.trim().to_string())
        .map_err(|_| std::io::Error::other(format!("{} is not UTF-8 text", path.display())))
}

/// Creates a directory (and its parents) and restricts it to its owner.
pub fn private_dir(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
}

fn temp_beside(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp"))
}

fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && let Ok(d) = File::open(dir)
    {
        let _ = d.sync_all();
    }
}

fn libc_nofollow() -> i32 {
    nix::fcntl::OFlag::O_NOFOLLOW.bits()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn private_files_are_0600_new_and_never_follow_links() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("key");
        create_private(&p, b"secret").unwrap();
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(create_private(&p, b"again").is_err(), "never overwrites");
        let target = dir.path().join("elsewhere");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(
            create_private(&link, b"x").is_err(),
            "never through a symlink"
        );
        assert!(!target.exists());
        assert!(read_limited(&link, 10).is_err());
    }

    #[test]
    fn replace_is_atomic_and_reads_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.json");
        replace(&p, b"one", 0o600).unwrap();
        replace(&p, b"two", 0o600).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert!(read_limited(&p, 2).is_err());
        assert_eq!(read_limited(&p, 3).unwrap(), b"two");
        std::fs::write(dir.path().join("t"), " tok \n").unwrap();
        assert_eq!(read_secret(&dir.path().join("t")).unwrap(), "tok");
    }
}
