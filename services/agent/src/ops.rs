//! Operations without a shell, asked by an operator through the cloud: inspect, a service's log (tail and
//! follow), restart a service, reboot, power off. Each answers one [`Up::Result`], or for logs a stream of
//! [`Up::LogData`] closed by [`Up::LogEnd`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

use crate::master::{Master, SystemAction};
use crate::proto::{Op, Up, valid_name};

/// The most log text read for a tail.
const MAX_TAIL_BYTES: u64 = 1 << 20;
/// The most lines a tail may ask for.
pub const MAX_TAIL_LINES: usize = 10_000;
/// Log text per message: small enough for any relay between cloud processes after JSON escaping.
pub const LOG_CHUNK: usize = 1500;

pub struct Ops {
    pub master: Arc<dyn Master>,
    /// The master's work dir (where instance logs are).
    pub workdir: PathBuf,
}

impl Ops {
    /// Runs one operation to its end (a log follow ends when `cancel` turns true or `out` closes).
    pub async fn run(
        &self,
        id: String,
        op: Op,
        out: mpsc::Sender<Up>,
        mut cancel: watch::Receiver<bool>,
    ) {
        let result = match op {
            Op::Inspect => self.master.inspect().await.map_err(|e| e.to_string()),
            Op::Restart { service } => {
                if !valid_name(&service) {
                    Err(format!("`{service}` is not a service name"))
                } else {
                    self.master
                        .restart(&service)
                        .await
                        .map(|()| json!({"restarted": service}))
                        .map_err(|e| e.to_string())
                }
            }
            Op::Reboot => self
                .master
                .system(SystemAction::Reboot)
                .await
                .map(|()| json!({"rebooting": true}))
                .map_err(|e| e.to_string()),
            Op::Poweroff => self
                .master
                .system(SystemAction::Poweroff)
                .await
                .map(|()| json!({"powering_off": true}))
                .map_err(|e| e.to_string()),
            Op::Logs {
                service,
                instance,
                tail,
                follow,
            } => {
                let error = self
                    .logs(
                        &id,
                        &service,
                        instance.as_deref(),
                        tail,
                        follow,
                        &out,
                        &mut cancel,
                    )
                    .await
                    .err();
                let _ = out.send(Up::LogEnd { id, error }).await;
                return;
            }
        };
        let msg = match result {
            Ok(body) => Up::Result {
                id,
                ok: true,
                body,
                error: None,
            },
            Err(e) => Up::Result {
                id,
                ok: false,
                body: Value::Null,
                error: Some(e),
            },
        };
        let _ = out.send(msg).await;
    }

    fn log_path(&self, service: &str, instance: Option<&str>) -> Result<PathBuf, String> {
        let instance = instance.unwrap_or(service);
        if !valid_name(service) || !valid_name(instance) {
            return Err(format!(
                "`{service}`/`{instance}` is not a service/instance name"
            ));
        }
        Ok(self
            .workdir
            .join("var/log/baetyl/services")
            .join(service)
            .join(format!("{instance}.log")))
    }

    #[allow(clippy::too_many_arguments)]
    async fn logs(
        &self,
        id: &str,
        service: &str,
        instance: Option<&str>,
        tail: usize,
        follow: bool,
        out: &mpsc::Sender<Up>,
        cancel: &mut watch::Receiver<bool>,
    ) -> Result<(), String> {
        let path = self.log_path(service, instance)?;
        let meta = std::fs::metadata(&path).map_err(|e| {
            format!(
                "no log for {service}/{} ({e}); is the service part of the application?",
                instance.unwrap_or(service)
            )
        })?;
        let (text, mut offset) =
            tail_lines(&path, meta.len(), tail.min(MAX_TAIL_LINES)).map_err(|e| e.to_string())?;
        send_chunks(id, &text, out).await?;
        if !follow {
            return Ok(());
        }
        let mut ino = inode(&path);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                _ = cancel.changed() => return Ok(()),
                _ = out.closed() => return Ok(()),
            }
            if *cancel.borrow() {
                return Ok(());
            }
            let now_ino = inode(&path);
            let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            if now_ino != ino || len < offset {
                // Rotated or truncated: read the new file from its start.
                ino = now_ino;
                offset = 0;
            }
            if len > offset {
                let chunk = read_from(&path, offset, (len - offset).min(MAX_TAIL_BYTES))
                    .map_err(|e| e.to_string())?;
                offset += chunk.len() as u64;
                send_chunks(id, &String::from_utf8_lossy(&chunk), out).await?;
            }
        }
    }
}

fn inode(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).map(|m| m.ino()).unwrap_or(0)
}

fn read_from(path: &Path, offset: u64, len: u64) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path)?;
    f.seek(SeekFrom::Start(offset))?;
    let mut buf = Vec::new();
    f.take(len).read_to_end(&mut buf)?;
    Ok(buf)
}

/// The last `lines` lines of the file (from at most its last MiB), and the offset where it ends.
fn tail_lines(path: &Path, len: u64, lines: usize) -> std::io::Result<(String, u64)> {
    let start = len.saturating_sub(MAX_TAIL_BYTES);
    let bytes = read_from(path, start, len - start)?;
    let end = start + bytes.len() as u64;
    let text = String::from_utf8_lossy(&bytes);
    if lines == 0 {
        return Ok((String::new(), end));
    }
    let body = text.strip_suffix('\n').unwrap_or(&text);
    let from = body
        .rmatch_indices('\n')
        .nth(lines - 1)
        .map(|(i, _)| i + 1)
        .unwrap_or(0);
    let mut out = body[from..].to_string();
    if !out.is_empty() {
        out.push('\n');
    }
    Ok((out, end))
}

/// Sends `text` in pieces of at most [`LOG_CHUNK`] bytes, cut at character boundaries; control characters
/// other than newline and tab become `?` (a log is shown to people and relayed as JSON).
async fn send_chunks(id: &str, text: &str, out: &mpsc::Sender<Up>) -> Result<(), String> {
    let clean: String = text
        .chars()
        .map(|c| {
            if c.is_control() && c != '\n' && c != '\t' {
                '?'
            } else {
                c
            }
        })
        .collect();
    let mut rest = clean.as_str();
    while !rest.is_empty() {
        let mut cut = rest.len().min(LOG_CHUNK);
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        let (piece, tail) = rest.split_at(cut);
        out.send(Up::LogData {
            id: id.to_string(),
            data: piece.to_string(),
        })
        .await
        .map_err(|_| "the link closed".to_string())?;
        rest = tail;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tails_take_the_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.log");
        std::fs::write(&p, "a\nb\nc\nd\n").unwrap();
        let len = std::fs::metadata(&p).unwrap().len();
        assert_eq!(tail_lines(&p, len, 2).unwrap(), ("c\nd\n".to_string(), len));
        assert_eq!(tail_lines(&p, len, 10).unwrap().0, "a\nb\nc\nd\n");
        assert_eq!(tail_lines(&p, len, 0).unwrap().0, "");
        std::fs::write(&p, "no newline").unwrap();
        assert_eq!(tail_lines(&p, 10, 1).unwrap().0, "no newline\n");
    }

    #[tokio::test]
    async fn chunks_are_bounded_and_cleaned() {
        let (tx, mut rx) = mpsc::channel(100);
        let text = format!("{}\u{1b}[31mred\n", "é".repeat(2000));
        send_chunks("1", &text, &tx).await.unwrap();
        drop(tx);
        let mut all = String::new();
        while let Some(Up::LogData { data, .. }) = rx.recv().await {
            assert!(data.len() <= LOG_CHUNK);
            all.push_str(&data);
        }
        assert_eq!(all, format!("{}?[31mred\n", "é".repeat(2000)));
    }
}
