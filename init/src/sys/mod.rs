//! The side effects of PID 1 behind one small trait, so the boot and shutdown logic runs against a recorder in
//! unit tests, against the kernel in the VM, and against a logger in `--dry` mode.
//!
//! Paths given to a [`System`] are the paths the device sees (`/proc`, `/var/lib/baetyl`). [`LinuxSystem`] can
//! prefix them with a root directory so the namespace tests mount real filesystems under a temporary directory
//! instead of over the host's `/run` and `/tmp`.
//!
//! Layout: this file holds the trait and the values it passes; `linux.rs` the kernel implementation
//! ([`LinuxSystem`]), `dry.rs` the `--dry` logger ([`DrySystem`]), `block.rs` the block-device and partition
//! ioctls behind growing the data partition, `initramfs.rs` the freeing of the initramfs after a switch_root
//! ([`free_initramfs`]).

mod block;
mod dry;
mod initramfs;
mod linux;

use std::fmt;
use std::path::{Path, PathBuf};

use nix::mount::MsFlags;

use crate::error::SysError;

pub use dry::DrySystem;
pub use initramfs::free_initramfs;
pub use linux::LinuxSystem;

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
    /// Runs a filesystem checker to completion (no time limit: a check may take minutes on a large medium) and
    /// returns how it ended and its output. `program` is a device path.
    fn run_checker(
        &mut self,
        program: &Path,
        args: &[String],
    ) -> Result<crate::fsck::CheckerRun, SysError>;
    /// Writes a small file (creating its directory), e.g. the safe-mode marker under /run.
    fn write_file(&mut self, path: &Path, contents: &[u8]) -> Result<(), SysError>;
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
