//! Debian binaries into the root: a few executables from Debian's packages for the target architecture, with
//! exactly the shared libraries they load and the dynamic loader, and nothing else of the packages.
//!
//! The packages are fetched into the package cache and unpacked there by [`crate::apt`] (no network when the
//! cache holds them). [`plan`] then reads each executable's ELF headers ([`crate::elf`], so it works for a
//! foreign architecture where `ldd` cannot), follows `PT_INTERP` to the loader and every `DT_NEEDED` name to a
//! file in the packages' library directories (`lib/<triplet>`, `usr/lib/<triplet>`, `lib`, `usr/lib`: the
//! loader's own search path, so no `ld.so.cache` is needed), and repeats for each library found. Symbolic links
//! on the way (`libext2fs.so.2 -> libext2fs.so.2.4`, `/lib64/ld-linux-x86-64.so.2 -> ...`) are kept as links.
//! [`install`] copies the plan into the staged root at the packages' own paths.
//!
//! A set of binaries is a [`DebBinaries`]: the packages (the executables' and their libraries', `libc6`
//! included) and the executables. A library that none of the packages holds is an error naming the library,
//! the binary that needs it and the packages searched.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Component, Path, PathBuf};

use crate::apt;
use crate::arch::Arch;
use crate::elf;
use crate::error::{ImageError, Result};
use crate::run::Runner;

/// Executables from Debian's packages, with the packages that hold them and every library they need.
#[derive(Debug)]
pub struct DebBinaries {
    /// What they are for (progress output).
    pub what: &'static str,
    /// The Debian packages (binary package names, without architecture).
    pub packages: &'static [&'static str],
    /// The executables, as paths inside the packages; each lands at the same path in the root.
    pub executables: &'static [&'static str],
}

/// e2fsck, which init runs on the data partition before mounting it (`data.checker` in init.yml).
pub const E2FSCK: DebBinaries = DebBinaries {
    what: "e2fsck, the data partition's checker",
    packages: &[
        "e2fsprogs",
        "libext2fs2",
        "libcom-err2",
        "libblkid1",
        "libuuid1",
        "libc6",
    ],
    executables: &["sbin/e2fsck"],
};

/// containerd with its runc shim and runc, for an image whose master runs containers (init starts containerd,
/// containerd the shim, the shim runc; each found in PATH). runc needs libseccomp.
pub const CONTAINERD: DebBinaries = DebBinaries {
    what: "containerd, containerd-shim-runc-v2 and runc",
    packages: &["containerd", "runc", "libseccomp2", "libc6"],
    executables: &[
        "usr/bin/containerd",
        "usr/bin/containerd-shim-runc-v2",
        "usr/sbin/runc",
    ],
};

/// Where e2fsck lands in the root.
pub const E2FSCK_PATH: &str = "/sbin/e2fsck";

/// The unpacked packages, seen as one tree: a path is taken from the first package that has it.
pub struct PackageTree {
    roots: Vec<(String, PathBuf)>,
}

impl PackageTree {
    /// `roots`: (package name, unpacked root), in lookup order.
    pub fn new(roots: Vec<(String, PathBuf)>) -> Self {
        PackageTree { roots }
    }

    fn names(&self) -> String {
        let names: Vec<&str> = self.roots.iter().map(|(n, _)| n.as_str()).collect();
        names.join(", ")
    }

    /// The file (or link, not followed) at `rel` in the first package that has it.
    fn find(&self, rel: &Path) -> Option<PathBuf> {
        self.roots
            .iter()
            .map(|(_, root)| root.join(rel))
            .find(|p| p.symlink_metadata().is_ok())
    }
}

/// One entry of the root: a file copied from a package, or a link as the package has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    File { src: PathBuf },
    Link { target: PathBuf },
}

/// `rel` with `.` and `..` resolved (never above the root) and no leading `/`.
fn normalize(rel: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in rel.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

/// The directories the loader searches (its built-in path on Debian), relative to the root.
pub fn library_dirs(triplet: &str) -> [String; 4] {
    [
        format!("lib/{triplet}"),
        format!("usr/lib/{triplet}"),
        "lib".to_string(),
        "usr/lib".to_string(),
    ]
}

/// Adds `rel` to `items`, following links inside the packages; returns the path of the regular file it leads
/// to.
fn place(tree: &PackageTree, rel: &Path, items: &mut BTreeMap<PathBuf, Item>) -> Result<PathBuf> {
    let mut cur = normalize(rel);
    for _ in 0..40 {
        let not_there = |detail: String| ImageError::NotInPackages {
            path: format!("/{}", cur.display()),
            packages: tree.names(),
            detail,
        };
        let src = tree.find(&cur).ok_or_else(|| not_there(String::new()))?;
        let meta = src
            .symlink_metadata()
            .map_err(|e| ImageError::io(&src, e))?;
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&src).map_err(|e| ImageError::io(&src, e))?;
            let next = if target.is_absolute() {
                normalize(&target)
            } else {
                normalize(&cur.parent().unwrap_or(Path::new("")).join(&target))
            };
            items.insert(cur, Item::Link { target });
            cur = next;
        } else if meta.is_file() {
            items.insert(cur.clone(), Item::File { src });
            return Ok(cur);
        } else {
            return Err(not_there(": it is not a regular file or a link".into()));
        }
    }
    Err(ImageError::NotInPackages {
        path: format!("/{}", rel.display()),
        packages: tree.names(),
        detail: ": more than 40 links on the way".into(),
    })
}

/// Every file and link the root needs for `executables` (paths in the packages) to run: the executables, the
/// loader and the closure of their `DT_NEEDED` libraries, keyed by their path in the root.
pub fn plan(
    tree: &PackageTree,
    executables: &[&str],
    triplet: &str,
    machine: u16,
) -> Result<BTreeMap<PathBuf, Item>> {
    let dirs = library_dirs(triplet);
    let mut items = BTreeMap::new();
    let mut queue = VecDeque::new();
    for exe in executables {
        queue.push_back(place(tree, Path::new(exe), &mut items)?);
    }
    let mut read = BTreeSet::new();
    while let Some(rel) = queue.pop_front() {
        if !read.insert(rel.clone()) {
            continue;
        }
        let Some(Item::File { src }) = items.get(&rel) else {
            continue;
        };
        let info = elf::read(src)?;
        if info.machine != machine {
            return Err(ImageError::WrongMachine {
                path: src.clone(),
                found: format!("ELF machine {}", info.machine),
                want: elf::machine_name(machine),
            });
        }
        if let Some(interp) = &info.interp {
            queue.push_back(place(tree, Path::new(interp), &mut items)?);
        }
        for name in &info.needed {
            let found = dirs
                .iter()
                .map(|d| Path::new(d).join(name))
                .find(|p| tree.find(p).is_some())
                .ok_or_else(|| ImageError::Unresolved {
                    name: name.clone(),
                    needed_by: format!("/{}", rel.display()),
                    packages: tree.names(),
                    dirs: dirs.join(", "),
                })?;
            queue.push_back(place(tree, &found, &mut items)?);
        }
    }
    Ok(items)
}

/// Copies the plan into the staged root `dest` (files keep their permissions); returns the bytes copied.
pub fn install(items: &BTreeMap<PathBuf, Item>, dest: &Path) -> Result<u64> {
    let mut bytes = 0;
    for (rel, item) in items {
        let to = dest.join(rel);
        if let Some(dir) = to.parent() {
            std::fs::create_dir_all(dir).map_err(|e| ImageError::io(dir, e))?;
        }
        if to.symlink_metadata().is_ok() {
            std::fs::remove_file(&to).map_err(|e| ImageError::io(&to, e))?;
        }
        match item {
            Item::File { src } => {
                bytes += std::fs::copy(src, &to).map_err(|e| ImageError::io(src, e))?;
            }
            Item::Link { target } => {
                std::os::unix::fs::symlink(target, &to).map_err(|e| ImageError::io(&to, e))?;
            }
        }
    }
    Ok(bytes)
}

/// Fetches the packages of `sets` for `a` (the cache first), and installs their executables with the libraries
/// they need into the staged root `dest`. Returns the plan and the bytes copied.
pub fn add_to_root(
    run: &dyn Runner,
    cache: &Path,
    a: &Arch,
    sets: &[&DebBinaries],
    dest: &Path,
) -> Result<(BTreeMap<PathBuf, Item>, u64)> {
    let mut roots: Vec<(String, PathBuf)> = Vec::new();
    let mut executables = Vec::new();
    for set in sets {
        for name in set.packages {
            if roots.iter().any(|(n, _)| n == name) {
                continue;
            }
            let p = apt::fetch(run, cache, name, a.debarch)?;
            println!(
                "    {} {}",
                if p.cached { "cached    " } else { "downloaded" },
                p.deb.display()
            );
            roots.push((name.to_string(), p.root));
        }
        executables.extend_from_slice(set.executables);
    }
    let tree = PackageTree::new(roots);
    let items = plan(&tree, &executables, a.triplet, a.elf_machine)?;
    let bytes = install(&items, dest)?;
    Ok((items, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host_triplet() -> &'static str {
        if cfg!(target_arch = "aarch64") {
            "aarch64-linux-gnu"
        } else {
            "x86_64-linux-gnu"
        }
    }

    fn host_machine() -> u16 {
        elf::read(&std::env::current_exe().unwrap())
            .unwrap()
            .machine
    }

    /// The host (a Debian system) as one package: e2fsck's closure is its libraries, libc and the loader,
    /// found by reading ELF headers alone.
    #[test]
    fn e2fsck_closure_from_the_host() {
        let tree = PackageTree::new(vec![("host".into(), PathBuf::from("/"))]);
        let items = plan(&tree, E2FSCK.executables, host_triplet(), host_machine()).unwrap();
        let names: Vec<String> = items
            .keys()
            .filter_map(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .collect();
        for want in [
            "e2fsck",
            "libext2fs.so.2",
            "libcom_err.so.2",
            "libblkid.so.1",
            "libuuid.so.1",
            "libe2p.so.2",
            "libc.so.6",
        ] {
            assert!(names.iter().any(|n| n == want), "{want} missing: {names:?}");
        }
        assert!(names.iter().any(|n| n.starts_with("ld-linux")), "{names:?}");
        // Nothing else: no library of another program, no second copy of one.
        assert!(items.len() <= 16, "{items:?}");
        // Links stay links; each link leads to a file of the plan.
        for (rel, item) in &items {
            if let Item::Link { target } = item {
                let next = if target.is_absolute() {
                    normalize(target)
                } else {
                    normalize(&rel.parent().unwrap().join(target))
                };
                assert!(
                    items.contains_key(&next),
                    "{rel:?} -> {next:?} not in the plan"
                );
            }
        }

        let root = tempfile::tempdir().unwrap();
        let bytes = install(&items, root.path()).unwrap();
        assert!(bytes > 100_000, "{bytes}");
        assert!(root.path().join("sbin/e2fsck").is_file());
        let info = elf::read(&root.path().join("sbin/e2fsck")).unwrap();
        let interp = info.interp.unwrap();
        assert!(
            root.path().join(interp.trim_start_matches('/')).is_file(),
            "the loader {interp} is in the root"
        );
        // Installing again over the same root is fine (a second set sharing libc).
        install(&items, root.path()).unwrap();
    }

    /// The staged root runs: the copied loader resolves every library of the copied e2fsck inside the root
    /// (no chroot needed: the root's library directories come first in its path), and it checks a filesystem.
    #[test]
    fn the_copied_e2fsck_runs_with_the_copied_loader_and_libraries() {
        let tree = PackageTree::new(vec![("host".into(), PathBuf::from("/"))]);
        let items = plan(&tree, E2FSCK.executables, host_triplet(), host_machine()).unwrap();
        let root = tempfile::tempdir().unwrap();
        install(&items, root.path()).unwrap();
        let info = elf::read(&root.path().join("sbin/e2fsck")).unwrap();
        let loader = root
            .path()
            .join(info.interp.unwrap().trim_start_matches('/'));
        let path: Vec<String> = library_dirs(host_triplet())
            .iter()
            .map(|d| root.path().join(d).display().to_string())
            .collect();
        let list = std::process::Command::new(&loader)
            .arg("--inhibit-cache")
            .arg("--library-path")
            .arg(path.join(":"))
            .arg("--list")
            .arg(root.path().join("sbin/e2fsck"))
            .output()
            .unwrap();
        let list = String::from_utf8_lossy(&list.stdout).into_owned();
        let resolved: Vec<&str> = list
            .lines()
            .filter_map(|l| l.split_once(" => ").map(|(_, p)| p.trim()))
            .collect();
        assert!(resolved.len() >= 5, "{list}");
        for p in resolved {
            assert!(
                p.starts_with(&*root.path().to_string_lossy()),
                "{p} outside the root:\n{list}"
            );
        }
        let fs = root.path().join("fs.img");
        let mk = std::process::Command::new("mke2fs")
            .args(["-q", "-F", "-t", "ext4"])
            .arg(&fs)
            .arg("8M")
            .status()
            .unwrap();
        assert!(mk.success());
        let out = std::process::Command::new(&loader)
            .arg("--inhibit-cache")
            .arg("--library-path")
            .arg(path.join(":"))
            .arg(root.path().join("sbin/e2fsck"))
            .arg("-fn")
            .arg(&fs)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{text}");
        assert!(text.contains("Pass 5"), "{text}");
    }

    #[test]
    fn a_missing_library_or_file_names_what_to_add() {
        let pkg = tempfile::tempdir().unwrap();
        // A copy of e2fsck without its loader: the first thing missing is named.
        let sbin = pkg.path().join("sbin");
        std::fs::create_dir_all(&sbin).unwrap();
        std::fs::copy("/usr/sbin/e2fsck", sbin.join("e2fsck")).unwrap();
        let tree = PackageTree::new(vec![("e2fsprogs".into(), pkg.path().to_path_buf())]);
        let err = plan(&tree, &["sbin/e2fsck"], host_triplet(), host_machine())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("/ld-linux") && err.contains("is not in the packages e2fsprogs"),
            "{err}"
        );
        // With the loader but none of its libraries.
        let interp = elf::read(Path::new("/usr/sbin/e2fsck"))
            .unwrap()
            .interp
            .unwrap();
        let loader = pkg.path().join(interp.trim_start_matches('/'));
        std::fs::create_dir_all(loader.parent().unwrap()).unwrap();
        std::fs::copy(&interp, &loader).unwrap();
        let err = plan(&tree, &["sbin/e2fsck"], host_triplet(), host_machine())
            .unwrap_err()
            .to_string();
        assert!(err.contains("needed by /sbin/e2fsck"), "{err}");
        assert!(err.contains("none of the packages e2fsprogs"), "{err}");
        assert!(err.contains("apt-file search"), "{err}");

        let err = plan(&tree, &["sbin/fsck.ext4"], host_triplet(), host_machine())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("/sbin/fsck.ext4 is not in the packages e2fsprogs"),
            "{err}"
        );

        let other = if host_machine() == elf::EM_X86_64 {
            elf::EM_AARCH64
        } else {
            elf::EM_X86_64
        };
        let err = plan(&tree, &["sbin/e2fsck"], host_triplet(), other)
            .unwrap_err()
            .to_string();
        assert!(err.contains("built for ELF machine"), "{err}");
    }

    /// The package cache `baetyl image build` fills (`BAETYL_IMAGE_CACHE`, else its default): for each
    /// architecture whose packages of the sets are unpacked there, e2fsck's and containerd's closures resolve
    /// in them alone, aarch64 included (read without running anything).
    #[test]
    fn closures_from_the_package_cache_for_each_architecture() {
        let cache = std::env::var_os("BAETYL_IMAGE_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/cache/baetyl-image"));
        let mut checked = Vec::new();
        for a in crate::ARCHES {
            let dir = cache.join(a.debarch);
            let unpacked = |name: &str| {
                let prefix = format!("{name}_");
                std::fs::read_dir(&dir)
                    .ok()?
                    .filter_map(|e| e.ok())
                    .map(|e| e.path())
                    .find(|p| {
                        p.join(".unpacked").is_file()
                            && p.file_name()
                                .is_some_and(|n| n.to_string_lossy().starts_with(&prefix))
                    })
            };
            for set in [&E2FSCK, &CONTAINERD] {
                let roots: Option<Vec<(String, PathBuf)>> = set
                    .packages
                    .iter()
                    .map(|n| unpacked(n).map(|p| (n.to_string(), p)))
                    .collect();
                let Some(roots) = roots else { continue };
                let items = plan(
                    &PackageTree::new(roots),
                    set.executables,
                    a.triplet,
                    a.elf_machine,
                )
                .unwrap_or_else(|e| panic!("{} {}: {e}", a.name, set.what));
                let libc = Path::new("lib").join(a.triplet).join("libc.so.6");
                assert!(
                    items.contains_key(&libc),
                    "{} {}: {items:?}",
                    a.name,
                    set.what
                );
                for exe in set.executables {
                    assert!(items.contains_key(Path::new(exe)), "{exe}: {items:?}");
                }
                checked.push(format!("{} {}: {} entries", a.name, set.what, items.len()));
            }
        }
        if checked.is_empty() {
            eprintln!(
                "no unpacked packages in {} (a build fills it): nothing to check",
                cache.display()
            );
        }
        eprintln!("{checked:#?}");
    }

    #[test]
    fn paths_are_normalized_inside_the_root() {
        assert_eq!(
            normalize(Path::new("/lib64/../lib/x")),
            PathBuf::from("lib/x")
        );
        assert_eq!(normalize(Path::new("../../etc")), PathBuf::from("etc"));
        assert_eq!(normalize(Path::new("./a/./b")), PathBuf::from("a/b"));
    }
}
