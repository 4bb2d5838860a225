//! An instance's stdout/stderr file, rotated by size: `x.log` -> `x.log.1` -> ... -> `x.log.N`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::{InstanceSpec, confine};
use crate::config::InstanceLogConfig;
use crate::error::{MasterError, Result};

/// Where the instance logs are, relative to the work dir.
pub const INSTANCE_LOGS: &str = "var/log/baetyl/services";

pub struct RotatingLog {
    path: PathBuf,
    file: File,
    size: u64,
    max_size: u64,
    backups: u32,
    /// Who owns the files (the service's user), when not the master.
    owner: Option<(u32, u32)>,
}

impl RotatingLog {
    pub fn open(path: &Path, max_size: u64, backups: u32) -> std::io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = open_append(path)?;
        let size = file.metadata()?.len();
        Ok(RotatingLog {
            path: path.to_path_buf(),
            file,
            size,
            max_size,
            backups,
            owner: None,
        })
    }

    /// The log of an instance: `var/log/baetyl/services/<service>/<instance>.log` in the work dir, owned by
    /// the instance's user and readable by the agent's group (its own without an agent), rotated as conf.yml
    /// `instance_log` says.
    pub fn of_instance(
        workdir: &Path,
        spec: &InstanceSpec,
        cfg: &InstanceLogConfig,
    ) -> Result<Arc<Mutex<RotatingLog>>> {
        let dir = workdir.join(INSTANCE_LOGS).join(&spec.service);
        let dir = confine::ensure_dir_inside(&dir, &[workdir.to_path_buf()])
            .map_err(|p| p.into_error(spec))?;
        let path = dir.join(format!("{}.log", spec.instance));
        let log = RotatingLog::open(&path, cfg.max_size.0, cfg.backups)
            .and_then(|log| match &spec.user {
                Some(u) => log.owned_by(u.uid, u.log_gid),
                None => Ok(log),
            })
            .map_err(|e| MasterError::io(&path, e))?;
        Ok(Arc::new(Mutex::new(log)))
    }

    /// Gives the log's files to `uid:gid` (mode 0640: the service whose output it is, the group that may
    /// read it), now and after each rotation.
    pub fn owned_by(mut self, uid: u32, gid: u32) -> std::io::Result<Self> {
        self.owner = Some((uid, gid));
        self.chown()?;
        Ok(self)
    }

    fn chown(&self) -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        if let Some((uid, gid)) = self.owner {
            std::os::unix::fs::fchown(&self.file, Some(uid), Some(gid))?;
            // A file from before (another mode, another reader) gets this one's.
            self.file
                .set_permissions(std::fs::Permissions::from_mode(0o640))?;
        }
        Ok(())
    }

    pub fn write_all(&mut self, data: &[u8]) -> std::io::Result<()> {
        if self.size > 0 && self.size + data.len() as u64 > self.max_size {
            self.rotate()?;
        }
        self.file.write_all(data)?;
        self.size += data.len() as u64;
        Ok(())
    }

    /// Flushes what was written to disk.
    pub fn sync(&self) -> std::io::Result<()> {
        self.file.sync_data()
    }

    /// The files of the log at `path` that exist, oldest first: the backups `.N` ... `.1`, then `path`.
    pub fn files_oldest_first(path: &Path) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = (1..)
            .map(|n| numbered(path, n))
            .take_while(|p| p.exists())
            .collect();
        files.reverse();
        files.push(path.to_path_buf());
        files
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        let numbered = |n: u32| numbered(&self.path, n);
        if self.backups == 0 {
            self.file.set_len(0)?;
            self.size = 0;
            return Ok(());
        }
        for n in (1..self.backups).rev() {
            let from = numbered(n);
            if from.exists() {
                std::fs::rename(&from, numbered(n + 1))?;
            }
        }
        std::fs::rename(&self.path, numbered(1))?;
        self.file = open_append(&self.path)?;
        self.chown()?;
        self.size = 0;
        Ok(())
    }
}

/// An instance's log shared by the copiers of its stdout and stderr; a failure to write is said once per run
/// of failures (a full disk fails every write), not at every chunk.
pub struct LogSink {
    log: Arc<Mutex<RotatingLog>>,
    failing: bool,
}

impl LogSink {
    pub fn new(log: Arc<Mutex<RotatingLog>>) -> Self {
        LogSink {
            log,
            failing: false,
        }
    }

    pub fn write(&mut self, data: &[u8]) {
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        match log.write_all(data) {
            Err(e) if !self.failing => {
                self.failing = true;
                tracing::warn!("cannot write instance log ({e}); its output is lost until it can");
            }
            Err(_) => {}
            Ok(()) => self.failing = false,
        }
    }
}

fn numbered(path: &Path, n: u32) -> PathBuf {
    PathBuf::from(format!("{}.{n}", path.display()))
}

/// Opens a log for appending, creating it 0640; a symlink in its place is refused, never followed (whoever
/// can write the directory must not make the master append to another file).
fn open_append(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_and_keeps_backups() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.log");
        let mut log = RotatingLog::open(&p, 10, 2).unwrap();
        for chunk in ["aaaaaaaa\n", "bbbbbbbb\n", "cccccccc\n", "dddddddd\n"] {
            log.write_all(chunk.as_bytes()).unwrap();
        }
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "dddddddd\n");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("a.log.1")).unwrap(),
            "cccccccc\n"
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("a.log.2")).unwrap(),
            "bbbbbbbb\n"
        );
        assert!(!dir.path().join("a.log.3").exists());
    }

    #[test]
    fn reopening_appends_and_counts_existing_size() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("b.log");
        RotatingLog::open(&p, 100, 1)
            .unwrap()
            .write_all(b"first\n")
            .unwrap();
        let mut log = RotatingLog::open(&p, 10, 1).unwrap();
        log.write_all(b"second\n").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "second\n");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("b.log.1")).unwrap(),
            "first\n"
        );
    }
}
