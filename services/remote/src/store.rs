//! The on-disk buffer of one remote: an append-only log of segment files plus a cursor file.
//!
//! - Segment `<first seq, 20 digits>.seg`: records `[body len u32][crc32 of body u32][body]`, body =
//!   `[seq u64][qos u8][topic len u16][topic][payload]`, little endian. A torn record at the end of a segment
//!   (a crash during a write) fails its length or CRC check and is cut off when the store opens; it was never
//!   acknowledged to the hub, which redelivers it.
//! - `cursor`: `[start u64][dropped u64][crc32 u32]`: the first sequence number still to deliver and the number
//!   of messages dropped over the bound since the buffer was created. It is rewritten in place after every
//!   acknowledgement without an fsync: a crash of the bridge keeps it (page cache), and a stale one after a power
//!   loss only means redelivery (QoS 1 allows duplicates), never loss.
//! - Appends are flushed (`fdatasync`) per batch before the batch is acknowledged to the hub.
//! - The bound (`max_messages`, `max_size`) counts messages not yet acknowledged by the remote; when an append
//!   goes beyond it the oldest are dropped (the start moves past them) and counted.
//! - Segments whose records are all below the start are deleted.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use tokio::sync::Notify;

use crate::error::StoreError;

const HEADER: usize = 8;
const BODY_FIXED: usize = 8 + 1 + 2;
const CURSOR_LEN: usize = 20;
/// Segments roll over at this size, so acknowledged data is given back to the file system in chunks.
const SEGMENT_BYTES: u64 = 4 << 20;

/// One buffered message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub topic: String,
    pub qos: u8,
    pub payload: Vec<u8>,
}

/// The bound on what may wait for a remote.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_messages: u64,
    pub max_bytes: u64,
    pub fsync: bool,
}

/// What a store holds, for stats.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Messages waiting (not yet acknowledged by the remote).
    pub buffered: u64,
    /// Their size on disk.
    pub buffered_bytes: u64,
    /// Messages dropped over the bound since the buffer was created.
    pub dropped: u64,
    /// The sequence number the next appended message gets.
    pub next_seq: u64,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    seq: u64,
    segment: u64,
    offset: u64,
    len: u32,
}

struct Segment {
    file: File,
    size: u64,
}

struct Inner {
    dir: PathBuf,
    limits: Limits,
    segments: BTreeMap<u64, Segment>,
    index: VecDeque<Entry>,
    bytes: u64,
    start: u64,
    next_seq: u64,
    dropped: u64,
    cursor: File,
}

/// A remote's buffer; all methods are blocking file I/O (call appends from a blocking thread).
pub struct Store {
    inner: Mutex<Inner>,
    /// Signalled after every append: the forwarder waits on it when it has sent everything.
    pub appended: Notify,
}

fn segment_name(first: u64) -> String {
    format!("{first:020}.seg")
}

impl Store {
    /// Opens (or creates) the buffer in `dir`, cutting off a torn tail.
    pub fn open(dir: &Path, limits: Limits) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::io(dir, e))?;
        let cursor_path = dir.join("cursor");
        let mut cursor = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&cursor_path)
            .map_err(|e| StoreError::io(&cursor_path, e))?;
        let mut raw = Vec::new();
        cursor
            .read_to_end(&mut raw)
            .map_err(|e| StoreError::io(&cursor_path, e))?;
        let (start, dropped) = parse_cursor(&raw).unwrap_or_else(|| {
            if !raw.is_empty() {
                tracing::warn!(path = %cursor_path.display(), "cursor file is damaged: delivering everything still on disk again");
            }
            (0, 0)
        });

        let mut firsts = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(|e| StoreError::io(dir, e))? {
            let entry = entry.map_err(|e| StoreError::io(dir, e))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if let Some(n) = name.strip_suffix(".seg")
                && let Ok(first) = n.parse::<u64>()
            {
                firsts.push(first);
            }
        }
        firsts.sort_unstable();

        let mut inner = Inner {
            dir: dir.to_path_buf(),
            limits,
            segments: BTreeMap::new(),
            index: VecDeque::new(),
            bytes: 0,
            start,
            next_seq: start,
            dropped,
            cursor,
        };
        for first in firsts {
            inner.load_segment(first)?;
        }
        inner.next_seq = inner.next_seq.max(inner.start);
        if inner.segments.is_empty() {
            inner.new_segment()?;
        }
        let dropped_before = inner.dropped;
        inner.enforce_limits();
        if inner.dropped != dropped_before {
            // The bound was lowered since the last run.
            inner.write_cursor()?;
        }
        inner.gc();
        Ok(Store {
            inner: Mutex::new(inner),
            appended: Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends `records` in order and makes them durable (per `fsync`). Answers how many old messages were
    /// dropped to stay within the bound.
    pub fn append(&self, records: &[Record]) -> Result<u64, StoreError> {
        if records.is_empty() {
            return Ok(0);
        }
        let dropped = {
            let mut inner = self.lock();
            let before = inner.dropped;
            let result = inner.append(records);
            let dropped = inner.dropped - before;
            if dropped > 0 {
                inner.write_cursor()?;
                inner.gc();
            }
            result?;
            dropped
        };
        self.appended.notify_one();
        Ok(dropped)
    }

    /// The first message still to deliver at or after `seq`, with its sequence number.
    pub fn read_from(&self, seq: u64) -> Result<Option<(u64, Record)>, StoreError> {
        let inner = self.lock();
        let Some(first) = inner.index.front() else {
            return Ok(None);
        };
        let seq = seq.max(first.seq);
        let pos = (seq - first.seq) as usize;
        let Some(e) = inner.index.get(pos).copied() else {
            return Ok(None);
        };
        let seg = inner
            .segments
            .get(&e.segment)
            .ok_or_else(|| StoreError::io(inner.dir.join(segment_name(e.segment)), missing()))?;
        let mut buf = vec![0u8; e.len as usize];
        seg.file
            .read_exact_at(&mut buf, e.offset)
            .map_err(|err| StoreError::io(inner.dir.join(segment_name(e.segment)), err))?;
        match decode(&buf) {
            Some((s, rec)) if s == e.seq => Ok(Some((s, rec))),
            _ => Err(StoreError::io(
                inner.dir.join(segment_name(e.segment)),
                std::io::Error::new(std::io::ErrorKind::InvalidData, "record changed on disk"),
            )),
        }
    }

    /// The remote acknowledged everything up to and including `seq`.
    pub fn ack(&self, seq: u64) -> Result<(), StoreError> {
        let mut inner = self.lock();
        if seq < inner.start {
            return Ok(());
        }
        inner.start = seq + 1;
        while let Some(e) = inner.index.front() {
            if e.seq > seq {
                break;
            }
            inner.bytes -= u64::from(e.len);
            inner.index.pop_front();
        }
        inner.write_cursor()?;
        inner.gc();
        Ok(())
    }

    pub fn stats(&self) -> StoreStats {
        let inner = self.lock();
        StoreStats {
            buffered: inner.index.len() as u64,
            buffered_bytes: inner.bytes,
            dropped: inner.dropped,
            next_seq: inner.next_seq,
        }
    }
}

fn missing() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::NotFound, "segment is gone")
}

fn parse_cursor(raw: &[u8]) -> Option<(u64, u64)> {
    if raw.len() < CURSOR_LEN {
        return None;
    }
    let crc = u32::from_le_bytes(raw[16..20].try_into().ok()?);
    if crc32fast::hash(&raw[..16]) != crc {
        return None;
    }
    let start = u64::from_le_bytes(raw[0..8].try_into().ok()?);
    let dropped = u64::from_le_bytes(raw[8..16].try_into().ok()?);
    Some((start, dropped))
}

fn encode(seq: u64, r: &Record) -> Result<Vec<u8>, StoreError> {
    let too_large = || StoreError::TooLarge {
        topic: r.topic.clone(),
        len: r.payload.len(),
    };
    let topic_len = u16::try_from(r.topic.len()).map_err(|_| too_large())?;
    let body_len = BODY_FIXED + r.topic.len() + r.payload.len();
    let body_len32 = u32::try_from(body_len).map_err(|_| too_large())?;
    let mut out = Vec::with_capacity(HEADER + body_len);
    out.extend_from_slice(&body_len32.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&seq.to_le_bytes());
    out.push(r.qos);
    out.extend_from_slice(&topic_len.to_le_bytes());
    out.extend_from_slice(r.topic.as_bytes());
    out.extend_from_slice(&r.payload);
    let crc = crc32fast::hash(&out[HEADER..]);
    out[4..8].copy_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// Decodes one whole record (header included).
fn decode(buf: &[u8]) -> Option<(u64, Record)> {
    if buf.len() < HEADER + BODY_FIXED {
        return None;
    }
    let len = u32::from_le_bytes(buf[0..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(buf[4..8].try_into().ok()?);
    let body = buf.get(HEADER..HEADER + len)?;
    if crc32fast::hash(body) != crc || len < BODY_FIXED {
        return None;
    }
    let seq = u64::from_le_bytes(body[0..8].try_into().ok()?);
    let qos = body[8];
    let tlen = u16::from_le_bytes(body[9..11].try_into().ok()?) as usize;
    let topic = body.get(BODY_FIXED..BODY_FIXED + tlen)?;
    let payload = body.get(BODY_FIXED + tlen..)?;
    Some((
        seq,
        Record {
            topic: String::from_utf8_lossy(topic).into_owned(),
            qos,
            payload: payload.to_vec(),
        },
    ))
}

impl Inner {
    fn seg_path(&self, first: u64) -> PathBuf {
        self.dir.join(segment_name(first))
    }

    /// Reads a segment at open: indexes its records at or after the start, cuts off a torn tail.
    fn load_segment(&mut self, first: u64) -> Result<(), StoreError> {
        let path = self.seg_path(first);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| StoreError::io(&path, e))?;
        let mut reader = BufReader::new(&file);
        let mut offset = 0u64;
        let mut header = [0u8; HEADER];
        let mut last: Option<u64> = None;
        loop {
            match reader.read_exact(&mut header) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                Err(e) => return Err(StoreError::io(&path, e)),
            }
            let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
            if !(BODY_FIXED..=(512 << 20)).contains(&len) {
                break;
            }
            let mut rec = vec![0u8; HEADER + len];
            rec[..HEADER].copy_from_slice(&header);
            if reader.read_exact(&mut rec[HEADER..]).is_err() {
                break;
            }
            let Some((seq, _)) = decode(&rec) else {
                break;
            };
            if last.is_some_and(|prev| seq <= prev) {
                // Sequence numbers only grow; anything else is garbage.
                break;
            }
            last = Some(seq);
            let total = rec.len() as u64;
            if seq >= self.start {
                self.index.push_back(Entry {
                    seq,
                    segment: first,
                    offset,
                    len: total as u32,
                });
                self.bytes += total;
            }
            self.next_seq = self.next_seq.max(seq + 1);
            offset += total;
        }
        let size = file.metadata().map_err(|e| StoreError::io(&path, e))?.len();
        if size != offset {
            tracing::warn!(path = %path.display(), kept = offset, size, "cutting off a torn or damaged tail (never acknowledged)");
            file.set_len(offset).map_err(|e| StoreError::io(&path, e))?;
            file.sync_all().map_err(|e| StoreError::io(&path, e))?;
        }
        self.segments.insert(first, Segment { file, size: offset });
        Ok(())
    }

    fn new_segment(&mut self) -> Result<(), StoreError> {
        let first = self.next_seq;
        let path = self.seg_path(first);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| StoreError::io(&path, e))?;
        if self.limits.fsync {
            File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| StoreError::io(&self.dir, e))?;
        }
        self.segments.insert(first, Segment { file, size: 0 });
        Ok(())
    }

    fn append(&mut self, records: &[Record]) -> Result<(), StoreError> {
        // Encode everything first: a record that cannot be stored must not leave half a batch in the index.
        let encoded = records
            .iter()
            .enumerate()
            .map(|(i, r)| encode(self.next_seq + i as u64, r))
            .collect::<Result<Vec<_>, _>>()?;
        let mut chunk = Vec::new();
        for bytes in encoded {
            let active_size = self
                .segments
                .last_key_value()
                .map(|(_, s)| s.size)
                .ok_or_else(|| StoreError::io(&self.dir, missing()))?;
            if active_size + chunk.len() as u64 >= SEGMENT_BYTES {
                self.flush(&mut chunk)?;
                self.new_segment()?;
            }
            let seq = self.next_seq;
            let (&segment, seg) = self
                .segments
                .last_key_value()
                .ok_or_else(|| StoreError::io(&self.dir, missing()))?;
            let offset = seg.size + chunk.len() as u64;
            chunk.extend_from_slice(&bytes);
            self.index.push_back(Entry {
                seq,
                segment,
                offset,
                len: bytes.len() as u32,
            });
            self.bytes += bytes.len() as u64;
            self.next_seq += 1;
        }
        self.flush(&mut chunk)?;
        self.enforce_limits();
        Ok(())
    }

    /// Writes the pending bytes at the end of the active segment and syncs them.
    fn flush(&mut self, chunk: &mut Vec<u8>) -> Result<(), StoreError> {
        if chunk.is_empty() {
            return Ok(());
        }
        let Some((&first, seg)) = self.segments.iter_mut().next_back() else {
            return Err(StoreError::io(&self.dir, missing()));
        };
        let path = self.dir.join(segment_name(first));
        let result = seg.file.write_all_at(chunk, seg.size).and_then(|()| {
            if self.limits.fsync {
                seg.file.sync_data()
            } else {
                Ok(())
            }
        });
        if let Err(e) = result {
            // Forget what did not make it, so the index matches the file.
            let kept = seg.size;
            while self
                .index
                .back()
                .is_some_and(|e| e.segment == first && e.offset >= kept)
            {
                if let Some(e) = self.index.pop_back() {
                    self.bytes -= u64::from(e.len);
                    self.next_seq = e.seq;
                }
            }
            let _ = seg.file.set_len(kept);
            chunk.clear();
            return Err(StoreError::io(path, e));
        }
        seg.size += chunk.len() as u64;
        chunk.clear();
        let _ = seg.file.flush();
        Ok(())
    }

    fn enforce_limits(&mut self) {
        while self.index.len() as u64 > self.limits.max_messages
            || (self.bytes > self.limits.max_bytes && !self.index.is_empty())
        {
            if let Some(e) = self.index.pop_front() {
                self.bytes -= u64::from(e.len);
                self.start = e.seq + 1;
                self.dropped += 1;
            }
        }
    }

    fn write_cursor(&mut self) -> Result<(), StoreError> {
        let mut raw = [0u8; CURSOR_LEN];
        raw[0..8].copy_from_slice(&self.start.to_le_bytes());
        raw[8..16].copy_from_slice(&self.dropped.to_le_bytes());
        let crc = crc32fast::hash(&raw[..16]);
        raw[16..20].copy_from_slice(&crc.to_le_bytes());
        self.cursor
            .write_all_at(&raw, 0)
            .map_err(|e| StoreError::io(self.dir.join("cursor"), e))
    }

    /// Deletes segments holding only delivered or dropped records (never the active one).
    fn gc(&mut self) {
        let firsts: Vec<u64> = self.segments.keys().copied().collect();
        for pair in firsts.windows(2) {
            let (first, next_first) = (pair[0], pair[1]);
            if next_first <= self.start {
                let path = self.seg_path(first);
                if let Err(e) = std::fs::remove_file(&path) {
                    tracing::warn!(path = %path.display(), "cannot delete a delivered segment: {e}");
                    continue;
                }
                self.segments.remove(&first);
            } else {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(i: usize) -> Record {
        Record {
            topic: format!("t/{i}"),
            qos: 1,
            payload: format!("payload-{i}").into_bytes(),
        }
    }

    fn limits(max_messages: u64) -> Limits {
        Limits {
            max_messages,
            max_bytes: 1 << 30,
            fsync: false,
        }
    }

    #[test]
    fn append_read_ack_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), limits(100)).unwrap();
        s.append(&(0..10).map(rec).collect::<Vec<_>>()).unwrap();
        assert_eq!(s.read_from(0).unwrap().unwrap(), (0, rec(0)));
        assert_eq!(s.read_from(7).unwrap().unwrap(), (7, rec(7)));
        assert!(s.read_from(10).unwrap().is_none());
        s.ack(3).unwrap();
        assert_eq!(s.read_from(0).unwrap().unwrap(), (4, rec(4)));
        assert_eq!(s.stats().buffered, 6);
        drop(s);
        let s = Store::open(dir.path(), limits(100)).unwrap();
        assert_eq!(s.stats().buffered, 6);
        assert_eq!(s.read_from(0).unwrap().unwrap(), (4, rec(4)));
        s.append(&[rec(10)]).unwrap();
        assert_eq!(s.read_from(10).unwrap().unwrap(), (10, rec(10)));
    }

    #[test]
    fn bound_drops_oldest_and_counts_across_restart() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), limits(5)).unwrap();
        let mut dropped = 0;
        for i in 0..8 {
            dropped += s.append(&[rec(i)]).unwrap();
        }
        assert_eq!(dropped, 3);
        let st = s.stats();
        assert_eq!((st.buffered, st.dropped), (5, 3));
        assert_eq!(s.read_from(0).unwrap().unwrap(), (3, rec(3)));
        drop(s);
        let s = Store::open(dir.path(), limits(5)).unwrap();
        assert_eq!(s.stats().dropped, 3);
        assert_eq!(s.read_from(0).unwrap().unwrap(), (3, rec(3)));
    }

    #[test]
    fn size_bound_counts_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(
            dir.path(),
            Limits {
                max_messages: 1000,
                max_bytes: 2048,
                fsync: false,
            },
        )
        .unwrap();
        let big = Record {
            topic: "t".into(),
            qos: 1,
            payload: vec![7; 900],
        };
        for _ in 0..5 {
            s.append(std::slice::from_ref(&big)).unwrap();
        }
        let st = s.stats();
        assert_eq!(st.buffered, 2);
        assert_eq!(st.dropped, 3);
        assert!(st.buffered_bytes <= 2048);
    }

    #[test]
    fn torn_tail_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), limits(100)).unwrap();
        s.append(&(0..3).map(rec).collect::<Vec<_>>()).unwrap();
        drop(s);
        let seg = dir.path().join(segment_name(0));
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        let mut torn = encode(3, &rec(3)).unwrap();
        torn.truncate(torn.len() - 4);
        f.write_all(&torn).unwrap();
        drop(f);
        let s = Store::open(dir.path(), limits(100)).unwrap();
        assert_eq!(s.stats().buffered, 3);
        s.append(&[rec(99)]).unwrap();
        assert_eq!(s.read_from(3).unwrap().unwrap(), (3, rec(99)));
    }

    #[test]
    fn delivered_segments_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), limits(100_000)).unwrap();
        let big = Record {
            topic: "t".into(),
            qos: 0,
            payload: vec![1; 64 * 1024],
        };
        let batch: Vec<Record> = (0..100).map(|_| big.clone()).collect();
        s.append(&batch).unwrap();
        let count = || {
            std::fs::read_dir(dir.path())
                .unwrap()
                .filter(|e| {
                    e.as_ref()
                        .unwrap()
                        .path()
                        .extension()
                        .is_some_and(|x| x == "seg")
                })
                .count()
        };
        assert!(count() >= 2, "{}", count());
        s.ack(99).unwrap();
        assert_eq!(count(), 1);
        assert_eq!(s.stats().buffered, 0);
        drop(s);
        let s = Store::open(dir.path(), limits(100_000)).unwrap();
        assert_eq!(s.stats().next_seq, 100);
        assert!(s.read_from(0).unwrap().is_none());
    }
}
