//! Ownership and modes of what a service uses, when services run under users of their own: its instance
//! directory and read-write volumes become its own, a dataset (read-only volume) becomes readable by it.
//!
//! Trees are walked through file descriptors opened with `O_NOFOLLOW` (`openat` from the directory above),
//! and changed with `fchown`/`fchmod` on those descriptors: a symlink a service planted is never followed,
//! so nothing outside the tree changes owner or mode. Work is done only when the top of the tree is not
//! already as wanted, so a large dataset is walked once, not at every start.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{OFlag, open, openat};
use nix::sys::stat::{FileStat, Mode, SFlag, fchmod, fstat};
use nix::unistd::{Gid, Uid, fchown};

use super::ResolvedMount;

const FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_NONBLOCK)
    .union(OFlag::O_NOCTTY)
    .union(OFlag::O_CLOEXEC);

/// Lets the service `uid:gid` use the volume at `path`: a read-write one becomes its own, closed to other
/// users (`o-rwx` on its top; `o=x` when other services' volumes are `nested` in it, which they must pass
/// through), or readable by all when other services mount it too; a read-only one readable by its group
/// alone, or by all when shared. Nothing below a `nested` directory changes: it is another service's.
pub fn let_use(path: &Path, m: &ResolvedMount, uid: u32, gid: u32) -> nix::Result<()> {
    // `path` is `m.host` resolved: the nested volumes are found below it by their place in `m.host`.
    let nested: Vec<PathBuf> = m
        .nested
        .iter()
        .filter_map(|n| n.strip_prefix(&m.host).ok())
        .map(|rel| path.join(rel))
        .collect();
    let nested = nested.as_slice();
    match (m.read_only, m.shared) {
        (false, false) => {
            give_tree(path, nested, uid, gid)?;
            let others = if nested.is_empty() { 0 } else { 0o001 };
            let (fd, st) = open_top(path)?;
            if st.st_mode & 0o007 != others {
                chmod(&fd, (st.st_mode & 0o7770) | others)?;
            }
            Ok(())
        }
        (false, true) => {
            give_tree(path, nested, uid, gid).and_then(|()| share_with_all(path, nested))
        }
        (true, false) => share_with_group(path, nested, gid),
        (true, true) => share_with_all(path, nested),
    }
}

/// Gives the tree at `path` to `uid:gid` (modes unchanged), unless its top already is theirs; the trees at
/// `skip` (other services' volumes inside it) are left as they are.
pub fn give_tree(path: &Path, skip: &[PathBuf], uid: u32, gid: u32) -> nix::Result<()> {
    let (fd, st) = open_top(path)?;
    if st.st_uid == uid && st.st_gid == gid {
        return Ok(());
    }
    walk(fd, st, path, skip, &mut |fd, _| {
        fchown(fd, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
    })
}

/// Makes the tree at `path` readable by the group `gid` and by no one else but its owner (group set,
/// `g+rX`, `o-rwx`), unless its top already has that group.
pub fn share_with_group(path: &Path, skip: &[PathBuf], gid: u32) -> nix::Result<()> {
    let (fd, st) = open_top(path)?;
    if st.st_gid == gid {
        return Ok(());
    }
    walk(fd, st, path, skip, &mut |fd, st| {
        fchown(fd, None, Some(Gid::from_raw(gid)))?;
        let group = if is_dir(st) { 0o050 } else { 0o040 };
        chmod(fd, (st.st_mode & 0o7770 & !0o007) | group)
    })
}

/// Makes the tree at `path` readable by everyone (`o+rX`), unless its top already is.
pub fn share_with_all(path: &Path, skip: &[PathBuf]) -> nix::Result<()> {
    let (fd, st) = open_top(path)?;
    if st.st_mode & 0o005 == 0o005 {
        return Ok(());
    }
    walk(fd, st, path, skip, &mut |fd, st| {
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

/// Applies `f` to the directory `fd` (at `path`) and, below it, to every directory and regular file but
/// those at `skip` and below; symlinks, devices, FIFOs and sockets are skipped.
fn walk(
    fd: OwnedFd,
    st: FileStat,
    path: &Path,
    skip: &[PathBuf],
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
        let child_path = path.join(std::ffi::OsStr::from_bytes(name.as_bytes()));
        if skip.iter().any(|s| s == &child_path) {
            continue;
        }
        let child = match openat(&fd, name.as_c_str(), FLAGS, Mode::empty()) {
            Ok(c) => c,
            // A symlink (ELOOP), or gone meanwhile: skipped.
            Err(Errno::ELOOP | Errno::ENOENT | Errno::ENXIO) => continue,
            Err(e) => return Err(e),
        };
        let cst = fstat(child.as_fd())?;
        if is_dir(&cst) || is_file(&cst) {
            walk(child, cst, &child_path, skip, f)?;
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
        give_tree(&tree, &[], 4242, 4343).expect("give");
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
        share_with_group(&tree, &[], 4444).expect("share");
        let md = std::fs::metadata(tree.join("sub/file")).expect("md");
        assert_eq!((md.gid(), md.mode() & 0o077), (4444, 0o040));
        assert_eq!(
            std::fs::metadata(tree.join("sub")).expect("md").mode() & 0o077,
            0o050
        );
        share_with_all(&tree, &[]).expect("all");
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

    #[test]
    fn a_volume_stops_at_other_services_volumes_inside_it() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED: changing owners needs root");
            return;
        }
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("dir");
        let outer = dir.path().join("deploy");
        let inner = outer.join("volumes/conf-1");
        std::fs::create_dir_all(&inner).expect("dir");
        std::fs::write(inner.join("secret"), "x").expect("write");
        std::fs::write(outer.join("own"), "x").expect("write");
        share_with_group(&inner, &[], 4545).expect("the inner service's");
        let mount = |host: &Path, nested: Vec<PathBuf>| ResolvedMount {
            host: host.to_path_buf(),
            target: "/d".into(),
            read_only: false,
            shared: false,
            nested,
        };
        let_use(&outer, &mount(&outer, vec![inner.clone()]), 4242, 4242).expect("outer");
        for p in ["", "volumes", "own"] {
            let md = std::fs::metadata(outer.join(p)).expect("md");
            assert_eq!((md.uid(), md.gid()), (4242, 4242), "{p}");
        }
        for p in [inner.clone(), inner.join("secret")] {
            let md = std::fs::metadata(&p).expect("md");
            assert_eq!((md.uid(), md.gid()), (0, 4545), "{}", p.display());
        }
        let top = std::fs::metadata(&outer).expect("md").permissions().mode();
        assert_eq!(
            top & 0o007,
            0o001,
            "others pass through to the nested volume, nothing more"
        );
        // Without nested volumes a service's read-write volume is closed to others.
        let alone = dir.path().join("alone");
        std::fs::create_dir_all(&alone).expect("dir");
        let_use(&alone, &mount(&alone, Vec::new()), 4242, 4242).expect("alone");
        let top = std::fs::metadata(&alone).expect("md").permissions().mode();
        assert_eq!(top & 0o007, 0);
    }
}
