//! The OS's A/B slots as `baetyl init` and the master share them: the names of the boot entries on the ESP (with
//! systemd-boot's boot counter), and the state init writes to [`STATE_FILE`] for the master (which slot booted,
//! where the other one is, whether this boot is still on trial, what failed before it).
//!
//! Boot entries are unified kernel images in `EFI/Linux/` named `baetyl-<generation>-<slot>[+LEFT[-DONE]].efi`:
//! the generation (six digits) grows with every OS install, so systemd-boot, which sorts entries newest first and
//! puts those without tries left last, boots the newest entry that is not bad. `+3` on a new entry gives it
//! three tries; systemd-boot counts one down on each boot (`+2-1`, `+1-2`, `+0-3`) and the master renames the entry to
//! `baetyl-<generation>-<slot>.efi` once the boot is healthy (blessed). The master does the renaming: it alone knows
//! whether the hub and the other services stay up; init only enforces the deadline ([`BLESSED_FILE`]). On a Raspberry Pi the firmware's tryboot
//! plays the counter's part (one try).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Where init writes the [`OsState`] on the device (`/run`: it describes this boot only).
pub const STATE_FILE: &str = "/run/baetyl/os.json";

/// Set by `baetyl init` for the master: the path of the [`OsState`] file.
pub const STATE_ENV: &str = "BAETYL_OS_STATE";

/// Written by the master once this boot is good (blessed, or not counted at all): init reboots a counted boot
/// (one the boot loader started with a tries counter) that has no marker after its trial time, so that a new OS
/// whose master cannot even start still falls back.
pub const BLESSED_FILE: &str = "/run/baetyl/os-blessed";

/// systemd-boot's vendor GUID: its EFI variables are `<Name>-<GUID>` in efivarfs (`LoaderBootCountPath`: the ESP
/// path of the counted entry this boot came from; set only when the entry has a tries counter).
pub const LOADER_GUID: &str = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f";
/// Where efivarfs is mounted.
pub const EFIVARS: &str = "/sys/firmware/efi/efivars";

/// The value of one of systemd-boot's string variables as efivarfs shows it: 4 bytes of attributes, then
/// UTF-16LE, NUL-terminated.
pub fn efi_string(raw: &[u8]) -> Option<String> {
    let body = raw.get(4..)?;
    let units: Vec<u16> = body
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    String::from_utf16(&units).ok()
}

/// The boot entry an ESP path (`\EFI\Linux\baetyl-000002-b+2-1.efi`) names.
pub fn entry_of_path(path: &str) -> Option<BootEntry> {
    BootEntry::parse(path.rsplit(['\\', '/']).next()?)
}

/// Where the image pins the public key OS update bundles must be signed with (`ed25519:<base64>`).
pub const UPDATE_KEY: &str = "/etc/baetyl/os-update.pub";

/// Tries a newly installed entry gets before the boot loader gives up on it.
pub const TRIES: u32 = 3;

/// The slots, in order.
pub const SLOTS: [char; 2] = ['a', 'b'];

/// The other slot.
pub fn other_slot(slot: char) -> char {
    if slot == 'a' { 'b' } else { 'a' }
}

/// One boot entry on the ESP, parsed from its file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootEntry {
    pub generation: u32,
    pub slot: char,
    /// `+LEFT`: tries left; None for an entry without a counter (blessed, or never counted).
    pub tries_left: Option<u32>,
    /// `-DONE`: tries used so far.
    pub tries_done: Option<u32>,
}

impl BootEntry {
    /// A new entry with [`TRIES`] tries.
    pub fn new_trial(generation: u32, slot: char) -> Self {
        BootEntry {
            generation,
            slot,
            tries_left: Some(TRIES),
            tries_done: None,
        }
    }

    /// Parses `baetyl-000002-b+2-1.efi` (case-insensitively: FAT keeps the case, firmware may not).
    pub fn parse(file_name: &str) -> Option<BootEntry> {
        let lower = file_name.to_ascii_lowercase();
        let stem = lower.strip_prefix("baetyl-")?.strip_suffix(".efi")?;
        let (base, counter) = match stem.split_once('+') {
            Some((b, c)) => (b, Some(c)),
            None => (stem, None),
        };
        let (number, slot) = base.split_once('-')?;
        if number.len() != 6 || !number.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let slot = match slot {
            "a" => 'a',
            "b" => 'b',
            _ => return None,
        };
        let (tries_left, tries_done) = match counter {
            None => (None, None),
            Some(c) => {
                let (left, done) = match c.split_once('-') {
                    Some((l, d)) => (l, Some(d)),
                    None => (c, None),
                };
                let left: u32 = left.parse().ok()?;
                let done: Option<u32> = match done {
                    Some(d) => Some(d.parse().ok()?),
                    None => None,
                };
                (Some(left), done)
            }
        };
        Some(BootEntry {
            generation: number.parse().ok()?,
            slot,
            tries_left,
            tries_done,
        })
    }

    /// The file name this entry has.
    pub fn file_name(&self) -> String {
        let mut s = format!("baetyl-{:06}-{}", self.generation, self.slot);
        if let Some(left) = self.tries_left {
            s += &format!("+{left}");
            if let Some(done) = self.tries_done {
                s += &format!("-{done}");
            }
        }
        s + ".efi"
    }

    /// The name once blessed: no counter.
    pub fn blessed(&self) -> BootEntry {
        BootEntry {
            tries_left: None,
            tries_done: None,
            ..*self
        }
    }

    /// The name once marked bad (what `systemd-bless-boot bad` does): no tries left, the tries so far kept.
    pub fn bad(&self) -> BootEntry {
        let done = self.tries_done.unwrap_or(0) + self.tries_left.unwrap_or(0);
        BootEntry {
            tries_left: Some(0),
            tries_done: Some(done.max(1)),
            ..*self
        }
    }

    /// Whether the boot loader still boots it (no counter, or tries left).
    pub fn bootable(&self) -> bool {
        self.tries_left != Some(0)
    }
}

/// The boot entries among `names` (other files ignored), newest generation first: the boot loader's order for
/// bootable entries.
pub fn entries<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<BootEntry> {
    let mut v: Vec<BootEntry> = names.into_iter().filter_map(BootEntry::parse).collect();
    v.sort_by_key(|e| std::cmp::Reverse(e.generation));
    v
}

/// What the device boots with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Board {
    /// UEFI firmware, systemd-boot and unified kernel images on a GPT disk (x86_64, aarch64 virt).
    Efi,
    /// Raspberry Pi 4 / 5: the firmware's tryboot with one FAT boot partition per slot on an MBR card.
    Rpi4,
    Rpi5,
}

impl Board {
    pub fn name(self) -> &'static str {
        match self {
            Board::Efi => "efi",
            Board::Rpi4 => "rpi4",
            Board::Rpi5 => "rpi5",
        }
    }
    pub fn is_rpi(self) -> bool {
        matches!(self, Board::Rpi4 | Board::Rpi5)
    }
}

/// One slot's partitions, as init found them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SlotDevices {
    /// The root partition (GPT name `root-<slot>`).
    pub root: Option<PathBuf>,
    /// The slot's own boot partition (Raspberry Pi only: the FAT partition the firmware boots).
    pub boot: Option<PathBuf>,
}

/// A newer OS than the running one that did not make it: its entry ran out of tries or was marked bad.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailedUpdate {
    pub slot: char,
    pub generation: u32,
    /// The entry's file name as the boot loader left it.
    pub entry: String,
    /// Why, as far as this boot can tell.
    pub reason: String,
}

/// The state init writes to [`STATE_FILE`] once the root is mounted, and again when the boot is blessed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OsState {
    pub board: Board,
    /// The slot that booted.
    pub slot: char,
    /// VERSION_ID of the running root's os-release.
    pub version: String,
    /// Each slot's partitions, by slot letter.
    pub slots: BTreeMap<char, SlotDevices>,
    /// Where the boot configuration lives: the ESP's mount point (EFI), or the card's first FAT partition, which
    /// holds autoboot.txt (Raspberry Pi). Mounted read-only; writers remount it read-write for their writes.
    pub boot_mount: Option<PathBuf>,
    /// The booted entry's file name as the boot loader started it (EFI), e.g. `baetyl-000002-b+2-1.efi`.
    pub entry: Option<String>,
    /// The booted entry's generation (0 when the boot loader named none).
    pub generation: u32,
    /// This boot is counted: the boot loader falls back if it is not blessed.
    pub trial: bool,
    /// The boot was blessed (marked good) by init.
    pub blessed: bool,
    /// A newer install that failed (reported after the fallback).
    pub failed: Option<FailedUpdate>,
    /// Anything worth reporting about slots (e.g. why the slot could not be told).
    pub note: String,
}

impl OsState {
    /// The slot an update goes to.
    pub fn inactive(&self) -> char {
        other_slot(self.slot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_names_round_trip_and_sort_newest_first() {
        let e = BootEntry::parse("baetyl-000002-b+2-1.efi").unwrap();
        assert_eq!(
            e,
            BootEntry {
                generation: 2,
                slot: 'b',
                tries_left: Some(2),
                tries_done: Some(1)
            }
        );
        assert_eq!(e.file_name(), "baetyl-000002-b+2-1.efi");
        assert_eq!(e.blessed().file_name(), "baetyl-000002-b.efi");
        assert_eq!(e.bad().file_name(), "baetyl-000002-b+0-3.efi");
        assert!(e.bootable() && !e.bad().bootable());
        let n = BootEntry::new_trial(7, 'a');
        assert_eq!(n.file_name(), "baetyl-000007-a+3.efi");
        assert_eq!(n.bad().file_name(), "baetyl-000007-a+0-3.efi");
        assert_eq!(
            BootEntry::parse("BAETYL-000001-A.EFI").map(|e| e.file_name()),
            Some("baetyl-000001-a.efi".into())
        );
        for bad in [
            "baetyl-1-a.efi",
            "baetyl-000001-c.efi",
            "baetyl-000001-a+x.efi",
            "other.efi",
            "baetyl-000001-a.efi.tmp",
        ] {
            assert_eq!(BootEntry::parse(bad), None, "{bad}");
        }
        let v = entries([
            "baetyl-000001-a.efi",
            "baetyl-000003-a+0-3.efi",
            "x.efi",
            "baetyl-000002-b.efi",
        ]);
        let g: Vec<u32> = v.iter().map(|e| e.generation).collect();
        assert_eq!(g, [3, 2, 1]);
    }

    #[test]
    fn state_round_trips_as_json() {
        let s = OsState {
            board: Board::Efi,
            slot: 'b',
            version: "0.1.0".into(),
            slots: [('a', SlotDevices::default()), ('b', SlotDevices::default())]
                .into_iter()
                .collect(),
            boot_mount: Some("/boot".into()),
            entry: Some("baetyl-000002-b+2-1.efi".into()),
            generation: 2,
            trial: true,
            blessed: false,
            failed: None,
            note: String::new(),
        };
        let text = serde_json::to_string(&s).unwrap();
        assert!(text.contains("\"board\":\"efi\""), "{text}");
        assert_eq!(serde_json::from_str::<OsState>(&text).unwrap(), s);
        assert_eq!(s.inactive(), 'a');
    }
}
