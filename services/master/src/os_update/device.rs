//! What an OS update touches on the device, behind [`OsDevice`] so that the install and blessing logic is
//! tested on plain files: which slot booted (the root partition init mounted, `baetyl.root=root-<slot>` on the
//! kernel command line of the slot's unified kernel image), the partitions by GPT name (sysfs `PARTNAME`), the
//! ESP (mounted read-write only while an update or a blessing writes it), systemd-boot's `LoaderBootCountPath`
//! (efivarfs), and the reboot (init does it).

use std::path::{Path, PathBuf};

use crate::error::OsUpdateError;

use baetyl_sdk::os::{EFIVARS, LOADER_GUID, efi_string};
/// Where the master mounts the ESP for its writes (`/run`: nothing stays mounted across boots).
pub const ESP_MOUNT: &str = "/run/baetyl/esp";
/// The ESP's GPT partition name (image/genimage/disk.cfg).
pub const ESP_NAME: &str = "boot";

pub trait OsDevice: Send + Sync {
    /// The slot that booted; Err says why this is not a device booted from a baetyl disk.
    fn booted_slot(&self) -> Result<char, String>;
    /// The block device of the partition whose GPT name is `name`.
    fn partition(&self, name: &str) -> Option<PathBuf>;
    /// Mounts the ESP read-write; the directory it is mounted on.
    fn mount_esp(&self) -> Result<PathBuf, OsUpdateError>;
    /// Unmounts it (after its writes were synced).
    fn unmount_esp(&self);
    /// systemd-boot's `LoaderBootCountPath`: the ESP path of the counted entry this boot came from (None: the
    /// entry had no counter, or no systemd-boot).
    fn boot_count_path(&self) -> Option<String>;
    /// Asks init to reboot (init stops the master and every service first).
    fn reboot(&self) -> Result<(), OsUpdateError>;
    /// Tells init this boot is good (it reboots a counted boot that is not blessed in time).
    fn mark_blessed(&self);
}

/// The real device.
pub struct LinuxDevice {
    pub cmdline: PathBuf,
    pub sys_block: PathBuf,
    pub dev: PathBuf,
}

impl Default for LinuxDevice {
    fn default() -> Self {
        LinuxDevice {
            cmdline: "/proc/cmdline".into(),
            sys_block: "/sys/class/block".into(),
            dev: "/dev".into(),
        }
    }
}

/// The slot the kernel command line `cmdline` names (`baetyl.root=root-a|root-b`).
pub fn slot_of_cmdline(cmdline: &str) -> Result<char, String> {
    let root = cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("baetyl.root="));
    match root {
        Some("root-a") => Ok('a'),
        Some("root-b") => Ok('b'),
        Some(other) => Err(format!(
            "the kernel command line names the root {other}, not root-a or root-b"
        )),
        None => Err("no baetyl.root=root-a|root-b on the kernel command line".into()),
    }
}

/// The value of a `PARTNAME=` line in a sysfs uevent file.
fn uevent_value<'a>(uevent: &'a str, key: &str) -> Option<&'a str> {
    uevent
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
}

impl OsDevice for LinuxDevice {
    fn booted_slot(&self) -> Result<char, String> {
        let text = std::fs::read_to_string(&self.cmdline)
            .map_err(|e| format!("{}: {e}", self.cmdline.display()))?;
        slot_of_cmdline(&text)
    }

    fn partition(&self, name: &str) -> Option<PathBuf> {
        let mut found: Vec<PathBuf> = std::fs::read_dir(&self.sys_block)
            .ok()?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let uevent = std::fs::read_to_string(e.path().join("uevent")).ok()?;
                (uevent_value(&uevent, "PARTNAME")? == name)
                    .then(|| Some(self.dev.join(uevent_value(&uevent, "DEVNAME")?)))
                    .flatten()
            })
            .collect();
        found.sort();
        found.into_iter().next()
    }

    fn mount_esp(&self) -> Result<PathBuf, OsUpdateError> {
        use nix::mount::{MsFlags, mount};
        let dev = self
            .partition(ESP_NAME)
            .ok_or_else(|| OsUpdateError::NoPartition {
                name: ESP_NAME.into(),
            })?;
        let dir = PathBuf::from(ESP_MOUNT);
        std::fs::create_dir_all(&dir).map_err(|e| OsUpdateError::io(&dir, e))?;
        // Names are ASCII (baetyl-<generation>-<slot>+N-M.efi): the ascii and cp437 tables the image loads.
        mount(
            Some(&dev),
            &dir,
            Some("vfat"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some("iocharset=ascii,codepage=437,flush"),
        )
        .map_err(|source| OsUpdateError::Sys {
            what: format!("mount the ESP {} on {}", dev.display(), dir.display()),
            source,
        })?;
        Ok(dir)
    }

    fn unmount_esp(&self) {
        if let Err(e) = nix::mount::umount(ESP_MOUNT) {
            tracing::warn!("cannot unmount the ESP from {ESP_MOUNT}: {e}");
        }
    }

    fn boot_count_path(&self) -> Option<String> {
        let var = Path::new(EFIVARS).join(format!("LoaderBootCountPath-{LOADER_GUID}"));
        if !Path::new(EFIVARS)
            .join(format!("LoaderInfo-{LOADER_GUID}"))
            .exists()
        {
            // efivarfs not mounted yet (init mounts it; a master started otherwise does it here).
            let _ = nix::mount::mount(
                Some("efivarfs"),
                EFIVARS,
                Some("efivarfs"),
                nix::mount::MsFlags::MS_NOSUID
                    | nix::mount::MsFlags::MS_NODEV
                    | nix::mount::MsFlags::MS_NOEXEC,
                None::<&str>,
            );
        }
        efi_string(&std::fs::read(var).ok()?)
    }

    fn reboot(&self) -> Result<(), OsUpdateError> {
        use nix::sys::signal::{Signal, kill};
        let pid = std::env::var(baetyl_sdk::env::INIT_PID)
            .ok()
            .and_then(|p| p.parse::<i32>().ok())
            .ok_or_else(|| OsUpdateError::NotADevice {
                why: format!(
                    "{} is not set: no init to reboot",
                    baetyl_sdk::env::INIT_PID
                ),
            })?;
        kill(nix::unistd::Pid::from_raw(pid), Signal::SIGTERM).map_err(|source| {
            OsUpdateError::Sys {
                what: format!("ask init (pid {pid}) to reboot"),
                source,
            }
        })
    }

    fn mark_blessed(&self) {
        let f = Path::new(baetyl_sdk::os::BLESSED_FILE);
        if let Some(dir) = f.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        if let Err(e) = std::fs::write(f, b"blessed\n") {
            tracing::warn!("cannot write {}: {e}", f.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_partitions_and_efi_strings() {
        assert_eq!(
            slot_of_cmdline("console=ttyS0 baetyl.root=root-b quiet"),
            Ok('b')
        );
        assert_eq!(slot_of_cmdline("baetyl.root=root-a"), Ok('a'));
        assert!(
            slot_of_cmdline("console=ttyS0")
                .unwrap_err()
                .contains("no baetyl.root")
        );
        assert!(
            slot_of_cmdline("baetyl.root=rootfs")
                .unwrap_err()
                .contains("rootfs")
        );

        let dir = tempfile::tempdir().unwrap();
        for (dev, name) in [("vda1", "boot"), ("vda3", "root-b"), ("vda", "")] {
            let d = dir.path().join("sys").join(dev);
            std::fs::create_dir_all(&d).unwrap();
            let mut u = format!("MAJOR=254\nDEVNAME={dev}\nDEVTYPE=partition\n");
            if !name.is_empty() {
                u += &format!("PARTNAME={name}\n");
            }
            std::fs::write(d.join("uevent"), u).unwrap();
        }
        let dev = LinuxDevice {
            cmdline: dir.path().join("cmdline"),
            sys_block: dir.path().join("sys"),
            dev: "/dev".into(),
        };
        assert_eq!(dev.partition("root-b"), Some("/dev/vda3".into()));
        assert_eq!(dev.partition("boot"), Some("/dev/vda1".into()));
        assert_eq!(dev.partition("root-a"), None);
        assert!(dev.booted_slot().is_err());

        let mut raw = vec![7, 0, 0, 0];
        for u in "\\EFI\\Linux\\baetyl-000002-b+2-1.efi".encode_utf16() {
            raw.extend_from_slice(&u.to_le_bytes());
        }
        raw.extend_from_slice(&[0, 0]);
        assert_eq!(
            efi_string(&raw).as_deref(),
            Some("\\EFI\\Linux\\baetyl-000002-b+2-1.efi")
        );
        assert_eq!(efi_string(&[1, 2]), None);
    }
}
