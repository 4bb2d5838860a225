//! `--dry`: the [`System`] that logs each side effect instead of performing it.

use std::path::{Path, PathBuf};

use super::{Freed, ModuleLoad, MountSpec, PowerAction, System};
use crate::error::SysError;

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
    fn run_checker(
        &mut self,
        program: &Path,
        args: &[String],
    ) -> Result<crate::fsck::CheckerRun, SysError> {
        crate::log::info!("dry: {} {}", program.display(), args.join(" "));
        Ok(crate::fsck::CheckerRun {
            exit: crate::fsck::Exit::Code(0),
            output: String::new(),
        })
    }
    fn write_file(&mut self, path: &Path, contents: &[u8]) -> Result<(), SysError> {
        crate::log::info!("dry: write {} ({} bytes)", path.display(), contents.len());
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
