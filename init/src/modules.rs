//! Finding the kernel modules the image lists. Loading is [`crate::sys::System::load_module`] (finit_module).
//!
//! The list is in dependency order (the image builder computes it with `modprobe --show-depends`), so init needs
//! no modules.dep parser: it loads each file in turn, and EEXIST (built in or already loaded) is fine.

use std::path::{Path, PathBuf};

/// The default module directory: `/lib/modules/<release>`.
pub fn default_dir() -> PathBuf {
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    PathBuf::from("/lib/modules").join(release)
}

fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

/// Resolves a list entry: a path ending in `.ko` (absolute, or relative to `dir`), or a module name searched for
/// under `dir` (`-` and `_` are the same in module names, as for modprobe).
pub fn resolve(dir: &Path, entry: &str) -> Option<PathBuf> {
    if entry.ends_with(".ko") {
        let p = Path::new(entry);
        let full = if p.is_absolute() {
            p.to_path_buf()
        } else {
            dir.join(p)
        };
        return full.is_file().then_some(full);
    }
    let wanted = format!("{}.ko", normalize(entry));
    find_file(dir, &wanted, 0)
}

fn find_file(dir: &Path, wanted: &str, depth: usize) -> Option<PathBuf> {
    if depth > 12 {
        return None;
    }
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .collect();
    entries.sort_by_key(|e| e.file_name());
    let mut subdirs = Vec::new();
    for e in entries {
        let path = e.path();
        match e.file_type() {
            Ok(t) if t.is_dir() => subdirs.push(path),
            Ok(_) => {
                if e.file_name().to_str().map(normalize).as_deref() == Some(wanted) {
                    return Some(path);
                }
            }
            Err(_) => {}
        }
    }
    subdirs
        .into_iter()
        .find_map(|d| find_file(&d, wanted, depth + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_paths_resolve() {
        let dir = tempfile::tempdir().unwrap();
        let net = dir.path().join("kernel/drivers/net");
        std::fs::create_dir_all(&net).unwrap();
        std::fs::write(net.join("virtio_net.ko"), b"\x7fELF").unwrap();
        std::fs::write(net.join("nls-cp437.ko"), b"\x7fELF").unwrap();
        assert_eq!(
            resolve(dir.path(), "virtio_net"),
            Some(net.join("virtio_net.ko"))
        );
        assert_eq!(
            resolve(dir.path(), "virtio-net"),
            Some(net.join("virtio_net.ko"))
        );
        assert_eq!(
            resolve(dir.path(), "nls_cp437"),
            Some(net.join("nls-cp437.ko"))
        );
        assert_eq!(
            resolve(dir.path(), "kernel/drivers/net/virtio_net.ko"),
            Some(net.join("virtio_net.ko"))
        );
        assert_eq!(resolve(dir.path(), "virtio_blk"), None);
    }
}
