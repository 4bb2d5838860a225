//! A boot on trial: systemd-boot started a boot entry that still counts its tries (`+LEFT[-DONE]` in its file
//! name, reported in the `LoaderBootCountPath` EFI variable), i.e. a newly installed OS. The master marks the
//! boot good once its services are healthy (it renames the entry and writes
//! [`baetyl_sdk::os::BLESSED_FILE`]); init's part is the deadline: a trial boot that is not marked good within
//! `trial.timeout`, or whose master had to be started `trial.master_starts` times, is rebooted, so that the boot
//! loader counts the failed try and, after the last one, boots the previous OS again. Without this a new OS whose
//! master cannot start would stay up, useless, forever.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use baetyl_sdk::os::BootEntry;

use crate::config::TrialConfig;

pub use baetyl_sdk::os::{EFIVARS, LOADER_GUID};
use baetyl_sdk::os::{efi_string, entry_of_path};

/// The counted entry named by `LoaderBootCountPath` in `efivars`, if this boot is on trial.
pub fn counted_entry(efivars: &Path) -> Option<BootEntry> {
    let raw = std::fs::read(efivars.join(format!("LoaderBootCountPath-{LOADER_GUID}"))).ok()?;
    let entry = entry_of_path(&efi_string(&raw)?)?;
    entry.tries_left.is_some().then_some(entry)
}

/// Mounts efivarfs when the firmware is UEFI and it is not mounted yet (best effort: without it no boot is on
/// trial, which is what a machine without systemd-boot is).
pub fn mount_efivarfs() {
    let dir = Path::new(EFIVARS);
    if !dir.is_dir() {
        return;
    }
    let empty = std::fs::read_dir(dir)
        .map(|mut d| d.next().is_none())
        .unwrap_or(false);
    if empty {
        use nix::mount::{MsFlags, mount};
        if let Err(e) = mount(
            Some("efivarfs"),
            dir,
            Some("efivarfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            None::<&str>,
        ) {
            crate::log::warning!(
                "cannot mount efivarfs on {EFIVARS}: {e}; boot counting is not watched"
            );
        }
    }
}

/// What the trial watch decided.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Still waiting; look again within this long.
    Wait(Duration),
    /// The master marked the boot good: nothing more to watch.
    Good,
    /// Reboot, for this reason.
    Reboot(String),
}

/// The watch over one trial boot.
#[derive(Debug)]
pub struct Trial {
    pub entry: BootEntry,
    deadline: Instant,
    max_starts: u32,
    marker: PathBuf,
    done: bool,
}

impl Trial {
    pub fn new(entry: BootEntry, cfg: &TrialConfig, now: Instant, marker: PathBuf) -> Self {
        Trial {
            entry,
            deadline: now + cfg.timeout.get(),
            max_starts: cfg.master_starts,
            marker,
            done: false,
        }
    }

    /// Looks at the marker, the clock and the master's start count.
    pub fn check(&mut self, now: Instant, master_starts: u32) -> Verdict {
        if self.done || self.marker.exists() {
            self.done = true;
            return Verdict::Good;
        }
        let name = self.entry.file_name();
        if master_starts >= self.max_starts {
            self.done = true;
            return Verdict::Reboot(format!(
                "boot entry {name} is on trial and the master was started {master_starts} times without marking \
                 it good; rebooting so that the boot loader counts a failed try"
            ));
        }
        if now >= self.deadline {
            self.done = true;
            return Verdict::Reboot(format!(
                "boot entry {name} is on trial and was not marked good in time; rebooting so that the boot loader \
                 counts a failed try"
            ));
        }
        Verdict::Wait(
            self.deadline
                .saturating_duration_since(now)
                .min(Duration::from_secs(5)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn var(path: &str) -> Vec<u8> {
        let mut raw = vec![6, 0, 0, 0];
        for u in path.encode_utf16() {
            raw.extend_from_slice(&u.to_le_bytes());
        }
        raw.extend_from_slice(&[0, 0]);
        raw
    }

    #[test]
    fn a_counted_entry_is_a_trial_and_is_rebooted_unless_marked_good() {
        let dir = tempfile::tempdir().expect("dir");
        let f = dir
            .path()
            .join(format!("LoaderBootCountPath-{LOADER_GUID}"));
        assert_eq!(counted_entry(dir.path()), None, "no variable, no trial");
        std::fs::write(&f, var("\\EFI\\Linux\\baetyl-000002-b+2-1.efi")).expect("write");
        let e = counted_entry(dir.path()).expect("trial");
        assert_eq!((e.generation, e.slot, e.tries_left), (2, 'b', Some(2)));
        std::fs::write(&f, var("\\EFI\\Linux\\other+1.efi")).expect("write");
        assert_eq!(counted_entry(dir.path()), None);

        let cfg = TrialConfig {
            timeout: baetyl_sdk::config::HumanDuration::from_secs(60),
            master_starts: 3,
        };
        let marker = dir.path().join("blessed");
        let t0 = Instant::now();
        let mut t = Trial::new(e, &cfg, t0, marker.clone());
        assert!(matches!(t.check(t0, 1), Verdict::Wait(_)));
        assert!(
            matches!(t.check(t0 + Duration::from_secs(61), 1), Verdict::Reboot(ref r) if r.contains("in time"))
        );
        assert_eq!(t.check(t0, 1), Verdict::Good, "decided once");

        let mut t = Trial::new(e, &cfg, t0, marker.clone());
        assert!(matches!(t.check(t0, 3), Verdict::Reboot(ref r) if r.contains("3 times")));

        let mut t = Trial::new(e, &cfg, t0, marker.clone());
        std::fs::write(&marker, "blessed").expect("marker");
        assert_eq!(t.check(t0 + Duration::from_secs(600), 9), Verdict::Good);
    }
}
