//! A log file rotated as Baetyl v1's `logger:` rotated it: by size (`size.max`, MiB), keeping `backup.max`
//! older files (`x.log.1` newest ... `x.log.N`), and dropping backups older than `age.max` days.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// When to rotate and what to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    /// Rotate when the file would grow past this many bytes.
    pub max_size: u64,
    /// How many rotated files to keep.
    pub backups: u32,
    /// Rotated files older than this are removed at the next rotation.
    pub max_age: Duration,
}

pub struct RotatingFile {
    path: PathBuf,
    file: File,
    size: u64,
    rotation: Rotation,
}

impl RotatingFile {
    /// Opens `path` for appending (creating its directory), counting what it already holds.
    pub fn open(path: &Path, rotation: Rotation) -> std::io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(RotatingFile {
            path: path.to_path_buf(),
            file,
            size,
            rotation,
        })
    }

    fn numbered(&self, n: u32) -> PathBuf {
        PathBuf::from(format!("{}.{n}", self.path.display()))
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        if self.rotation.backups == 0 {
            self.file.set_len(0)?;
            self.size = 0;
            return Ok(());
        }
        for n in (1..self.rotation.backups).rev() {
            let from = self.numbered(n);
            if from.exists() {
                std::fs::rename(&from, self.numbered(n + 1))?;
            }
        }
        std::fs::rename(&self.path, self.numbered(1))?;
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.size = 0;
        let now = SystemTime::now();
        for n in 1..=self.rotation.backups {
            let p = self.numbered(n);
            let old = std::fs::metadata(&p)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| now.duration_since(t).ok())
                .is_some_and(|age| age > self.rotation.max_age);
            if old {
                let _ = std::fs::remove_file(&p);
            }
        }
        Ok(())
    }
}

impl Write for RotatingFile {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.size > 0 && self.size + data.len() as u64 > self.rotation.max_size {
            self.rotate()?;
        }
        self.file.write_all(data)?;
        self.size += data.len() as u64;
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_logger_section_parses_with_its_defaults() {
        use crate::logging::{LogFormat, LoggerConfig};
        let c: LoggerConfig = crate::config::parse_yaml(
            "path: var/log/baetyl/service.log\nlevel: debug\nformat: text\nage: {max: 3}\nsize: {max: 2}\nbackup: {max: 4}\n",
            Path::new("service.yml"),
        )
        .unwrap();
        assert_eq!(c.format, LogFormat::Human);
        assert_eq!(
            c.rotation(),
            Rotation {
                max_size: 2 << 20,
                backups: 4,
                max_age: Duration::from_secs(3 * 86_400)
            }
        );
        let d = LoggerConfig::default().rotation();
        assert_eq!((d.max_size, d.backups), (50 << 20, 15));
        let e = crate::config::parse_yaml::<LoggerConfig>("size: 5\n", Path::new("s.yml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("key `size`"), "{e}");
    }

    #[test]
    fn rotates_by_size_keeps_backups_and_drops_old_ones() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.log");
        let rotation = Rotation {
            max_size: 10,
            backups: 2,
            max_age: Duration::from_secs(3600),
        };
        let mut f = RotatingFile::open(&p, rotation).unwrap();
        for chunk in ["aaaaaaaa\n", "bbbbbbbb\n", "cccccccc\n", "dddddddd\n"] {
            f.write_all(chunk.as_bytes()).unwrap();
        }
        let read = |n: &str| std::fs::read_to_string(dir.path().join(n)).unwrap();
        assert_eq!(read("m.log"), "dddddddd\n");
        assert_eq!(read("m.log.1"), "cccccccc\n");
        assert_eq!(read("m.log.2"), "bbbbbbbb\n");
        assert!(!dir.path().join("m.log.3").exists());

        let mut f = RotatingFile::open(
            &p,
            Rotation {
                max_age: Duration::ZERO,
                ..rotation
            },
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(20));
        f.write_all(b"eeeeeeee\n").unwrap();
        assert_eq!(read("m.log"), "eeeeeeee\n");
        assert!(
            !dir.path().join("m.log.1").exists() && !dir.path().join("m.log.2").exists(),
            "backups older than age.max are removed"
        );
    }
}
