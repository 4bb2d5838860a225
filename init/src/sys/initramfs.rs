//! Freeing the initramfs after a switch_root, like util-linux switch_root: its files stay in RAM until deleted,
//! and only through a descriptor on the old root can they still be reached once the new root is `/`.

use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::errno::Errno;

use super::Freed;

/// Deletes everything under the directory `root` (an fd on the old root) that is on the same filesystem, never
/// descending into other mounts, like util-linux switch_root. Returns None when `root` is not on ramfs/tmpfs:
/// a real filesystem is never touched.
pub fn free_initramfs(root: std::os::fd::OwnedFd) -> Option<Freed> {
    use nix::sys::statfs::{FsType, TMPFS_MAGIC, fstatfs};
    const RAMFS_MAGIC: FsType = FsType(0x8584_58f6);
    let st = fstatfs(&root).ok()?;
    if st.filesystem_type() != RAMFS_MAGIC && st.filesystem_type() != TMPFS_MAGIC {
        return None;
    }
    let dev = nix::sys::stat::fstat(&root).ok()?.st_dev;
    let mut freed = Freed::default();
    match nix::dir::Dir::from_fd(root) {
        Ok(mut dir) => {
            remove_tree(&mut dir, Path::new("/"), dev, &mut freed);
        }
        Err(e) => {
            crate::log::warning!("free initramfs: open /: {e}");
            freed.errors += 1;
        }
    }
    Some(freed)
}

/// Empties `dir` (shown as `shown` in messages); true if it is empty afterwards.
fn remove_tree(dir: &mut nix::dir::Dir, shown: &Path, dev: u64, freed: &mut Freed) -> bool {
    use nix::fcntl::AtFlags;
    use nix::fcntl::OFlag;
    use nix::sys::stat::{Mode, SFlag, fstatat};
    use nix::unistd::{UnlinkatFlags, unlinkat};
    let names: Vec<std::ffi::CString> = dir
        .iter()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_owned())
        .filter(|n| n.as_bytes() != b"." && n.as_bytes() != b"..")
        .collect();
    let mut emptied = true;
    let fail = |freed: &mut Freed, path: &Path, what: &str, e: Errno| {
        freed.errors += 1;
        if freed.errors <= 5 {
            crate::log::warning!("free initramfs: {what} {}: {e}", path.display());
        }
    };
    for name in names {
        let path = shown.join(std::ffi::OsStr::from_bytes(name.as_bytes()));
        let st = match fstatat(&*dir, name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(e) => {
                fail(freed, &path, "stat", e);
                emptied = false;
                continue;
            }
        };
        let is_dir = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR;
        if is_dir {
            if st.st_dev != dev {
                // Another filesystem is mounted here: not ours to delete.
                freed.mounts_kept += 1;
                emptied = false;
                continue;
            }
            let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
            let sub_empty =
                match nix::dir::Dir::openat(&*dir, name.as_c_str(), flags, Mode::empty()) {
                    Ok(mut sub) => remove_tree(&mut sub, &path, dev, freed),
                    Err(e) => {
                        fail(freed, &path, "open", e);
                        false
                    }
                };
            if !sub_empty {
                emptied = false;
                continue;
            }
            match unlinkat(&*dir, name.as_c_str(), UnlinkatFlags::RemoveDir) {
                Ok(()) => freed.dirs += 1,
                Err(e) => {
                    fail(freed, &path, "rmdir", e);
                    emptied = false;
                }
            }
        } else {
            match unlinkat(&*dir, name.as_c_str(), UnlinkatFlags::NoRemoveDir) {
                Ok(()) => freed.files += 1,
                Err(e) => {
                    fail(freed, &path, "unlink", e);
                    emptied = false;
                }
            }
        }
    }
    emptied
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initramfs_freeing_only_touches_ramfs_or_tmpfs() {
        use nix::sys::statfs::{TMPFS_MAGIC, statfs};
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::fs::write(dir.path().join("a/b/f"), "x").unwrap();
        std::fs::write(dir.path().join("g"), "x").unwrap();
        std::os::unix::fs::symlink("g", dir.path().join("l")).unwrap();
        let on_tmpfs = statfs(dir.path()).unwrap().filesystem_type() == TMPFS_MAGIC;
        let fd = nix::fcntl::open(
            dir.path(),
            nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY,
            nix::sys::stat::Mode::empty(),
        )
        .unwrap();
        let freed = free_initramfs(fd);
        if on_tmpfs {
            let f = freed.unwrap();
            assert_eq!((f.files, f.dirs, f.errors), (3, 2, 0), "{f:?}");
            assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        } else {
            // A real filesystem is never touched.
            assert_eq!(freed, None);
            assert!(dir.path().join("a/b/f").exists());
            assert!(dir.path().join("l").exists());
        }
    }
}
