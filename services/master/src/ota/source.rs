//! Where an update's application comes from, read once: a regular file under the work dir, no bigger than
//! `update.max_size`. What is read here is what is validated and what is installed.
//!
//! The checks, in order: no `..` and nothing outside the work dir (an absolute path must lie in it); a
//! directory stands for its `application.yml`; the directories on the way must resolve inside the work dir
//! (no symlinked escape: the directory is opened once and checked through its descriptor, and the
//! file opened in it); the file itself is opened with `O_NOFOLLOW` (a symlink is refused) and
//! `O_NONBLOCK` (a FIFO cannot block the master), and fstat after the open must say a regular file of the
//! size allowed (not a FIFO, a device or a directory, the very file that was looked at). Reading stops at
//! the limit, whatever the file claims.
//!
//! An agent's update must come from its own staging area: with `within` given, the file's real directory must
//! also lie inside one of those directories (the read-write volumes of the agent's service), so an agent,
//! a service like any other, cannot make the master read a file of another service or of the master.
//!
//! Errors about what the file *contains* ([`redact`]) name the file, the line, the column and the key, and
//! never quote a value: a path that is not an application (a key, a token) must not leak through the OTA log
//! or inspect.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use baetyl_sdk::ConfigError;
use baetyl_sdk::config::ByteSize;

use crate::error::{MasterError, Result};

/// Reads the update source `path` (relative to `workdir`, or absolute inside it, and inside one of `within`
/// when that is not empty): its path and its bytes.
pub fn read_source(
    workdir: &Path,
    path: &str,
    max: ByteSize,
    within: &[PathBuf],
) -> Result<(PathBuf, Vec<u8>)> {
    let limit = Limit {
        key: "update.max_size",
        max,
    };
    let source = open_source(workdir, path, limit, Some("application.yml"), within)?;
    let mut bytes = Vec::with_capacity(source.len as usize);
    let path = source.path.clone();
    source.read_to(&mut bytes)?;
    Ok((path, bytes))
}

/// The size an update source may have, and the conf.yml key that sets it (named in the error).
#[derive(Debug, Clone, Copy)]
pub struct Limit {
    pub key: &'static str,
    pub max: ByteSize,
}

/// An update source, opened and checked: read it once, through [`Source::read_to`].
#[derive(Debug)]
pub struct Source {
    /// Where it is (for messages).
    pub path: PathBuf,
    /// Its size when it was opened.
    pub len: u64,
    file: std::fs::File,
    limit: Limit,
}

impl Source {
    /// The opened file itself, for a reader that seeks (an OS update bundle): the limit was checked on the
    /// opened file's size; the reader must check lengths itself.
    pub fn into_file(self) -> std::fs::File {
        self.file
    }

    /// Copies the file into `out`, stopping with an error at the limit, whatever the file claims.
    pub fn read_to(self, out: &mut impl std::io::Write) -> Result<u64> {
        let copied = std::io::copy(&mut self.file.take(self.limit.max.0 + 1), out)
            .map_err(|e| source_error(&self.path, e))?;
        if copied > self.limit.max.0 {
            return Err(too_large(&self.path, copied, self.limit));
        }
        Ok(copied)
    }
}

/// Opens the update source `path` (relative to `workdir`, or absolute inside it) with every check of this
/// module; a directory stands for its `dir_file` when one is given. With `within` not empty, the file must
/// also lie in one of those directories (resolved: no symlinked way out of them either).
pub fn open_source(
    workdir: &Path,
    path: &str,
    limit: Limit,
    dir_file: Option<&str>,
    within: &[PathBuf],
) -> Result<Source> {
    let outside = || MasterError::UpdateSourceOutside {
        path: path.to_string(),
        workdir: workdir.to_path_buf(),
    };
    let given = Path::new(path);
    if given.components().any(|c| c == Component::ParentDir) {
        return Err(outside());
    }
    let full = workdir.join(given);
    if !full.starts_with(workdir) {
        return Err(outside());
    }
    let file = match (std::fs::symlink_metadata(&full), dir_file) {
        (Ok(md), Some(name)) if md.is_dir() => full.join(name),
        _ => full,
    };
    let parent = file.parent().ok_or_else(outside)?;
    let name = file.file_name().ok_or_else(outside)?;
    let real_workdir = workdir
        .canonicalize()
        .map_err(|e| MasterError::io(workdir, e))?;
    // The directory is opened once and what follows goes through its descriptor: the place checked is
    // the place the file is opened in, whatever is renamed or symlinked on the way meanwhile.
    let dir = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(parent)
        .map_err(|e| source_error(parent, e))?;
    let dir_path = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
    let real_parent = std::fs::read_link(&dir_path).map_err(|e| source_error(parent, e))?;
    if !real_parent.starts_with(&real_workdir) {
        return Err(outside());
    }
    if !within.is_empty()
        && !within
            .iter()
            .filter_map(|d| d.canonicalize().ok())
            .any(|d| real_parent.starts_with(d))
    {
        return Err(MasterError::UpdateSourceNotStaged {
            path: path.to_string(),
            allowed: within.to_vec(),
        });
    }
    let at = dir_path.join(name);
    let looked = std::fs::symlink_metadata(&at).map_err(|e| source_error(&file, e))?;
    check_kind(&file, &looked, limit)?;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(&at)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => MasterError::UpdateSourceSymlink { path: file.clone() },
            _ => source_error(&file, e),
        })?;
    let opened = f.metadata().map_err(|e| source_error(&file, e))?;
    check_kind(&file, &opened, limit)?;
    if (opened.dev(), opened.ino()) != (looked.dev(), looked.ino()) {
        return Err(source_error(
            &file,
            std::io::Error::other("the file was replaced while it was opened; retry the update"),
        ));
    }
    Ok(Source {
        path: file,
        len: opened.len(),
        file: f,
        limit,
    })
}

fn check_kind(file: &Path, md: &std::fs::Metadata, limit: Limit) -> Result<()> {
    let t = md.file_type();
    let kind = if t.is_file() {
        return if md.len() > limit.max.0 {
            Err(too_large(file, md.len(), limit))
        } else {
            Ok(())
        };
    } else if t.is_symlink() {
        return Err(MasterError::UpdateSourceSymlink {
            path: file.to_path_buf(),
        });
    } else if t.is_dir() {
        "directory"
    } else if t.is_fifo() {
        "FIFO"
    } else if t.is_char_device() {
        "character device"
    } else if t.is_block_device() {
        "block device"
    } else if t.is_socket() {
        "socket"
    } else {
        "special file"
    };
    Err(MasterError::UpdateSourceNotRegular {
        path: file.to_path_buf(),
        kind,
    })
}

fn source_error(path: &Path, source: std::io::Error) -> MasterError {
    MasterError::UpdateSource {
        path: path.to_path_buf(),
        source,
    }
}

fn too_large(file: &Path, size: u64, limit: Limit) -> MasterError {
    MasterError::UpdateSourceTooLarge {
        path: file.to_path_buf(),
        size,
        key: limit.key,
        max: limit.max.to_string(),
    }
}

/// The longest key name an error repeats.
const MAX_NAME: usize = 64;

/// An error about an update source's content without any of its values: location, key path and what the
/// schema expected are kept; quoted values (and the offending value of an unknown variant or an invalid
/// value) become `…`. Names of unknown or missing keys are kept: the key is what the reader must fix.
pub fn redact(e: ConfigError) -> ConfigError {
    match e {
        ConfigError::Schema {
            file,
            key,
            location,
            message,
        } => ConfigError::Schema {
            file,
            key: shorten(&key, 2 * MAX_NAME),
            location,
            message: redact_message(&message),
        },
        // `Invalid` comes from checks that run only on a file that parsed as an application; `Read` has none.
        other => other,
    }
}

fn redact_message(message: &str) -> String {
    let (head, tail) = match message.find("expected") {
        Some(i) => message.split_at(i),
        None => (message, ""),
    };
    let names_a_key = ["unknown field", "missing field", "duplicate field"]
        .iter()
        .any(|p| head.starts_with(p));
    format!(
        "{}{}",
        redact_spans(head, names_a_key),
        redact_spans(tail, true)
    )
}

/// Replaces each `"…"` span (escapes honoured) with `"…"`, and each backquoted span with `` `…` `` unless
/// `keep_backquoted` (then it is kept, shortened).
fn redact_spans(s: &str, keep_backquoted: bool) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            chars.next();
                        }
                        '"' => break,
                        _ => {}
                    }
                }
                out.push_str("\"…\"");
            }
            '`' => {
                let span: String = chars.by_ref().take_while(|&c| c != '`').collect();
                if keep_backquoted {
                    out.push('`');
                    out.push_str(&shorten(&span, MAX_NAME));
                    out.push('`');
                } else {
                    out.push_str("`…`");
                }
            }
            c => out.push(c),
        }
    }
    out
}

fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut short: String = s.chars().take(max).collect();
    short.push('…');
    short
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_go_keys_and_expectations_stay() {
        let cases = [
            (
                r#"invalid type: string "0f1e\"2d", expected struct Application"#,
                r#"invalid type: string "…", expected struct Application"#,
            ),
            (
                "unknown variant `hunter2`, expected one of `always`, `on-failure`, `no`",
                "unknown variant `…`, expected one of `always`, `on-failure`, `no`",
            ),
            (
                "unknown field `replicas`, expected one of `image`, `replica`",
                "unknown field `replicas`, expected one of `image`, `replica`",
            ),
            (
                "invalid value: integer `-5`, expected u32",
                "invalid value: integer `…`, expected u32",
            ),
            (
                "volume `a:b:c` is not \"source:target\"",
                "volume `…` is not \"…\"",
            ),
            ("unterminated \"secret", "unterminated \"…\""),
        ];
        for (given, want) in cases {
            assert_eq!(redact_message(given), want, "{given}");
        }
        let long = format!("unknown field `{}`, expected x", "k".repeat(200));
        assert!(redact_message(&long).len() < 100);
    }
}
