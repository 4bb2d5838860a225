//! Directories and links the native engine makes, kept inside the places they belong to, whatever a service
//! (or a careless application) planted on the way.
//!
//! - [`ensure_dir_inside`] makes a directory (and its missing parents) and proves that it resolves inside
//!   one of the allowed roots (the work dir, conf.yml `volumes.allowed_roots`): every existing part of the
//!   path is resolved before anything is created in it, so a symlink that leads elsewhere stops it first.
//! - [`link_volume`] links a volume into an instance's directory at the mount target, walking the target
//!   from the instance directory with `openat(O_NOFOLLOW)`: a symlink planted on the way (inside the
//!   instance directory, so the service's own) is removed, never followed; nothing outside the instance
//!   directory is created, replaced or deleted.
//! - [`target_problem`] says what is wrong with a mount target (`..`, not absolute, the root itself).

use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, openat};
use nix::sys::stat::{FileStat, Mode, SFlag, fstatat, mkdirat};
use nix::unistd::{UnlinkatFlags, symlinkat, unlinkat};

/// What went wrong, for the engine's error.
#[derive(Debug)]
pub enum Problem {
    /// The path resolves outside every allowed root.
    Outside(PathBuf),
    /// Something that is not a directory (or a symlink) is where a directory or the link must go.
    InTheWay(PathBuf),
    Io(PathBuf, std::io::Error),
}

impl Problem {
    /// The failure of `spec`'s start that this problem is.
    pub fn into_error(self, spec: &crate::engine::InstanceSpec) -> crate::error::MasterError {
        use crate::error::MasterError;
        let (service, instance) = (spec.service.clone(), spec.instance.clone());
        match self {
            Problem::Outside(path) => MasterError::Escape {
                service,
                instance,
                path,
            },
            Problem::InTheWay(link) => MasterError::VolumeInTheWay {
                service,
                instance,
                link,
            },
            Problem::Io(path, e) => MasterError::io(path, e),
        }
    }
}

fn io(path: &Path, e: impl Into<std::io::Error>) -> Problem {
    Problem::Io(path.to_path_buf(), e.into())
}

/// Makes the directory `path` (absolute) with its missing parents and answers its resolved path, which is
/// inside one of `roots` (resolved paths) or an error.
pub fn ensure_dir_inside(path: &Path, roots: &[PathBuf]) -> Result<PathBuf, Problem> {
    let mut existing = path.to_path_buf();
    let mut missing: Vec<std::ffi::OsString> = Vec::new();
    loop {
        match std::fs::symlink_metadata(&existing) {
            Ok(_) => break,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let name = existing
                    .file_name()
                    .ok_or_else(|| io(path, std::io::Error::other("no such directory")))?
                    .to_os_string();
                missing.push(name);
                existing.pop();
            }
            Err(e) => return Err(io(&existing, e)),
        }
    }
    let mut real = existing.canonicalize().map_err(|e| io(&existing, e))?;
    if !roots.iter().any(|r| real.starts_with(r)) {
        return Err(Problem::Outside(path.to_path_buf()));
    }
    for name in missing.iter().rev() {
        real.push(name);
        match std::fs::create_dir(&real) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                // Made meanwhile: it must be a real directory, not a symlink to elsewhere.
                let md = std::fs::symlink_metadata(&real).map_err(|e| io(&real, e))?;
                if !md.is_dir() {
                    return Err(Problem::InTheWay(real));
                }
            }
            Err(e) => return Err(io(&real, e)),
        }
    }
    let md = std::fs::metadata(&real).map_err(|e| io(&real, e))?;
    if !md.is_dir() {
        return Err(Problem::InTheWay(real));
    }
    Ok(real)
}

/// What is wrong with a mount target, if anything: it must be an absolute path without `..` naming a
/// directory inside the service (not `/` itself).
pub fn target_problem(target: &str) -> Option<&'static str> {
    let path = Path::new(target);
    if !path.is_absolute() {
        return Some("must be an absolute path inside the service (e.g. /data)");
    }
    if path.components().any(|c| c == Component::ParentDir) {
        return Some("must not contain `..`");
    }
    if !path.components().any(|c| matches!(c, Component::Normal(_))) {
        return Some("must name a directory inside the service, not its root");
    }
    None
}

/// Links `host` at `target` inside the instance directory `dir` (already made, inside the work dir).
pub fn link_volume(dir: &Path, target: &str, host: &Path) -> Result<(), Problem> {
    let names: Vec<&OsStr> = Path::new(target)
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n),
            _ => None,
        })
        .collect();
    let (last, parents) = names
        .split_last()
        .ok_or_else(|| Problem::InTheWay(dir.to_path_buf()))?;
    let dir_flags = OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_RDONLY;
    let mut fd: OwnedFd =
        nix::fcntl::open(dir, dir_flags, Mode::empty()).map_err(|e| io(dir, e))?;
    let mut at = dir.to_path_buf();
    for name in parents {
        at.push(name);
        match stat_at(&fd, name) {
            Some(st) if kind(&st) == SFlag::S_IFDIR => {}
            Some(st) if kind(&st) == SFlag::S_IFLNK => {
                // The service's own symlink, in its own directory: removed, not followed.
                unlinkat(&fd, *name, UnlinkatFlags::NoRemoveDir).map_err(|e| io(&at, e))?;
                mkdirat(&fd, *name, Mode::from_bits_truncate(0o755)).map_err(|e| io(&at, e))?;
            }
            Some(_) => return Err(Problem::InTheWay(at)),
            None => match mkdirat(&fd, *name, Mode::from_bits_truncate(0o755)) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(io(&at, e)),
            },
        }
        fd = openat(&fd, *name, dir_flags, Mode::empty()).map_err(|e| match e {
            Errno::ELOOP | Errno::ENOTDIR => Problem::InTheWay(at.clone()),
            e => io(&at, e),
        })?;
    }
    at.push(last);
    match stat_at(&fd, last) {
        None => {}
        Some(st) if kind(&st) == SFlag::S_IFLNK => {
            unlinkat(&fd, *last, UnlinkatFlags::NoRemoveDir).map_err(|e| io(&at, e))?
        }
        Some(_) => return Err(Problem::InTheWay(at)),
    }
    symlinkat(host, fd.as_fd(), *last).map_err(|e| io(&at, e))
}

fn stat_at(fd: &OwnedFd, name: &OsStr) -> Option<FileStat> {
    fstatat(fd, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW).ok()
}

fn kind(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_must_stay_inside_the_service() {
        assert_eq!(target_problem("/data"), None);
        assert_eq!(target_problem("/var/db/x/"), None);
        assert!(target_problem("data").is_some());
        assert!(target_problem("/").is_some());
        assert!(target_problem("/./").is_some());
        assert!(target_problem("/a/../../b").is_some());
    }

    #[test]
    fn directories_are_made_inside_the_roots_only() {
        let root = tempfile::tempdir().expect("dir");
        let outside = tempfile::tempdir().expect("dir");
        let roots = [root.path().canonicalize().expect("canonical")];
        let made = ensure_dir_inside(&root.path().join("a/b/c"), &roots).expect("inside");
        assert!(made.is_dir() && made.starts_with(&roots[0]));
        std::os::unix::fs::symlink(outside.path(), root.path().join("a/out")).expect("symlink");
        assert!(matches!(
            ensure_dir_inside(&root.path().join("a/out/x/y"), &roots),
            Err(Problem::Outside(_))
        ));
        assert!(!outside.path().join("x").exists());
        std::fs::write(root.path().join("a/file"), "x").expect("write");
        assert!(matches!(
            ensure_dir_inside(&root.path().join("a/file"), &roots),
            Err(Problem::InTheWay(_))
        ));
    }
}
