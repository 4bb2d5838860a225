//! The on-disk buffer of one remote: an append-only log of segment files plus a cursor file.
//!
//! - Segment `<first seq, 20 digits>.<salt, 8 hex digits>.seg` (or `<first seq>.seg`, written before salts):
//!   frames `[body len u32][checksum u32][body]`, body = `[seq u64][qos u8][topic len u16][topic][payload]`,
//!   little endian; the checksum is CRC-32 of the body started from the salt ([`scan`]).
//! - `cursor`: `[start u64][dropped u64][corrupt u64][crc32 u32]`: the first sequence number still to deliver,
//!   the messages dropped over the bound and those lost to damage since the buffer was created. It is rewritten
//!   in place after every acknowledgement without an fsync: a crash of the bridge keeps it (page cache), and a
//!   stale one after a power loss only means redelivery (QoS 1 allows duplicates), never loss.
//! - Appends are flushed (`fdatasync`) per batch before the batch is acknowledged to the hub.
//! - The bound (`max_messages`, `max_size`) counts messages not yet acknowledged by the remote; when an append
//!   goes beyond it the oldest are dropped (the start moves past them) and counted.
//! - Segments whose records are all below the start are deleted.
//!
//! Damage (a flipped byte, a bad sector) costs only the records it hit. At open every segment is read whole;
//! after a bad frame the reader resynchronises on the next good one, so intact records after the damage stay
//! (in the last segment as in the others). Sequence numbers are consecutive, so what is missing between good
//! records is known exactly: it is counted as `corrupt` when the start moves past it, never acknowledged as
//! delivered. Only the end of the *last* segment is cut off when no good frame follows the damage: that is
//! where a crash leaves a half-written batch, which the hub still holds (it was never acknowledged). Whole
//! frames in such a tail (by their length fields) were complete records and are counted as corrupt; a part of
//! a frame is a torn write and is not. A record that goes bad on disk after the open is found when it is read
//! for sending; it is skipped and counted the same way.

mod scan;

use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use tokio::sync::Notify;

use crate::error::StoreError;

const CURSOR_LEN: usize = 28;
/// The cursor written before `corrupt` was counted: `[start][dropped][crc32]`.
const OLD_CURSOR_LEN: usize = 20;
/// Segments roll over at this size, so acknowledged data is given back to the file system in chunks.
pub const SEGMENT_BYTES: u64 = 4 << 20;

/// One buffered message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub topic: String,
    pub qos: u8,
    pub payload: Vec<u8>,
}

/// The bound on what may wait for a remote, and how it is written.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_messages: u64,
    pub max_bytes: u64,
    pub fsync: bool,
    /// Segment files roll over at this size ([`SEGMENT_BYTES`]).
    pub segment_bytes: u64,
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
    /// Messages lost to damage on disk since the buffer was created (found so far).
    pub corrupt: u64,
    /// The sequence number the next appended message gets.
    pub next_seq: u64,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    seq: u64,
    segment: u64,
    offset: u64,
    len: u32,
    /// Found damaged when read for sending: skipped, counted when the start moves past it.
    lost: bool,
}

struct Segment {
    file: File,
    path: PathBuf,
    salt: u32,
    size: u64,
}

struct Inner {
    dir: PathBuf,
    limits: Limits,
    segments: BTreeMap<u64, Segment>,
    /// Records at or after `start`, by sequence number; numbers missing between them were lost to damage.
    index: VecDeque<Entry>,
    /// Entries of `index` marked `lost`.
    lost_marked: u64,
    bytes: u64,
    start: u64,
    next_seq: u64,
    dropped: u64,
    /// Lost records the start has moved past (the rest are still in `index`, as gaps or marks).
    corrupt: u64,
    cursor: File,
}

/// A remote's buffer; all methods are blocking file I/O (call appends from a blocking thread).
pub struct Store {
    inner: Mutex<Inner>,
    /// Signalled after every append: the forwarder waits on it when it has sent everything.
    pub appended: Notify,
}

fn segment_name(first: u64, salt: u32) -> String {
    format!("{first:020}.{salt:08x}.seg")
}

/// `(first seq, salt)` of a segment file name, new or old style.
fn parse_segment_name(name: &str) -> Option<(u64, u32)> {
    let stem = name.strip_suffix(".seg")?;
    match stem.split_once('.') {
        Some((first, salt)) if salt.len() == 8 => {
            Some((first.parse().ok()?, u32::from_str_radix(salt, 16).ok()?))
        }
        Some(_) => None,
        None => Some((stem.parse().ok()?, 0)),
    }
}

fn new_salt() -> u32 {
    // Never 0: that is the salt of segments written before salts.
    rand::random::<u32>().max(1)
}

impl Store {
    /// Opens (or creates) the buffer in `dir`: indexes every good record, skips damage, cuts off a torn tail.
    pub fn open(dir: &Path, limits: Limits) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::io(dir, e))?;
        let cursor_path = dir.join("cursor");
        let cursor = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&cursor_path)
            .map_err(|e| StoreError::io(&cursor_path, e))?;
        let mut raw = [0u8; CURSOR_LEN + 1];
        let n = read_up_to(&cursor, &mut raw).map_err(|e| StoreError::io(&cursor_path, e))?;
        let parsed = parse_cursor(&raw[..n]);

        let mut segments = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(|e| StoreError::io(dir, e))? {
            let entry = entry.map_err(|e| StoreError::io(dir, e))?;
            if let Some((first, salt)) = parse_segment_name(&entry.file_name().to_string_lossy()) {
                segments.push((first, salt, entry.path()));
            }
        }
        segments.sort_unstable_by_key(|(first, _, _)| *first);

        let (start, dropped, corrupt) = parsed.unwrap_or_else(|| {
            if n > 0 {
                tracing::warn!(path = %cursor_path.display(), "cursor file is damaged: delivering everything still on disk again");
            }
            (segments.first().map_or(0, |(first, _, _)| *first), 0, 0)
        });
        let mut inner = Inner {
            dir: dir.to_path_buf(),
            limits,
            segments: BTreeMap::new(),
            index: VecDeque::new(),
            lost_marked: 0,
            bytes: 0,
            start,
            next_seq: start,
            dropped,
            corrupt,
            cursor,
        };
        let count = segments.len();
        let mut seen_end = 0;
        for (i, (first, salt, path)) in segments.into_iter().enumerate() {
            seen_end = inner.load_segment(first, salt, path, i + 1 == count, seen_end)?;
        }
        let last_first = inner.segments.keys().next_back().copied().unwrap_or(0);
        inner.next_seq = inner.start.max(seen_end).max(last_first);
        if inner.segments.is_empty() {
            inner.new_segment()?;
        }
        let before = (inner.dropped, inner.corrupt);
        inner.enforce_limits();
        if (inner.dropped, inner.corrupt) != before || parsed.is_none() {
            // The bound was lowered since the last run, a damaged tail was counted, or the cursor was bad.
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

    /// The first message still to deliver at or after `seq`, with its sequence number. A record found damaged
    /// here is skipped (and counted once the start moves past it).
    pub fn read_from(&self, seq: u64) -> Result<Option<(u64, Record)>, StoreError> {
        let mut inner = self.lock();
        let mut pos = inner.index.partition_point(|e| e.seq < seq);
        while let Some(e) = inner.index.get(pos).copied() {
            pos += 1;
            if e.lost {
                continue;
            }
            let seg = inner.segments.get(&e.segment).ok_or_else(|| {
                StoreError::io(
                    inner.dir.join(format!("{:020}.*.seg", e.segment)),
                    missing(),
                )
            })?;
            let mut buf = vec![0u8; e.len as usize];
            seg.file
                .read_exact_at(&mut buf, e.offset)
                .map_err(|err| StoreError::io(&seg.path, err))?;
            match scan::decode(&buf, seg.salt) {
                Some((s, rec)) if s == e.seq => return Ok(Some((s, rec))),
                _ => {
                    tracing::warn!(path = %seg.path.display(), offset = e.offset, seq = e.seq,
                        "a buffered record is damaged on disk: skipped, counted as corrupt");
                    inner.index[pos - 1].lost = true;
                    inner.lost_marked += 1;
                }
            }
        }
        Ok(None)
    }

    /// The remote acknowledged everything up to and including `seq`.
    pub fn ack(&self, seq: u64) -> Result<(), StoreError> {
        let mut inner = self.lock();
        if seq < inner.start {
            return Ok(());
        }
        while inner.index.front().is_some_and(|e| e.seq <= seq) {
            inner.pop_front();
        }
        inner.start = inner.start.max(seq + 1);
        inner.write_cursor()?;
        inner.gc();
        Ok(())
    }

    pub fn stats(&self) -> StoreStats {
        let inner = self.lock();
        // Sequence numbers missing between start and the newest record are lost ones not yet counted.
        let gaps = inner.index.back().map_or(0, |b| {
            (b.seq + 1 - inner.start).saturating_sub(inner.index.len() as u64)
        });
        StoreStats {
            buffered: inner.index.len() as u64 - inner.lost_marked,
            buffered_bytes: inner.bytes,
            dropped: inner.dropped,
            corrupt: inner.corrupt + gaps + inner.lost_marked,
            next_seq: inner.next_seq,
        }
    }
}

fn missing() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::NotFound, "segment is gone")
}

fn read_up_to(file: &File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], n as u64)? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn parse_cursor(raw: &[u8]) -> Option<(u64, u64, u64)> {
    let word = |i: usize| {
        raw.get(i * 8..i * 8 + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    let crc_ok = |len: usize| {
        raw.get(len - 4..len)
            .and_then(|b| b.try_into().ok())
            .is_some_and(|b| u32::from_le_bytes(b) == crc32fast::hash(&raw[..len - 4]))
    };
    match raw.len() {
        CURSOR_LEN if crc_ok(CURSOR_LEN) => Some((word(0)?, word(1)?, word(2)?)),
        OLD_CURSOR_LEN if crc_ok(OLD_CURSOR_LEN) => Some((word(0)?, word(1)?, 0)),
        _ => None,
    }
}

impl Inner {
    /// Reads a segment at open and indexes its good records at or after the start; `seen_end` is one past the
    /// highest sequence number of the segments before it. Answers the same after this one.
    fn load_segment(
        &mut self,
        first: u64,
        salt: u32,
        path: PathBuf,
        last: bool,
        seen_end: u64,
    ) -> Result<u64, StoreError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| StoreError::io(&path, e))?;
        let buf = std::fs::read(&path).map_err(|e| StoreError::io(&path, e))?;
        let found = scan::scan(&buf, salt, first.max(seen_end));
        let mut end = seen_end;
        for f in &found.found {
            if f.seq >= self.start {
                self.index.push_back(Entry {
                    seq: f.seq,
                    segment: first,
                    offset: f.offset,
                    len: f.len,
                    lost: false,
                });
                self.bytes += u64::from(f.len);
            }
            end = f.seq + 1;
        }
        for r in &found.damaged {
            tracing::warn!(path = %path.display(), offset = r.start, bytes = r.len(),
                "damaged bytes skipped; the records in them are lost (counted as corrupt)");
        }
        let mut size = buf.len() as u64;
        if found.end < buf.len() {
            let tail = buf.len() - found.end;
            if !last {
                // Not where a crash cuts a write: the records it held are lost (the next segment says how many).
                tracing::warn!(path = %path.display(), offset = found.end, bytes = tail,
                    "damaged end of a segment skipped; the records in it are lost (counted as corrupt)");
            } else {
                if found.tail_frames > 0 {
                    // Complete records that went bad: lost, unless already delivered.
                    let lost = (end + found.tail_frames).saturating_sub(end.max(self.start));
                    self.corrupt += lost;
                    tracing::warn!(path = %path.display(), offset = found.end, bytes = tail, lost,
                        "damaged records at the end of the buffer cut off (counted as corrupt)");
                } else {
                    tracing::warn!(path = %path.display(), kept = found.end, size = buf.len(),
                        "cutting off a torn tail (a write cut short, never acknowledged to the hub)");
                }
                file.set_len(found.end as u64)
                    .map_err(|e| StoreError::io(&path, e))?;
                file.sync_all().map_err(|e| StoreError::io(&path, e))?;
                size = found.end as u64;
            }
        }
        self.segments.insert(
            first,
            Segment {
                file,
                path,
                salt,
                size,
            },
        );
        Ok(end)
    }

    fn new_segment(&mut self) -> Result<(), StoreError> {
        let first = self.next_seq;
        let salt = new_salt();
        let path = self.dir.join(segment_name(first, salt));
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
        self.segments.insert(
            first,
            Segment {
                file,
                path,
                salt,
                size: 0,
            },
        );
        Ok(())
    }

    fn active(&self) -> Result<(u64, &Segment), StoreError> {
        self.segments
            .last_key_value()
            .map(|(k, s)| (*k, s))
            .ok_or_else(|| StoreError::io(&self.dir, missing()))
    }

    fn append(&mut self, records: &[Record]) -> Result<(), StoreError> {
        // Check everything first: a record that cannot be stored must not leave half a batch in the index.
        records.iter().try_for_each(scan::check_size)?;
        let mut chunk = Vec::new();
        for r in records {
            let (_, active) = self.active()?;
            if active.size + chunk.len() as u64 >= self.limits.segment_bytes.max(1) {
                self.flush(&mut chunk)?;
                self.new_segment()?;
            }
            let (segment, active) = self.active()?;
            let (offset, salt) = (active.size + chunk.len() as u64, active.salt);
            let seq = self.next_seq;
            let len = scan::encode_into(&mut chunk, seq, r, salt)?;
            self.index.push_back(Entry {
                seq,
                segment,
                offset,
                len: len as u32,
                lost: false,
            });
            self.bytes += len as u64;
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
            return Err(StoreError::io(&seg.path, e));
        }
        seg.size += chunk.len() as u64;
        chunk.clear();
        Ok(())
    }

    /// Moves the start past the oldest entry; what was lost before it (or it, if marked) is counted.
    fn pop_front(&mut self) -> Option<Entry> {
        let e = self.index.pop_front()?;
        self.corrupt += e.seq.saturating_sub(self.start);
        if e.lost {
            self.corrupt += 1;
            self.lost_marked -= 1;
        }
        self.bytes -= u64::from(e.len);
        self.start = e.seq + 1;
        Some(e)
    }

    fn enforce_limits(&mut self) {
        while self.index.len() as u64 > self.limits.max_messages
            || (self.bytes > self.limits.max_bytes && !self.index.is_empty())
        {
            if let Some(e) = self.pop_front()
                && !e.lost
            {
                self.dropped += 1;
            }
        }
    }

    fn write_cursor(&mut self) -> Result<(), StoreError> {
        let mut raw = [0u8; CURSOR_LEN];
        raw[0..8].copy_from_slice(&self.start.to_le_bytes());
        raw[8..16].copy_from_slice(&self.dropped.to_le_bytes());
        raw[16..24].copy_from_slice(&self.corrupt.to_le_bytes());
        let crc = crc32fast::hash(&raw[..24]);
        raw[24..28].copy_from_slice(&crc.to_le_bytes());
        self.cursor
            .write_all_at(&raw, 0)
            .map_err(|e| StoreError::io(self.dir.join("cursor"), e))
    }

    /// Deletes segments holding only delivered or dropped records (never the active one).
    fn gc(&mut self) {
        let firsts: Vec<u64> = self.segments.keys().copied().collect();
        for pair in firsts.windows(2) {
            let (first, next_first) = (pair[0], pair[1]);
            if next_first > self.start {
                break;
            }
            if let Some(seg) = self.segments.get(&first) {
                if let Err(e) = std::fs::remove_file(&seg.path) {
                    tracing::warn!(path = %seg.path.display(), "cannot delete a delivered segment: {e}");
                    continue;
                }
                self.segments.remove(&first);
            }
        }
    }
}

#[cfg(test)]
mod tests;
