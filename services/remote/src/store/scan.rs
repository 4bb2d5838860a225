//! Frames of a segment file: encoding, checking, and finding the good ones again after damage.
//!
//! A frame is `[body len u32][checksum u32][body]`, body = `[seq u64][qos u8][topic len u16][topic][payload]`,
//! little endian. The checksum is CRC-32 of the body started from the segment's *salt* (a random number in
//! the segment's file name; 0 for segments written before salts existed). A frame is good when it is whole,
//! its lengths are consistent, its checksum matches and its sequence number is in the range expected there.
//!
//! After a bad frame, [`scan`] looks for the next good one byte by byte (the nearest, so that a damaged
//! length field cannot make it jump over intact records), accepting only a sequence number that the skipped
//! bytes could have held (each lost record takes at least [`MIN_FRAME`] bytes). The salt is why a good frame
//! cannot be *forged*: a publisher who puts a well-formed frame inside a payload cannot know the checksum's
//! starting value, so when the frame around it is damaged, the forged one is not taken for a record.

use std::ops::{Range, RangeInclusive};

use super::Record;
use crate::error::StoreError;

pub(super) const HEADER: usize = 8;
pub(super) const BODY_FIXED: usize = 8 + 1 + 2;
/// The smallest frame: a record with an empty topic and payload.
pub(super) const MIN_FRAME: usize = HEADER + BODY_FIXED;
/// Larger length fields are damage (MQTT's own packet limit is 256 MiB).
pub(super) const MAX_BODY: usize = 512 << 20;

pub(super) fn checksum(salt: u32, body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new_with_initial(salt);
    h.update(body);
    h.finalize()
}

/// The checks [`encode_into`] would fail, without writing anything: a batch is checked whole first.
pub(super) fn check_size(r: &Record) -> Result<(), StoreError> {
    let body = BODY_FIXED + r.topic.len() + r.payload.len();
    if u16::try_from(r.topic.len()).is_err() || body > MAX_BODY {
        return Err(StoreError::TooLarge {
            topic: r.topic.clone(),
            len: r.payload.len(),
        });
    }
    Ok(())
}

/// Appends the frame of record `seq` to `out`; answers its length.
pub(super) fn encode_into(
    out: &mut Vec<u8>,
    seq: u64,
    r: &Record,
    salt: u32,
) -> Result<usize, StoreError> {
    check_size(r)?;
    let body_len = BODY_FIXED + r.topic.len() + r.payload.len();
    let start = out.len();
    out.reserve(HEADER + body_len);
    out.extend_from_slice(&(body_len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&seq.to_le_bytes());
    out.push(r.qos);
    out.extend_from_slice(&(r.topic.len() as u16).to_le_bytes());
    out.extend_from_slice(r.topic.as_bytes());
    out.extend_from_slice(&r.payload);
    let crc = checksum(salt, &out[start + HEADER..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Ok(HEADER + body_len)
}

fn u32_at(buf: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(buf.get(at..at + 4)?.try_into().ok()?))
}

/// The frame at `pos` if it is good and its sequence number is in `seqs`: (seq, frame length).
fn frame_at(buf: &[u8], pos: usize, salt: u32, seqs: &RangeInclusive<u64>) -> Option<(u64, usize)> {
    let len = u32_at(buf, pos)? as usize;
    if !(BODY_FIXED..=MAX_BODY).contains(&len) {
        return None;
    }
    let body = buf.get(pos + HEADER..pos + HEADER + len)?;
    // Cheap checks before the checksum: while resynchronising this runs at every byte.
    let seq = u64::from_le_bytes(body[0..8].try_into().ok()?);
    if !seqs.contains(&seq) {
        return None;
    }
    let topic_len = u16::from_le_bytes(body[9..11].try_into().ok()?) as usize;
    if BODY_FIXED + topic_len > len || checksum(salt, body) != u32_at(buf, pos + 4)? {
        return None;
    }
    Some((seq, HEADER + len))
}

/// Decodes one whole frame read back from disk.
pub(super) fn decode(frame: &[u8], salt: u32) -> Option<(u64, Record)> {
    let (seq, len) = frame_at(frame, 0, salt, &(0..=u64::MAX))?;
    if len != frame.len() {
        return None;
    }
    let body = &frame[HEADER..];
    let topic_len = u16::from_le_bytes(body[9..11].try_into().ok()?) as usize;
    let topic = &body[BODY_FIXED..BODY_FIXED + topic_len];
    Some((
        seq,
        Record {
            topic: String::from_utf8_lossy(topic).into_owned(),
            qos: body[8],
            payload: body[BODY_FIXED + topic_len..].to_vec(),
        },
    ))
}

/// A good frame found in a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Found {
    pub seq: u64,
    pub offset: u64,
    pub len: u32,
}

/// What a segment holds.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Scan {
    pub found: Vec<Found>,
    /// Damaged byte ranges with good frames after them.
    pub damaged: Vec<Range<usize>>,
    /// Where the segment's good part ends: after it there is no good frame (the file's length when whole).
    pub end: usize,
    /// Whole frames, by their length fields, in the part after `end`: complete records that were damaged,
    /// as opposed to a write cut short by a crash.
    pub tail_frames: u64,
}

/// Reads a segment's bytes: every good frame with a sequence number from `min_seq` on, increasing.
pub(super) fn scan(buf: &[u8], salt: u32, min_seq: u64) -> Scan {
    let mut out = Scan::default();
    let mut pos = 0;
    let mut next = min_seq;
    while pos < buf.len() {
        if let Some((seq, len)) = frame_at(buf, pos, salt, &(next..=u64::MAX)) {
            out.found.push(Found {
                seq,
                offset: pos as u64,
                len: len as u32,
            });
            next = seq.saturating_add(1);
            pos += len;
            continue;
        }
        match resync(buf, pos, salt, next) {
            Some(good) => {
                out.damaged.push(pos..good);
                pos = good;
            }
            None => {
                out.end = pos;
                out.tail_frames = whole_frames(&buf[pos..]);
                return out;
            }
        }
    }
    out.end = buf.len();
    out
}

/// The nearest good frame after the damage at `bad`.
fn resync(buf: &[u8], bad: usize, salt: u32, next: u64) -> Option<usize> {
    let last = buf.len().checked_sub(MIN_FRAME)?;
    (bad + 1..=last).find(|&at| {
        let most_lost = ((at - bad) / MIN_FRAME) as u64;
        frame_at(buf, at, salt, &(next..=next.saturating_add(most_lost))).is_some()
    })
}

fn whole_frames(tail: &[u8]) -> u64 {
    let mut n = 0;
    let mut pos = 0;
    while let Some(len) = u32_at(tail, pos) {
        let len = len as usize;
        if !(BODY_FIXED..=MAX_BODY).contains(&len) || pos + HEADER + len > tail.len() {
            break;
        }
        n += 1;
        pos += HEADER + len;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(topic: &str, payload: &[u8]) -> Record {
        Record {
            topic: topic.into(),
            qos: 1,
            payload: payload.to_vec(),
        }
    }

    fn segment(salt: u32, first: u64, records: &[Record]) -> (Vec<u8>, Vec<usize>) {
        let mut buf = Vec::new();
        let mut offsets = Vec::new();
        for (i, r) in records.iter().enumerate() {
            offsets.push(buf.len());
            encode_into(&mut buf, first + i as u64, r, salt).unwrap();
        }
        (buf, offsets)
    }

    fn seqs(s: &Scan) -> Vec<u64> {
        s.found.iter().map(|f| f.seq).collect()
    }

    #[test]
    fn round_trip_and_salt() {
        let (buf, _) = segment(7, 10, &[rec("a", b"x"), rec("b", b"")]);
        let s = scan(&buf, 7, 10);
        assert_eq!(seqs(&s), [10, 11]);
        assert_eq!((s.end, s.tail_frames), (buf.len(), 0));
        let f = s.found[1];
        let frame = &buf[f.offset as usize..(f.offset + u64::from(f.len)) as usize];
        assert_eq!(decode(frame, 7), Some((11, rec("b", b""))));
        assert_eq!(decode(frame, 8), None, "another salt: another checksum");
        assert!(scan(&buf, 0, 10).found.is_empty());
    }

    #[test]
    fn every_single_flipped_byte_loses_exactly_its_record() {
        // Records of one size, a power of two: a flipped length bit then points exactly at a later frame.
        let records: Vec<Record> = (0..12).map(|i| rec("t", &[i as u8; 44])).collect();
        let (buf, offsets) = segment(0x5eed, 100, &records);
        assert_eq!(offsets[1], 64);
        for at in 0..buf.len() {
            for bit in [0x01u8, 0x40, 0x80] {
                let mut bad = buf.clone();
                bad[at] ^= bit;
                let hit = offsets.iter().rposition(|&o| o <= at).unwrap() as u64;
                let s = scan(&bad, 0x5eed, 100);
                let mut want: Vec<u64> = (100..112).collect();
                want.retain(|&q| q != 100 + hit);
                if hit == 11 {
                    // The last frame: a damaged tail, one whole frame when its length still fits.
                    assert_eq!(seqs(&s), want, "byte {at} bit {bit:#x}");
                    assert!(s.tail_frames <= 1);
                } else {
                    assert_eq!(seqs(&s), want, "byte {at} bit {bit:#x}");
                    assert_eq!(s.damaged.len(), 1);
                }
            }
        }
    }

    #[test]
    fn a_frame_forged_inside_a_payload_is_not_taken() {
        // The publisher's payload holds a frame of its own (checksummed without the salt), for seq 3.
        let mut forged = Vec::new();
        encode_into(&mut forged, 3, &rec("admin/cmd", b"evil"), 0).unwrap();
        let mut payload = vec![b'p'; 40];
        payload.extend_from_slice(&forged);
        let records = vec![rec("a", b"1"), rec("a", &payload), rec("a", b"3")];
        let (mut buf, offsets) = segment(0xabcdef, 1, &records);
        buf[offsets[1] + 20] ^= 1;
        let s = scan(&buf, 0xabcdef, 1);
        assert_eq!(seqs(&s), [1, 3]);
        assert_eq!(s.found[1].offset as usize, offsets[2], "the real record 3");
    }

    #[test]
    fn torn_and_damaged_tails() {
        let records: Vec<Record> = (0..3).map(|i| rec("t", &[i; 30])).collect();
        let (buf, offsets) = segment(1, 0, &records);
        // A write cut short: part of a frame.
        let torn = &buf[..buf.len() - 5];
        let s = scan(torn, 1, 0);
        assert_eq!(
            (seqs(&s), s.end, s.tail_frames),
            (vec![0, 1], offsets[2], 0)
        );
        // A whole last frame with a flipped payload byte.
        let mut bad = buf.clone();
        let n = bad.len();
        bad[n - 1] ^= 1;
        let s = scan(&bad, 1, 0);
        assert_eq!(
            (seqs(&s), s.end, s.tail_frames),
            (vec![0, 1], offsets[2], 1)
        );
        // Zeros where pages never reached the disk.
        let mut zeros = buf.clone();
        zeros.extend_from_slice(&[0; 300]);
        let s = scan(&zeros, 1, 0);
        assert_eq!(
            (seqs(&s), s.end, s.tail_frames),
            (vec![0, 1, 2], buf.len(), 0)
        );
    }

    #[test]
    fn sequence_numbers_only_grow() {
        let mut buf = Vec::new();
        encode_into(&mut buf, 5, &rec("a", b""), 0).unwrap();
        encode_into(&mut buf, 4, &rec("a", b""), 0).unwrap();
        encode_into(&mut buf, 6, &rec("a", b""), 0).unwrap();
        assert_eq!(seqs(&scan(&buf, 0, 0)), [5, 6]);
        assert_eq!(
            seqs(&scan(&buf, 0, 6)),
            [6],
            "below the segment's first: not taken"
        );
    }
}
