//! OS updates (`PUT /v1/system/update {"type":"OS","path":"<bundle>"}`, operator and agent roles, as APP
//! updates), A/B with systemd-boot's boot counting.
//!
//! The disk has two root partitions (GPT names `root-a`, `root-b`) and an ESP (`boot`) holding systemd-boot and
//! one unified kernel image per slot in `EFI/Linux/`, named `baetyl-<generation>-<slot>[+LEFT[-DONE]].efi`
//! ([`baetyl_sdk::os::BootEntry`]); each UKI's command line names its slot's root. systemd-boot boots the newest
//! generation that has tries left, so "boot the new OS next" is simply a new entry with a higher generation
//! (no EFI variable is written: nothing to get out of step with the files).
//!
//! An install, each step in the OTA log (type OS) with v1's step names:
//! 1. RECEIVED; then, answered to the API at once: the source is a regular file under the work dir, no bigger
//!    than `update.os.max_size`, opened once; the header's length, its ed25519 signature (the key the image
//!    pins, `update.os.key`), the manifest, the board and architecture; the device booted from a baetyl disk and
//!    is not itself on trial; the inactive slot's partition exists.
//! 2. UPDATING (in the background): every payload's SHA-256, then — only then — the writes: the inactive
//!    slot's old entries are removed from the ESP, the root squashfs is written to the inactive partition
//!    (opened O_EXCL: never a mounted one, so never the running root) and synced, the slot's UKI is written to
//!    a temporary file, synced, checked again and renamed to `baetyl-<next generation>-<slot>+3.efi`.
//! 3. UPDATED, RESTARTING: init reboots the device.
//!
//! A failure at any point leaves the running slot's partition and entry as they were (power loss too: until the
//! rename the new slot has no entry; after it, the boot loader tries it three times at most). After the reboot
//! ([`OsUpdater::at_start`]) a counted boot is blessed once every service ran `update.os.bless_after` without
//! a restart: the entry is renamed without its counter (what systemd-bless-boot does), the marker
//! [`baetyl_sdk::os::BLESSED_FILE`] tells init not to reboot, and the OTA log says RESTARTED. A boot that
//! came back on the old slot while an install was pending says ROLLEDBACK and FAILURE with the reason (the new
//! entry used its tries), in the OTA log and in inspect's error.

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use baetyl_sdk::os::{self, Board, BootEntry};
use baetyl_sdk::os_bundle::{self, ROOTFS};
use serde::{Deserialize, Serialize};

use crate::error::{MasterError, OsUpdateError, Result};
use crate::ota::Updater;
use crate::ota::source::{Limit, open_source};
use crate::supervisor::{Status, Supervisor};

pub mod device;
pub mod verify;

pub use device::{LinuxDevice, OsDevice};

/// The OTA log's type for OS updates.
const KIND: &str = "OS";
/// What an install left for the next boot to report on, in the work dir (the data partition).
pub const PENDING_FILE: &str = "var/db/baetyl/os-update.json";
/// Where the new UKI is written before its rename (not `.efi`: the boot loader ignores it).
const TMP_ENTRY: &str = "baetyl-new.tmp";

/// An install waiting for the next boot's verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pending {
    pub trace: String,
    pub slot: char,
    pub generation: u32,
    pub entry: String,
    pub version: String,
    pub build: String,
}

pub struct OsUpdater {
    sup: Arc<Supervisor>,
    updater: Arc<Updater>,
    dev: Arc<dyn OsDevice>,
    /// This boot was marked good (LoaderBootCountPath still names the counted entry until the next boot).
    blessed: std::sync::atomic::AtomicBool,
}

/// A bundle whose header was checked, and the device facts the install needs.
struct Prepared {
    file: std::fs::File,
    path: PathBuf,
    header: verify::Header,
    slot: char,
    root: PathBuf,
}

impl OsUpdater {
    pub fn new(sup: Arc<Supervisor>, updater: Arc<Updater>, dev: Arc<dyn OsDevice>) -> Arc<Self> {
        Arc::new(OsUpdater {
            sup,
            updater,
            dev,
            blessed: std::sync::atomic::AtomicBool::new(false),
        })
    }

    fn log(&self, trace: &str, step: &str, message: &str, error: Option<&str>) {
        self.updater.log_as(KIND, trace, step, message, error);
    }

    fn fail(&self, trace: &str, e: &OsUpdateError) {
        let msg = format!("OS update {trace} failed: {e}; the running OS is untouched");
        self.log(trace, "FAILURE", &msg, Some(&e.to_string()));
        self.sup.set_error(msg);
    }

    fn pending_path(&self) -> PathBuf {
        self.sup.workdir().join(PENDING_FILE)
    }

    fn read_pending(&self) -> Option<Pending> {
        let text = std::fs::read(self.pending_path()).ok()?;
        serde_json::from_slice(&text).ok()
    }

    fn clear_pending(&self) {
        let _ = std::fs::remove_file(self.pending_path());
    }

    /// Accepts an OS update: the checks that need no hashing are answered here (Err, also logged as FAILURE);
    /// the install runs in the background and reboots the device at its end.
    pub fn submit(self: &Arc<Self>, path: &str, trace: &str, within: &[PathBuf]) -> Result<()> {
        let guard = self.updater.try_busy()?;
        let trace = if trace.is_empty() {
            crate::supervisor::new_token()[..8].to_string()
        } else {
            trace.to_string()
        };
        self.log(&trace, "RECEIVED", &format!("OS update from {path}"), None);
        let prepared = match self.prepare(path, within) {
            Ok(p) => p,
            Err(MasterError::OsUpdate(e)) => {
                self.fail(&trace, &e);
                return Err(e.into());
            }
            Err(e) => {
                let msg = format!("OS update {trace} refused: {e}; the running OS is untouched");
                self.log(&trace, "FAILURE", &msg, Some(&e.to_string()));
                self.sup.set_error(msg);
                return Err(e);
            }
        };
        let m = &prepared.header.manifest;
        self.log(
            &trace,
            "UPDATING",
            &format!(
                "signature good: OS {} build {} for {}; checking the payloads, then writing slot {}",
                m.version,
                m.build,
                m.arch,
                os::other_slot(prepared.slot)
            ),
            None,
        );
        let me = self.clone();
        tokio::spawn(async move {
            let _guard = guard;
            let t = trace.clone();
            let run = me.clone();
            let started = Instant::now();
            let done = tokio::task::spawn_blocking(move || run.install(prepared, &t)).await;
            match done {
                Ok(Ok(pending)) => {
                    me.log(
                        &trace,
                        "UPDATED",
                        &format!(
                            "slot {} holds OS {} build {} (boot entry {}, {} tries) after {:.1} s",
                            pending.slot,
                            pending.version,
                            pending.build,
                            pending.entry,
                            os::TRIES,
                            started.elapsed().as_secs_f64()
                        ),
                        None,
                    );
                    me.log(
                        &trace,
                        "RESTARTING",
                        &format!("rebooting into slot {}", pending.slot),
                        None,
                    );
                    // A moment for the API's answer and the OTA log readers before init stops everything.
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    if let Err(e) = me.dev.reboot() {
                        me.log(
                            &trace,
                            "FAILURE",
                            &format!("installed, but the reboot failed: {e}; reboot the device to boot it"),
                            Some(&e.to_string()),
                        );
                    }
                }
                Ok(Err(e)) => me.fail(&trace, &e),
                Err(e) => me.fail(
                    &trace,
                    &OsUpdateError::io(Path::new("install"), std::io::Error::other(e.to_string())),
                ),
            }
        });
        Ok(())
    }

    /// The checks answered to the API.
    fn prepare(&self, path: &str, within: &[PathBuf]) -> Result<Prepared> {
        let slot = self
            .dev
            .booted_slot()
            .map_err(|why| OsUpdateError::NotADevice { why })?;
        let cfg = &self.sup.config().update.os;
        let source = open_source(
            self.sup.workdir(),
            path,
            Limit {
                key: "update.os.max_size",
                max: cfg.max_size,
            },
            None,
            within,
        )?;
        let (origin, len) = (source.path.clone(), source.len);
        let mut file = source.into_file();
        let key = verify::read_key(&cfg.key)?;
        let header = verify::header(&mut file, len, &origin, &key)?;
        let m = &header.manifest;
        let want = format!("{} {}", Board::Efi.name(), std::env::consts::ARCH);
        let found = format!("{} {}", m.board.name(), m.arch);
        if found != want {
            return Err(OsUpdateError::WrongDevice {
                path: origin,
                found,
                want,
            }
            .into());
        }
        if let Some(entry) = self.counted_entry()
            && entry.tries_left.is_some()
            && !self.blessed.load(std::sync::atomic::Ordering::SeqCst)
        {
            return Err(OsUpdateError::OnTrial {
                slot,
                entry: entry.file_name(),
            }
            .into());
        }
        let name = format!("root-{}", os::other_slot(slot));
        let root = self
            .dev
            .partition(&name)
            .ok_or(OsUpdateError::NoPartition { name })?;
        Ok(Prepared {
            file,
            path: origin,
            header,
            slot,
            root,
        })
    }

    /// The entry this boot came from when the boot loader counted it.
    fn counted_entry(&self) -> Option<BootEntry> {
        os::entry_of_path(&self.dev.boot_count_path()?)
    }

    /// Hashes every payload, then writes the inactive slot (blocking; run off the runtime).
    fn install(&self, mut p: Prepared, trace: &str) -> Result<Pending, OsUpdateError> {
        let (m, at) = (&p.header.manifest, p.header.payloads_at);
        verify::payloads(&mut p.file, &p.path, &p.header)?;
        let slot = os::other_slot(p.slot);
        let part_name = format!("root-{slot}");
        let (rootfs, root_at) = m
            .payload(ROOTFS)
            .map(|(p, at)| (p.clone(), at))
            .ok_or_else(|| OsUpdateError::NotABundle {
                path: p.path.clone(),
                why: "no root payload".into(),
            })?;
        let (uki, uki_at) = m
            .payload(os_bundle::uki_payload(slot))
            .map(|(p, at)| (p.clone(), at))
            .ok_or_else(|| OsUpdateError::NotABundle {
                path: p.path.clone(),
                why: format!("no UKI for slot {slot}"),
            })?;
        // O_EXCL on a block device fails while it is mounted: never the running root.
        use std::os::unix::fs::OpenOptionsExt;
        let mut dev = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_EXCL | libc::O_CLOEXEC)
            .open(&p.root)
            .map_err(|e| OsUpdateError::io(&p.root, e))?;
        let have = dev
            .seek(SeekFrom::End(0))
            .map_err(|e| OsUpdateError::io(&p.root, e))?;
        if have < rootfs.size {
            return Err(OsUpdateError::DoesNotFit {
                name: part_name,
                need: rootfs.size,
                have,
            });
        }
        let esp = self.dev.mount_esp()?;
        let result = self.write_slot(
            &mut p,
            &mut dev,
            &esp,
            slot,
            trace,
            (&rootfs, at + root_at),
            (&uki, at + uki_at),
        );
        if result.is_err() {
            let _ = std::fs::remove_file(esp.join("EFI/Linux").join(TMP_ENTRY));
            self.clear_pending();
        }
        sync_dir(&esp.join("EFI/Linux"));
        self.dev.unmount_esp();
        result
    }

    #[allow(clippy::too_many_arguments)]
    fn write_slot(
        &self,
        p: &mut Prepared,
        dev: &mut std::fs::File,
        esp: &Path,
        slot: char,
        trace: &str,
        (rootfs, root_at): (&os_bundle::Payload, u64),
        (uki, uki_at): (&os_bundle::Payload, u64),
    ) -> Result<Pending, OsUpdateError> {
        let m = &p.header.manifest;
        let linux = esp.join("EFI/Linux");
        std::fs::create_dir_all(&linux).map_err(|e| OsUpdateError::io(&linux, e))?;
        let names = list(&linux)?;
        let entries = os::entries(names.iter().map(String::as_str));
        let generation = entries.iter().map(|e| e.generation).max().unwrap_or(0) + 1;
        // The inactive slot's old entries go first: its root is about to be overwritten.
        for name in &names {
            let stale = BootEntry::parse(name).is_some_and(|e| e.slot == slot) || name == TMP_ENTRY;
            if stale {
                let f = linux.join(name);
                std::fs::remove_file(&f).map_err(|e| OsUpdateError::io(&f, e))?;
            }
        }
        sync_dir(&linux);
        let free = free_bytes(esp)?;
        // The entry plus a cluster's worth of directory and FAT growth.
        let need = uki.size + 64 * 1024;
        if free < need {
            return Err(OsUpdateError::EspFull {
                path: esp.to_path_buf(),
                free,
                need,
            });
        }
        let entry = BootEntry::new_trial(generation, slot);
        let pending = Pending {
            trace: trace.to_string(),
            slot,
            generation,
            entry: entry.file_name(),
            version: m.version.clone(),
            build: m.build.clone(),
        };
        let pf = self.pending_path();
        let text = serde_json::to_vec(&pending).map_err(|e| OsUpdateError::io(&pf, e.into()))?;
        if let Some(dir) = pf.parent() {
            std::fs::create_dir_all(dir).map_err(|e| OsUpdateError::io(dir, e))?;
        }
        baetyl_sdk::fs::write_atomic_with(&pf, 0o600, |f| f.write_all(&text))
            .map_err(|e| OsUpdateError::io(&pf, e))?;

        self.log(
            trace,
            "UPDATING",
            &format!(
                "payloads verified; writing the root ({} bytes) to {} (root-{slot})",
                rootfs.size,
                p.root.display()
            ),
            None,
        );
        dev.seek(SeekFrom::Start(0))
            .map_err(|e| OsUpdateError::io(&p.root, e))?;
        let root_path = p.root.clone();
        copy_payload_into(&mut p.file, &p.path, root_at, rootfs, dev, &root_path)?;
        dev.sync_all()
            .map_err(|e| OsUpdateError::io(&root_path, e))?;

        self.log(
            trace,
            "UPDATING",
            &format!(
                "root written and synced; writing the boot entry EFI/Linux/{}",
                entry.file_name()
            ),
            None,
        );
        let tmp = linux.join(TMP_ENTRY);
        let mut f = std::fs::File::create(&tmp).map_err(|e| OsUpdateError::io(&tmp, e))?;
        copy_payload_into(&mut p.file, &p.path, uki_at, uki, &mut f, &tmp)?;
        f.sync_all().map_err(|e| OsUpdateError::io(&tmp, e))?;
        drop(f);
        let final_path = linux.join(entry.file_name());
        std::fs::rename(&tmp, &final_path).map_err(|e| OsUpdateError::io(&final_path, e))?;
        sync_dir(&linux);
        Ok(pending)
    }

    /// After the master started: on a counted boot, bless it once healthy; on a boot that is not counted while an
    /// install is pending, report the install's failure. Nothing on a host that is not a baetyl device.
    pub fn at_start(self: &Arc<Self>) {
        let Ok(slot) = self.dev.booted_slot() else {
            return;
        };
        let pending = self.read_pending();
        match self.counted_entry() {
            Some(entry) if entry.tries_left.is_some() => {
                let trace = pending
                    .as_ref()
                    .filter(|p| p.generation == entry.generation)
                    .map_or_else(
                        || format!("os-{:06}", entry.generation),
                        |p| p.trace.clone(),
                    );
                let after = self.sup.config().update.os.bless_after;
                self.log(
                    &trace,
                    "UPDATING",
                    &format!(
                        "booted slot {slot} on trial ({}); marking it good after {after} of healthy services",
                        entry.file_name()
                    ),
                    None,
                );
                let me = self.clone();
                tokio::spawn(async move { me.bless_when_healthy(entry, trace, after.get()).await });
            }
            _ => {
                self.dev.mark_blessed();
                let Some(p) = pending else { return };
                if p.slot == slot {
                    self.log(
                        &p.trace,
                        "RESTARTED",
                        &format!("slot {slot} runs OS {} build {}", p.version, p.build),
                        None,
                    );
                } else {
                    self.report_fallback(&p, slot);
                }
                self.clear_pending();
            }
        }
    }

    /// The install `p` did not become the running OS: say why, as far as the ESP tells.
    fn report_fallback(&self, p: &Pending, slot: char) {
        let found = self.dev.mount_esp().ok().and_then(|esp| {
            let names = list(&esp.join("EFI/Linux")).ok();
            self.dev.unmount_esp();
            os::entries(names?.iter().map(String::as_str))
                .into_iter()
                .find(|e| e.generation == p.generation && e.slot == p.slot)
        });
        let why = match found {
            Some(e) if !e.bootable() => format!(
                "its boot entry {} used all its {} tries without being marked good",
                e.file_name(),
                os::TRIES
            ),
            Some(e) => format!("the boot loader did not start its entry {}", e.file_name()),
            None => format!(
                "the install did not finish (its boot entry {} was never made: the device lost power or the \
                 master stopped during the install)",
                p.entry
            ),
        };
        self.log(
            &p.trace,
            "ROLLEDBACK",
            &format!("the device booted slot {slot} again"),
            None,
        );
        let msg = format!(
            "OS update {} (OS {} build {}, slot {}) failed: {why}; the device runs slot {slot} again",
            p.trace, p.version, p.build, p.slot
        );
        self.log(&p.trace, "FAILURE", &msg, Some(&why));
        self.sup.set_error(msg);
    }

    /// Waits until every service instance has run `window` without a restart, then blesses `entry`.
    async fn bless_when_healthy(&self, entry: BootEntry, trace: String, window: Duration) {
        // tokio's clock (paused in tests), not std's.
        let mut since: Option<(tokio::time::Instant, Vec<(String, u32)>)> = None;
        loop {
            let names: Vec<String> = self.sup.app().services.keys().cloned().collect();
            let states = self.sup.instance_states(&names);
            let healthy = states.iter().all(|(_, st)| {
                st.status == Status::Running
                    || (st.status == Status::Exited && st.last_exit_success)
            });
            let restarts: Vec<(String, u32)> = states
                .iter()
                .map(|(_, st)| (st.name.clone(), st.restarts))
                .collect();
            since = match since {
                Some((t, r)) if healthy && r == restarts => Some((t, r)),
                _ if healthy => Some((tokio::time::Instant::now(), restarts)),
                _ => None,
            };
            if let Some((t, _)) = &since
                && t.elapsed() >= window
            {
                break;
            }
            tokio::time::sleep(Duration::from_secs(2).min(window.max(Duration::from_millis(100))))
                .await;
        }
        let me_dev = self.dev.clone();
        let blessed = tokio::task::spawn_blocking(move || bless(me_dev.as_ref(), entry)).await;
        match blessed {
            Ok(Ok(name)) => {
                self.blessed
                    .store(true, std::sync::atomic::Ordering::SeqCst);
                self.dev.mark_blessed();
                let p = self
                    .read_pending()
                    .filter(|p| p.generation == entry.generation);
                let what = p
                    .as_ref()
                    .map(|p| format!("OS {} build {}", p.version, p.build))
                    .unwrap_or_else(|| "the OS".into());
                self.log(
                    &trace,
                    "RESTARTED",
                    &format!(
                        "slot {} marked good (boot entry {name}) after {} of healthy services: it runs {what}",
                        entry.slot,
                        humantime::format_duration(window)
                    ),
                    None,
                );
                self.clear_pending();
            }
            Ok(Err(e)) => {
                let msg = format!(
                    "cannot mark slot {} good: {e}; the boot loader falls back after its tries",
                    entry.slot
                );
                self.log(&trace, "FAILURE", &msg, Some(&e.to_string()));
                self.sup.set_error(msg);
            }
            Err(e) => tracing::error!("blessing: {e}"),
        }
    }
}

/// Renames the counted entry to its name without a counter (systemd-bless-boot's "good"). Answers the name.
pub fn bless(dev: &dyn OsDevice, entry: BootEntry) -> Result<String, OsUpdateError> {
    let esp = dev.mount_esp()?;
    let linux = esp.join("EFI/Linux");
    let result = (|| {
        // The counter may have moved since the boot loader reported it: find the entry by generation and slot.
        let names = list(&linux)?;
        let current = names
            .iter()
            .filter_map(|n| BootEntry::parse(n).map(|e| (n, e)))
            .find(|(_, e)| e.generation == entry.generation && e.slot == entry.slot);
        let good = entry.blessed().file_name();
        match current {
            Some((name, _)) if *name == good => Ok(good),
            Some((name, _)) => {
                let to = linux.join(&good);
                std::fs::rename(linux.join(name), &to).map_err(|e| OsUpdateError::io(&to, e))?;
                sync_dir(&linux);
                Ok(good)
            }
            None => Err(OsUpdateError::io(
                &linux.join(entry.file_name()),
                std::io::Error::new(std::io::ErrorKind::NotFound, "the booted entry is gone"),
            )),
        }
    })();
    dev.unmount_esp();
    result
}

fn copy_payload_into(
    f: &mut std::fs::File,
    path: &Path,
    at: u64,
    payload: &os_bundle::Payload,
    out: &mut std::fs::File,
    out_path: &Path,
) -> Result<(), OsUpdateError> {
    let mut w = std::io::BufWriter::with_capacity(1 << 20, out);
    verify::copy_payload(
        f,
        path,
        at,
        payload,
        Some((&mut w, out_path)),
        " (the file changed during the install)",
    )?;
    w.flush().map_err(|e| OsUpdateError::io(out_path, e))
}

/// The file names in `dir`.
fn list(dir: &Path) -> Result<Vec<String>, OsUpdateError> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| OsUpdateError::io(dir, e))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    Ok(names)
}

/// Syncs a directory (its entries' creation, rename and removal); best effort on filesystems that refuse.
fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

fn free_bytes(dir: &Path) -> Result<u64, OsUpdateError> {
    let st = nix::sys::statvfs::statvfs(dir).map_err(|source| OsUpdateError::Sys {
        what: format!("statvfs {}", dir.display()),
        source,
    })?;
    Ok(st.blocks_available() as u64 * st.fragment_size() as u64)
}

#[cfg(test)]
mod tests;
