//! The kernel: [`LinuxSystem`] performs each side effect of PID 1 with the system call it stands for, optionally
//! under a root prefix (the namespace tests mount under a temporary directory in a private mount namespace).

use std::fs::File;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::kmod::{ModuleInitFlags, finit_module};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::reboot::{RebootMode, reboot};

use super::{Freed, ModuleLoad, MountSpec, PowerAction, System, block, free_initramfs};
use crate::error::SysError;

/// The kernel, optionally under a root prefix (tests in a private mount namespace).
#[derive(Debug)]
pub struct LinuxSystem {
    root: PathBuf,
}

impl LinuxSystem {
    pub fn new(root: PathBuf) -> Self {
        LinuxSystem { root }
    }
    pub fn root(&self) -> &Path {
        &self.root
    }
}

fn opt(s: &str) -> Option<&str> {
    if s.is_empty() { None } else { Some(s) }
}

/// `mount --move FROM TO`: the mount at `from` (with its submounts) now sits at `to`.
fn move_mount(from: &Path, to: &Path) -> nix::Result<()> {
    mount(Some(from), to, None::<&str>, MsFlags::MS_MOVE, None::<&str>)
}

impl System for LinuxSystem {
    fn host_path(&self, path: &Path) -> PathBuf {
        match path.strip_prefix("/") {
            Ok(rel) => self.root.join(rel),
            Err(_) => self.root.join(path),
        }
    }

    fn is_mounted(&self, path: &Path) -> bool {
        let host = self.host_path(path);
        std::fs::read_to_string("/proc/self/mountinfo")
            .map(|t| crate::mounts::mount_points(&t).contains(&host))
            .unwrap_or(false)
    }

    fn make_dir(&mut self, path: &Path) -> Result<(), SysError> {
        let host = self.host_path(path);
        std::fs::create_dir_all(&host).map_err(|source| SysError::MakeDir { path: host, source })
    }

    fn mount(&mut self, spec: &MountSpec) -> Result<(), SysError> {
        let target = self.host_path(&spec.target);
        // Bind sources are paths on the device; filesystem sources (`proc`, `/dev/vda3`) are names or devices.
        let source =
            if spec.flags.contains(MsFlags::MS_BIND) || spec.flags.contains(MsFlags::MS_MOVE) {
                self.host_path(Path::new(&spec.source))
                    .to_string_lossy()
                    .into_owned()
            } else {
                spec.source.clone()
            };
        mount(
            opt(&source),
            &target,
            opt(&spec.fstype),
            spec.flags,
            opt(&spec.data),
        )
        .map_err(|errno| SysError::Mount {
            device: source.clone(),
            target: target.clone(),
            fstype: spec.fstype.clone(),
            errno,
        })
    }

    fn remount_readonly(&mut self, target: &Path) -> Result<(), SysError> {
        let target = self.host_path(target);
        mount(
            None::<&str>,
            &target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .map_err(|errno| SysError::Mount {
            device: "(remount)".into(),
            target,
            fstype: "ro".into(),
            errno,
        })
    }

    fn unmount(&mut self, target: &Path) -> Result<(), SysError> {
        let host = self.host_path(target);
        match umount2(&host, MntFlags::empty()) {
            Ok(()) => Ok(()),
            Err(Errno::EBUSY) => {
                // Something still holds it (our own /dev/console, a file a killed process left open): make it
                // read-only so the filesystem is consistent, then detach it.
                let _ = mount(
                    None::<&str>,
                    &host,
                    None::<&str>,
                    MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                    None::<&str>,
                );
                umount2(&host, MntFlags::MNT_DETACH).map_err(|errno| SysError::Unmount {
                    target: host,
                    errno,
                })
            }
            Err(errno) => Err(SysError::Unmount {
                target: host,
                errno,
            }),
        }
    }

    fn load_module(&mut self, path: &Path) -> Result<ModuleLoad, SysError> {
        let file = File::open(path).map_err(|source| SysError::ModuleOpen {
            path: path.to_path_buf(),
            source,
        })?;
        match finit_module(&file, c"", ModuleInitFlags::empty()) {
            Ok(()) => Ok(ModuleLoad::Loaded),
            Err(Errno::EEXIST) => Ok(ModuleLoad::AlreadyLoaded),
            Err(errno) => Err(SysError::ModuleLoad {
                path: path.to_path_buf(),
                errno,
            }),
        }
    }

    fn set_hostname(&mut self, name: &str) -> Result<(), SysError> {
        nix::unistd::sethostname(name).map_err(|errno| SysError::Hostname {
            name: name.to_string(),
            errno,
        })
    }

    fn reroot(&mut self, newroot: &Path) -> Result<(), SysError> {
        let err = |step: &'static str| {
            move |errno: Errno| SysError::Reroot {
                newroot: newroot.to_path_buf(),
                step,
                errno,
            }
        };
        std::fs::create_dir_all(newroot).map_err(|e| SysError::Reroot {
            newroot: newroot.to_path_buf(),
            step: "mkdir",
            errno: Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
        })?;
        // Recursive: after a failed switch_root, /proc, /sys and /dev are mounted already and must come along.
        mount(
            Some("/"),
            newroot,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(err("bind / on new root"))?;
        nix::unistd::chdir(newroot).map_err(err("chdir"))?;
        move_mount(Path::new("."), Path::new("/")).map_err(err("move onto /"))?;
        nix::unistd::chroot(".").map_err(err("chroot"))?;
        nix::unistd::chdir("/").map_err(err("chdir /"))?;
        Ok(())
    }

    fn switch_root(
        &mut self,
        newroot: &Path,
        moves: &[PathBuf],
    ) -> Result<Option<Freed>, SysError> {
        let new_host = self.host_path(newroot);
        let old_root = self.host_path(Path::new("/"));
        let fail = |step: String, errno: Errno| SysError::SwitchRoot {
            newroot: new_host.clone(),
            step,
            errno,
        };
        let under_new = |p: &Path| new_host.join(p.strip_prefix("/").unwrap_or(p));
        // Nothing can be created on a read-only root: every mount point must be in the image already.
        for m in moves {
            if !under_new(m).is_dir() {
                return Err(fail(
                    format!(
                        "{} is not a directory in the new root (the image must contain it)",
                        m.display()
                    ),
                    Errno::ENOENT,
                ));
            }
        }
        // Freed later only if the old root is a mount of its own (the initramfs `/`, or a test's tmpfs root).
        let old_is_mount = self.root == Path::new("/") || self.is_mounted(Path::new("/"));
        let mut moved: Vec<(PathBuf, PathBuf)> = Vec::new();
        let undo = |moved: &mut Vec<(PathBuf, PathBuf)>| {
            while let Some((from, to)) = moved.pop() {
                if let Err(e) = move_mount(&to, &from) {
                    crate::log::error!(
                        "switch root: moving {} back to {}: {e}",
                        to.display(),
                        from.display()
                    );
                }
            }
        };
        for m in moves {
            let (from, to) = (self.host_path(m), under_new(m));
            if let Err(errno) = move_mount(&from, &to) {
                undo(&mut moved);
                return Err(fail(
                    format!("move {} to {}", from.display(), to.display()),
                    errno,
                ));
            }
            moved.push((from, to));
        }
        let old_fd = if old_is_mount {
            nix::fcntl::open(
                &old_root,
                nix::fcntl::OFlag::O_RDONLY
                    | nix::fcntl::OFlag::O_DIRECTORY
                    | nix::fcntl::OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::empty(),
            )
            .ok()
        } else {
            None
        };
        if let Err(errno) = nix::unistd::chdir(&new_host) {
            undo(&mut moved);
            return Err(fail("chdir".into(), errno));
        }
        if let Err(errno) = move_mount(Path::new("."), &old_root) {
            let _ = nix::unistd::chdir("/");
            undo(&mut moved);
            return Err(fail(format!("move onto {}", old_root.display()), errno));
        }
        nix::unistd::chroot(".").map_err(|e| fail("chroot".into(), e))?;
        nix::unistd::chdir("/").map_err(|e| fail("chdir /".into(), e))?;
        self.root = PathBuf::from("/");
        Ok(old_fd.and_then(free_initramfs))
    }

    fn grow_filesystem(
        &mut self,
        device: &Path,
        mountpoint: &Path,
    ) -> Result<Option<(u64, u64)>, SysError> {
        let sys_block = self.host_path(Path::new("/sys/class/block"));
        let dev = self.host_path(Path::new("/dev"));
        if let Err(e) = block::grow_partition(&sys_block, &dev, device) {
            crate::log::warning!("{e}; the data partition keeps its size");
        }
        block::grow_ext4(device, mountpoint, &self.host_path(mountpoint))
    }

    fn configure_interface(
        &mut self,
        iface: &str,
        address: Option<crate::net::Ipv4Cidr>,
        gateway: Option<std::net::Ipv4Addr>,
    ) -> Result<(), SysError> {
        match address {
            Some(cidr) => crate::net::configure(iface, cidr, gateway),
            None => crate::net::link_up(iface),
        }
    }

    fn run_checker(
        &mut self,
        program: &Path,
        args: &[String],
    ) -> Result<crate::fsck::CheckerRun, SysError> {
        use std::os::unix::process::ExitStatusExt;
        let host = self.host_path(program);
        let out = std::process::Command::new(&host)
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|source| SysError::Spawn {
                program: host.clone(),
                source,
            })?;
        let exit = match (out.status.code(), out.status.signal()) {
            (Some(code), _) => crate::fsck::Exit::Code(code),
            (None, Some(sig)) => crate::fsck::Exit::Signal(
                nix::sys::signal::Signal::try_from(sig)
                    .map(|s| s.to_string())
                    .unwrap_or_else(|_| format!("signal {sig}")),
            ),
            (None, None) => crate::fsck::Exit::Code(-1),
        };
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        Ok(crate::fsck::CheckerRun {
            exit,
            output: crate::fsck::bounded(&text),
        })
    }

    fn write_file(&mut self, path: &Path, contents: &[u8]) -> Result<(), SysError> {
        let host = self.host_path(path);
        let err = |source| SysError::WriteFile {
            path: host.clone(),
            source,
        };
        if let Some(dir) = host.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        std::fs::write(&host, contents).map_err(err)
    }

    fn sync(&mut self) {
        nix::unistd::sync();
    }

    fn reboot(&mut self, action: PowerAction) -> Result<(), SysError> {
        // Never reboot the host: only PID 1 (the VM's init, or the init of a test's PID namespace, where the
        // kernel turns reboot(2) into the end of that namespace) may call it.
        if nix::unistd::getpid().as_raw() != 1 {
            return Err(SysError::Reboot {
                action: action.to_string(),
                errno: Errno::EPERM,
            });
        }
        let mode = match action {
            PowerAction::Reboot => RebootMode::RB_AUTOBOOT,
            PowerAction::PowerOff => RebootMode::RB_POWER_OFF,
        };
        match reboot(mode) {
            Ok(never) => match never {},
            Err(errno) => Err(SysError::Reboot {
                action: action.to_string(),
                errno,
            }),
        }
    }
}
