//! Where retained messages and persistent sessions live, and what happens when the disk cannot hold them.
//!
//! At start the storage directory is probed (created, a small file written and synced). When that fails (a full
//! or read-only disk, a missing mount) or the stores cannot open, the hub starts anyway with its stores in
//! memory: clients are served, nothing survives a restart. While it runs, the free space of the storage
//! file system is watched; under [`MIN_FREE`] persistence counts as degraded. Each change is logged, counted
//! and published, with the hub's counters, on `$SYS/brokers/<node>/baetyl/hub` (every
//! [`DEGRADED_INTERVAL`] while degraded, every [`REPORT_INTERVAL`] otherwise).

use std::ffi::CString;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::task::JoinHandle;

/// Free space under which persistence counts as degraded: a store write may fail any moment.
pub const MIN_FREE: u64 = 1 << 20;
/// How often the storage's free space is checked.
const CHECK_INTERVAL: Duration = Duration::from_secs(5);
/// How often the hub's statistics go to `$SYS` while persistence is degraded.
pub const DEGRADED_INTERVAL: Duration = CHECK_INTERVAL;
/// How often they go to `$SYS` otherwise.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(60);

/// Creates the stores' directories under `dir` and checks that a file can be written and synced there.
pub fn probe(dir: &Path) -> std::io::Result<()> {
    for sub in ["session", "retain"] {
        std::fs::create_dir_all(dir.join(sub))?;
    }
    let path = dir.join(".baetyl-write-probe");
    let result = (|| {
        let mut f = std::fs::File::create(&path)?;
        f.write_all(&[0u8; 4096])?;
        f.sync_all()
    })();
    let _ = std::fs::remove_file(&path);
    result
}

/// Free bytes for an unprivileged writer on the file system holding `dir`.
pub fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    let c = CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: an all-zero statvfs is a valid value for statvfs to overwrite.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `st` a writable statvfs, both alive for the call.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // The field types are u64 on 64-bit Linux, narrower on 32-bit targets.
    #[allow(clippy::useless_conversion)]
    let free = u64::from(st.f_bavail).saturating_mul(u64::from(st.f_frsize));
    Ok(free)
}

/// The state of persistence, shared by the monitor, the statistics and `$SYS`.
#[derive(Debug)]
pub struct Persistence {
    dir: PathBuf,
    /// False when the stores run in memory (the disk failed at start).
    on_disk: bool,
    degraded: AtomicBool,
    /// Times persistence went from healthy to degraded (including at start).
    events: AtomicU64,
    free: AtomicU64,
    reason: Mutex<String>,
}

impl Persistence {
    pub fn new(dir: &Path, on_disk: bool, reason: Option<String>) -> Self {
        let p = Persistence {
            dir: dir.to_path_buf(),
            on_disk,
            degraded: AtomicBool::new(false),
            events: AtomicU64::new(0),
            free: AtomicU64::new(0),
            reason: Mutex::new(String::new()),
        };
        match reason {
            Some(r) if !on_disk => p.set(true, format!("stores in memory: {r}")),
            _ => p.check(),
        };
        p
    }

    /// Records a new state; returns whether it changed.
    fn set(&self, degraded: bool, reason: String) -> bool {
        let was = self.degraded.swap(degraded, Ordering::Relaxed);
        if degraded && !was {
            self.events.fetch_add(1, Ordering::Relaxed);
            tracing::error!(dir = %self.dir.display(), "persistence degraded: {reason}");
        } else if was && !degraded {
            tracing::info!(dir = %self.dir.display(), "persistence healthy again: {reason}");
        }
        *self.reason.lock().unwrap_or_else(|p| p.into_inner()) = reason;
        was != degraded
    }

    /// Checks the free space; returns whether the state changed.
    pub fn check(&self) -> bool {
        if !self.on_disk {
            return false;
        }
        match free_bytes(&self.dir) {
            Ok(free) => {
                self.free.store(free, Ordering::Relaxed);
                if free < MIN_FREE {
                    self.set(
                        true,
                        format!("{free} bytes free on the storage file system"),
                    )
                } else {
                    self.set(false, format!("{free} bytes free"))
                }
            }
            Err(e) => self.set(true, format!("cannot read the storage file system: {e}")),
        }
    }

    pub fn is_degraded(&self) -> bool {
        self.degraded.load(Ordering::Relaxed)
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "mode": if self.on_disk { "disk" } else { "memory" },
            "degraded": self.is_degraded(),
            "degraded_events": self.events.load(Ordering::Relaxed),
            "free_bytes": self.free.load(Ordering::Relaxed),
            "reason": *self.reason.lock().unwrap_or_else(|p| p.into_inner()),
        })
    }
}

/// Watches the storage and calls `report` when persistence changes state, on every check while it is
/// degraded, and every [`REPORT_INTERVAL`] otherwise.
pub fn monitor<F, Fut>(p: std::sync::Arc<Persistence>, report: F) -> JoinHandle<()>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        let mut since_report = REPORT_INTERVAL;
        loop {
            let changed = p.check();
            if changed || p.is_degraded() || since_report >= REPORT_INTERVAL {
                report().await;
                since_report = Duration::ZERO;
            }
            tokio::time::sleep(CHECK_INTERVAL).await;
            since_report += CHECK_INTERVAL;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_and_free_space() {
        let d = tempfile::tempdir().unwrap();
        probe(&d.path().join("data")).unwrap();
        assert!(d.path().join("data/session").is_dir());
        assert!(free_bytes(d.path()).unwrap() > 0);
        // A file where the directory should be: the probe fails, the hub would run in memory.
        let f = d.path().join("file");
        std::fs::write(&f, "x").unwrap();
        assert!(probe(&f).is_err());
        let p = Persistence::new(&f, false, Some("probe failed".into()));
        assert!(p.is_degraded());
        assert_eq!(p.to_json()["mode"], "memory");
        let ok = Persistence::new(d.path(), true, None);
        assert!(!ok.is_degraded(), "{}", ok.to_json());
    }
}
