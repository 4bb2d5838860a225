//! Ownership and modes of what a service uses, when services run under users of their own: its instance
//! directory and read-write volumes become its own, a dataset (read-only volume) becomes readable by it.
//!
//! Trees are walked through file descriptors opened with `O_NOFOLLOW` (`openat` from the directory above),
//! and changed with `fchown`/`fchmod` on those descriptors: a symlink a service planted is never followed,
//! so nothing outside the tree changes owner or mode. Work is done only when the top of the tree is not
//! already as wanted, so a large dataset is walked once, not at every start.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{OFlag, open, openat};
use nix::sys::stat::{FileStat, Mode, SFlag, fchmod, fstat};
use nix::unistd::{Gid, Uid, fchown};

const FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_NONBLOCK)
    .union(OFlag::O_NOCTTY)
    .union(OFlag::O_CLOEXEC);

/// Lets the service `uid:gid` use the volume at `path`: a read-write one becomes its own (readable by all
/// when other services mount it too); a read-only one readable by its group alone, or by all when shared.
pub fn let_use(path: &Path, read_only: bool, shared: bool, uid: u32, gid: u32) -> nix::Result<()> {
    match (read_only, shared) {
        (false, shared) => give_tree(path, uid, gid)
            .and_then(|()| if shared { share_with_all(path) } else { Ok(()) }),
        (true, false) => share_with_group(path, gid),
        (true, true) => share_with_all(path),
    }
}

/// Gives the tree at `path` to `uid:gid` (modes unchanged), unless its top already is theirs.
pub fn give_tree(path: &Path, uid: u32, gid: u32) -> nix::Result<()> {
    let (fd, st) = open_top(path)?;
    if st.st_uid == uid && st.st_gid == gid {
        return Ok(());
    }
    walk(fd, st, &mut |fd, _| {
        fchown(fd, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
    })
}

/// Makes the tree at `path` readable by the group `gid` and by no one else but its owner (group set,
/// `g+rX`, `o-rwx`), unless its top already has that group.
pub fn share_with_group(path: &Path, gid: u32) -> nix::Result<()> {
    let (fd, st) = open_top(path)?;
    if st.st_gid == gid {
        return Ok(());
    }
    walk(fd, st, &mut |fd, st| {
        fchown(fd, None, Some(Gid::from_raw(gid)))?;
        let group = if is_dir(st) { 0o050 } else { 0o040 };
        chmod(fd, (st.st_mode & 0o7770 & !0o007) | group)
    })
}

/// Makes the tree at `path` readable by everyone (`o+rX`), unless its top already is.
pub fn share_with_all(path: &Path) -> nix::Result<()> {
    let (fd, st) = open_top(path)?;
    if st.st_mode & 0o005 == 0o005 {
        return Ok(());
    }
    walk(fd, st, &mut |fd, st| {
        let others = if is_dir(st) { 0o005 } else { 0o004 };
        chmod(fd, (st.st_mode & 0o7777) | others)
    })
}

fn chmod(fd: &OwnedFd, mode: u32) -> nix::Result<()> {
    fchmod(fd, Mode::from_bits_truncate(mode))
}

fn open_top(path: &Path) -> nix::Result<(OwnedFd, FileStat)> {
    let fd = open(path, FLAGS, Mode::empty())?;
    let st = fstat(&fd)?;
    Ok((fd, st))
}

fn is_dir(st: &FileStat) -> bool {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) == SFlag::S_IFDIR
}

fn is_file(st: &FileStat) -> bool {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) == SFlag::S_IFREG
}

/// Applies `f` to the directory `fd` and, below it, to every directory and regular file; symlinks,
/// devices, FIFOs and sockets are skipped.
fn walk(
    fd: OwnedFd,
    st: FileStat,
    f: &mut impl FnMut(&OwnedFd, &FileStat) -> nix::Result<()>,
) -> nix::Result<()> {
    f(&fd, &st)?;
    if !is_dir(&st) {
        return Ok(());
    }
    let names: Vec<std::ffi::CString> = {
        // A second descriptor for reading the entries: `Dir` takes ownership of it.
        let listing = openat(&fd, ".", FLAGS | OFlag::O_DIRECTORY, Mode::empty())?;
        let mut dir = Dir::from_fd(listing)?;
        dir.iter()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_owned())
            .filter(|n| n.as_bytes() != b"." && n.as_bytes() != b"..")
            .collect()
    };
    for name in names {
        let child = match openat(&fd, name.as_c_str(), FLAGS, Mode::empty()) {
            Ok(c) => c,
            // A symlink (ELOOP), or gone meanwhile: skipped.
            Err(Errno::ELOOP | Errno::ENOENT | Errno::ENXIO) => continue,
            Err(e) => return Err(e),
        };
        let cst = fstat(child.as_fd())?;
        if is_dir(&cst) || is_file(&cst) {
            walk(child, cst, f)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn trees_change_owner_without_following_symlinks() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED: changing owners needs root");
            return;
        }
        let dir = tempfile::tempdir().expect("dir");
        let outside = tempfile::tempdir().expect("dir");
        std::fs::write(outside.path().join("precious"), "x").expect("write");
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(tree.join("sub")).expect("dir");
        std::fs::write(tree.join("sub/file"), "x").expect("write");
        std::os::unix::fs::symlink(outside.path(), tree.join("escape")).expect("symlink");
        std::os::unix::fs::symlink(outside.path().join("precious"), tree.join("sub/link"))
            .expect("symlink");
        give_tree(&tree, 4242, 4343).expect("give");
        for p in ["", "sub", "sub/file"] {
            let md = std::fs::symlink_metadata(tree.join(p)).expect("md");
            assert_eq!((md.uid(), md.gid()), (4242, 4343), "{p}");
        }
        for p in [
            outside.path().to_path_buf(),
            outside.path().join("precious"),
        ] {
            let md = std::fs::metadata(&p).expect("md");
            assert_eq!((md.uid(), md.gid()), (0, 0), "{}", p.display());
        }
        share_with_group(&tree, 4444).expect("share");
        let md = std::fs::metadata(tree.join("sub/file")).expect("md");
        assert_eq!((md.gid(), md.mode() & 0o077), (4444, 0o040));
        assert_eq!(
            std::fs::metadata(tree.join("sub")).expect("md").mode() & 0o077,
            0o050
        );
        share_with_all(&tree).expect("all");
        assert_eq!(
            std::fs::metadata(tree.join("sub/file")).expect("md").mode() & 0o007,
            0o004
        );
        assert_eq!(
            std::fs::metadata(outside.path().join("precious"))
                .expect("md")
                .gid(),
            0
        );
    }
}
