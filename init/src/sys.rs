//! The side effects of PID 1 behind one small trait, so the boot and shutdown logic runs against a recorder in
//! unit tests, against the kernel in the VM, and against a logger in `--dry` mode.
//!
//! Paths given to a [`System`] are the paths the device sees (`/proc`, `/var/lib/baetyl`). [`LinuxSystem`] can
//! prefix them with a root directory so the namespace tests mount real filesystems under a temporary directory
//! instead of over the host's `/run` and `/tmp`.

use std::fmt;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::kmod::{ModuleInitFlags, finit_module};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::reboot::{RebootMode, reboot};

use crate::error::SysError;

/// What the device does at the end of a shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerAction {
    Reboot,
    PowerOff,
}

impl fmt::Display for PowerAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PowerAction::Reboot => "reboot",
            PowerAction::PowerOff => "power off",
        })
    }
}

/// One mount(2) call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    pub source: String,
    pub target: PathBuf,
    pub fstype: String,
    pub flags: MsFlags,
    pub data: String,
}

impl MountSpec {
    pub fn new(
        source: &str,
        target: impl Into<PathBuf>,
        fstype: &str,
        flags: MsFlags,
        data: &str,
    ) -> Self {
        MountSpec {
            source: source.to_string(),
            target: target.into(),
            fstype: fstype.to_string(),
            flags,
            data: data.to_string(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModuleLoad {
    Loaded,
    AlreadyLoaded,
}

pub trait System {
    /// Where a device path is on this system (the identity except under a test root).
    fn host_path(&self, path: &Path) -> PathBuf;
    /// Whether something is mounted at this device path already (the kernel may have mounted /dev).
    fn is_mounted(&self, path: &Path) -> bool;
    fn make_dir(&mut self, path: &Path) -> Result<(), SysError>;
    fn mount(&mut self, spec: &MountSpec) -> Result<(), SysError>;
    /// Remounts a bind mount read-only (bind mounts ignore MS_RDONLY on the first call).
    fn remount_readonly(&mut self, target: &Path) -> Result<(), SysError>;
    fn unmount(&mut self, target: &Path) -> Result<(), SysError>;
    fn load_module(&mut self, path: &Path) -> Result<ModuleLoad, SysError>;
    fn set_hostname(&mut self, name: &str) -> Result<(), SysError>;
    /// Makes a copy of `/` the root: bind `/` onto `newroot`, move it over `/`, chroot into it.
    fn reroot(&mut self, newroot: &Path) -> Result<(), SysError>;
    /// switch_root into the root filesystem already mounted at `newroot`: moves each of `moves` (mounted API
    /// filesystems such as /dev, /proc, /sys) to the same path under it, makes it `/` (`chdir`, `MS_MOVE` onto
    /// `/`, `chroot`), then frees the old root's files when it is an initramfs (ramfs/tmpfs mount). Device paths
    /// are relative to the new root afterwards. On an error before the final move, the moved filesystems are
    /// moved back and the old root stays.
    fn switch_root(&mut self, newroot: &Path, moves: &[PathBuf])
    -> Result<Option<Freed>, SysError>;
    /// Grows the mounted ext4 filesystem on `device` (mounted at `mountpoint`) to fill the device.
    /// Returns the old and new size in bytes, or None when there is nothing to grow.
    fn grow_filesystem(
        &mut self,
        device: &Path,
        mountpoint: &Path,
    ) -> Result<Option<(u64, u64)>, SysError>;
    /// Brings `iface` up; with an address, sets it (and a default route through `gateway`).
    fn configure_interface(
        &mut self,
        iface: &str,
        address: Option<crate::net::Ipv4Cidr>,
        gateway: Option<std::net::Ipv4Addr>,
    ) -> Result<(), SysError>;
    fn sync(&mut self);
    /// Hands control back to the kernel. Returns only if that failed or the system is not allowed to.
    fn reboot(&mut self, action: PowerAction) -> Result<(), SysError>;
}

/// What freeing the initramfs after a switch_root removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Freed {
    /// Files, symlinks and device nodes removed.
    pub files: u64,
    pub dirs: u64,
    /// Entries that could not be removed (logged).
    pub errors: u64,
    /// Directories left alone because another filesystem is mounted there.
    pub mounts_kept: u64,
}

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

nix::ioctl_read!(blkgetsize64, 0x12, 114, u64);

/// `struct blkpg_partition` of <linux/blkpg.h>.
#[repr(C)]
struct BlkpgPartition {
    start: libc::c_longlong,
    length: libc::c_longlong,
    pno: libc::c_int,
    devname: [libc::c_char; 64],
    volname: [libc::c_char; 64],
}

/// `struct blkpg_ioctl_arg` of <linux/blkpg.h>.
#[repr(C)]
struct BlkpgIoctlArg {
    op: libc::c_int,
    flags: libc::c_int,
    datalen: libc::c_int,
    data: *mut libc::c_void,
}

const BLKPG: libc::c_ulong = 0x1269;
const BLKPG_RESIZE_PARTITION: libc::c_int = 3;

fn block_device_size(file: &File) -> Result<u64, Errno> {
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which points at `size`; `file` is open.
    unsafe { blkgetsize64(std::os::fd::AsRawFd::as_raw_fd(file), &mut size) }?;
    Ok(size)
}
nix::ioctl_write_ptr!(ext4_resize_fs, b'f', 16, u64);

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

impl LinuxSystem {
    /// When `device` is the last GPT partition of a disk larger than the table says, extends it to the end of
    /// the disk and tells the kernel the new size (BLKPG_RESIZE_PARTITION works while it is mounted).
    fn grow_partition(&mut self, device: &Path) -> Result<(), SysError> {
        let Some(name) = device.file_name().and_then(|n| n.to_str()) else {
            return Ok(());
        };
        let sys = self.host_path(Path::new("/sys/class/block")).join(name);
        let Ok(partno) = std::fs::read_to_string(sys.join("partition")) else {
            return Ok(()); // a whole disk: nothing to grow but the filesystem
        };
        let partno: u32 = partno.trim().parse().unwrap_or(0);
        let link = std::fs::read_link(&sys).unwrap_or_default();
        let Some(disk) = link
            .parent()
            .and_then(|p| p.file_name())
            .and_then(|n| n.to_str())
        else {
            return Ok(());
        };
        let disk_path = self.host_path(Path::new("/dev")).join(disk);
        let other = |what: String, errno: Errno| SysError::Other { what, errno };
        let io = |e: std::io::Error| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO));
        let mut f = File::options()
            .read(true)
            .write(true)
            .open(&disk_path)
            .map_err(|e| other(format!("open {}", disk_path.display()), io(e)))?;
        let disk_bytes = block_device_size(&f)
            .map_err(|e| other(format!("size of {}", disk_path.display()), e))?;
        let grown = match crate::gpt::grow_last_partition(&mut f, disk_bytes, partno) {
            Ok(Some(g)) => g,
            Ok(None) => return Ok(()),
            Err(e) => {
                let what = format!("grow partition {partno} of {}: {e}", disk_path.display());
                return Err(other(what, Errno::EIO));
            }
        };
        let mut part = BlkpgPartition {
            start: grown.start.saturating_mul(512) as libc::c_longlong,
            length: grown.new_sectors.saturating_mul(512) as libc::c_longlong,
            pno: partno as libc::c_int,
            devname: [0; 64],
            volname: [0; 64],
        };
        let mut arg = BlkpgIoctlArg {
            op: BLKPG_RESIZE_PARTITION,
            flags: 0,
            datalen: std::mem::size_of::<BlkpgPartition>() as libc::c_int,
            data: (&mut part as *mut BlkpgPartition).cast(),
        };
        // SAFETY: BLKPG reads a blkpg_ioctl_arg whose data points at a blkpg_partition; both live on this stack
        // frame for the duration of the call, and `f` is the open whole-disk device.
        let rc = unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&f), BLKPG as _, &mut arg) };
        if rc < 0 {
            return Err(other(
                format!("BLKPG_RESIZE_PARTITION {name}"),
                Errno::last(),
            ));
        }
        crate::log::info!(
            "partition {name} grown from {} MiB to {} MiB (the GPT of {disk} now spans the disk)",
            grown.old_sectors.saturating_mul(512) >> 20,
            grown.new_sectors.saturating_mul(512) >> 20
        );
        Ok(())
    }
}

fn opt(s: &str) -> Option<&str> {
    if s.is_empty() { None } else { Some(s) }
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
        mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
            .map_err(err("move onto /"))?;
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
                if let Err(e) = mount(
                    Some(&to),
                    &from,
                    None::<&str>,
                    MsFlags::MS_MOVE,
                    None::<&str>,
                ) {
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
            if let Err(errno) = mount(
                Some(&from),
                &to,
                None::<&str>,
                MsFlags::MS_MOVE,
                None::<&str>,
            ) {
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
        if let Err(errno) = mount(
            Some("."),
            &old_root,
            None::<&str>,
            MsFlags::MS_MOVE,
            None::<&str>,
        ) {
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
        let other = |what: &str, errno: Errno| SysError::Other {
            what: format!(
                "grow {} on {}: {what}",
                device.display(),
                mountpoint.display()
            ),
            errno,
        };
        let io_errno = |e: &std::io::Error| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO));
        if let Err(e) = self.grow_partition(device) {
            crate::log::warning!("{e}; the data partition keeps its size");
        }
        let Some(sb) = crate::mounts::ext4_super(device) else {
            return Ok(None);
        };
        let dev = File::open(device).map_err(|e| other("open device", io_errno(&e)))?;
        let meta = dev
            .metadata()
            .map_err(|e| other("stat device", io_errno(&e)))?;
        let device_bytes = if std::os::unix::fs::FileTypeExt::is_block_device(&meta.file_type()) {
            block_device_size(&dev).map_err(|e| other("BLKGETSIZE64", e))?
        } else {
            meta.len()
        };
        let Some(blocks) = crate::mounts::grow_target(&sb, device_bytes) else {
            return Ok(None);
        };
        let host = self.host_path(mountpoint);
        let dir = File::open(&host).map_err(|e| other("open mount point", io_errno(&e)))?;
        // SAFETY: EXT4_IOC_RESIZE_FS reads one u64 (the new block count) through the pointer, which points at
        // `blocks`; `dir` is an open file on the mounted filesystem.
        unsafe { ext4_resize_fs(std::os::fd::AsRawFd::as_raw_fd(&dir), &blocks) }
            .map_err(|e| other("EXT4_IOC_RESIZE_FS", e))?;
        Ok(Some((
            sb.blocks.saturating_mul(sb.block_size),
            blocks.saturating_mul(sb.block_size),
        )))
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

/// `--dry`: logs every side effect instead of performing it. Processes, signals and reaping stay real.
#[derive(Debug, Default)]
pub struct DrySystem;

impl System for DrySystem {
    fn host_path(&self, path: &Path) -> PathBuf {
        path.to_path_buf()
    }
    fn is_mounted(&self, _: &Path) -> bool {
        false
    }
    fn make_dir(&mut self, path: &Path) -> Result<(), SysError> {
        crate::log::info!("dry: mkdir -p {}", path.display());
        Ok(())
    }
    fn mount(&mut self, spec: &MountSpec) -> Result<(), SysError> {
        crate::log::info!(
            "dry: mount -t {} {} {} ({:?} {})",
            spec.fstype,
            spec.source,
            spec.target.display(),
            spec.flags,
            spec.data
        );
        Ok(())
    }
    fn remount_readonly(&mut self, target: &Path) -> Result<(), SysError> {
        crate::log::info!("dry: remount read-only {}", target.display());
        Ok(())
    }
    fn unmount(&mut self, target: &Path) -> Result<(), SysError> {
        crate::log::info!("dry: umount {}", target.display());
        Ok(())
    }
    fn load_module(&mut self, path: &Path) -> Result<ModuleLoad, SysError> {
        crate::log::info!("dry: finit_module {}", path.display());
        Ok(ModuleLoad::Loaded)
    }
    fn set_hostname(&mut self, name: &str) -> Result<(), SysError> {
        crate::log::info!("dry: sethostname {name}");
        Ok(())
    }
    fn reroot(&mut self, newroot: &Path) -> Result<(), SysError> {
        crate::log::info!("dry: re-root via {}", newroot.display());
        Ok(())
    }
    fn switch_root(
        &mut self,
        newroot: &Path,
        moves: &[PathBuf],
    ) -> Result<Option<Freed>, SysError> {
        for m in moves {
            crate::log::info!(
                "dry: mount --move {} {}",
                m.display(),
                newroot.join(m.strip_prefix("/").unwrap_or(m)).display()
            );
        }
        crate::log::info!(
            "dry: chdir {0}; mount --move . /; chroot .; free the initramfs",
            newroot.display()
        );
        Ok(None)
    }
    fn grow_filesystem(
        &mut self,
        device: &Path,
        mountpoint: &Path,
    ) -> Result<Option<(u64, u64)>, SysError> {
        crate::log::info!(
            "dry: grow {} on {} to fill its device",
            device.display(),
            mountpoint.display()
        );
        Ok(None)
    }
    fn configure_interface(
        &mut self,
        iface: &str,
        address: Option<crate::net::Ipv4Cidr>,
        gateway: Option<std::net::Ipv4Addr>,
    ) -> Result<(), SysError> {
        crate::log::info!(
            "dry: ip link set {iface} up; address {address:?}; default via {gateway:?}"
        );
        Ok(())
    }
    fn sync(&mut self) {
        crate::log::info!("dry: sync");
    }
    fn reboot(&mut self, action: PowerAction) -> Result<(), SysError> {
        crate::log::info!("dry: reboot(2) {action} skipped; exiting instead");
        Ok(())
    }
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
