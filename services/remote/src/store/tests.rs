use super::*;
use scan::HEADER;
use std::io::Write;

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
        segment_bytes: SEGMENT_BYTES,
    }
}

// ------------------------------------------------------------------ corruption (issue 10)

const N: u64 = 2500;

/// About 4 KiB each: 2,500 of them fill three 4 MiB segments.
fn big(i: u64) -> Record {
    Record {
        topic: format!("t/{i}"),
        qos: 1,
        payload: format!("{i:06}|").repeat(600).into_bytes(),
    }
}

/// A store holding messages 0..N in several segments; answers the segment files in order.
fn filled(dir: &Path) -> Vec<PathBuf> {
    let s = Store::open(dir, limits(1_000_000)).unwrap();
    for chunk in (0..N).collect::<Vec<_>>().chunks(100) {
        s.append(&chunk.iter().map(|&i| big(i)).collect::<Vec<_>>())
            .unwrap();
    }
    drop(s);
    let segs = segment_files(dir);
    assert!(segs.len() >= 3, "{segs:?}");
    segs
}

/// The segment files, oldest first.
fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut segs: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".seg"))
        .collect();
    segs.sort();
    segs
}

/// The frames of an intact segment file: (offset, whole length).
fn frames(path: &Path) -> Vec<(u64, u64)> {
    let buf = std::fs::read(path).unwrap();
    let mut out = Vec::new();
    let mut pos = 0usize;
    while pos + HEADER <= buf.len() {
        let len = u32::from_le_bytes(buf[pos..pos + 4].try_into().unwrap()) as usize;
        if pos + HEADER + len > buf.len() {
            break;
        }
        out.push((pos as u64, (HEADER + len) as u64));
        pos += HEADER + len;
    }
    out
}

fn flip(path: &Path, offset: u64) {
    let mut buf = std::fs::read(path).unwrap();
    buf[offset as usize] ^= 0x5a;
    std::fs::write(path, buf).unwrap();
}

/// What a forwarder gets: reads in order, checks each record is the one its sequence number was given to,
/// acknowledges it. Answers the sequence numbers delivered.
fn drain(s: &Store) -> Vec<u64> {
    let mut got = Vec::new();
    let mut next = 0;
    while let Some((seq, rec)) = s.read_from(next).unwrap() {
        assert_eq!(
            rec,
            big(seq),
            "record {seq} is not what was appended as {seq}"
        );
        got.push(seq);
        s.ack(seq).unwrap();
        next = seq + 1;
    }
    got
}

fn all_but(lost: &[u64]) -> Vec<u64> {
    (0..N).filter(|i| !lost.contains(i)).collect()
}

/// Flips one byte at `at(frames of the segment)` in segment `seg` and answers the sequence number of
/// the record it damaged; segment `seg` starts with record `firsts[seg]`.
fn corrupt_record(segs: &[PathBuf], seg: usize, index: usize, within: impl Fn(u64) -> u64) -> u64 {
    let f = frames(&segs[seg]);
    let (off, len) = f[index];
    flip(&segs[seg], off + within(len));
    first_of(&segs[seg]) + index as u64
}

fn first_of(segment: &Path) -> u64 {
    let name = segment.file_name().unwrap().to_string_lossy().into_owned();
    parse_segment_name(&name).unwrap().0
}

/// Asserts that exactly `want` was delivered, saying what was missing or extra.
fn assert_delivered(got: &[u64], want: &[u64]) {
    let missing: Vec<u64> = want.iter().filter(|w| !got.contains(w)).copied().collect();
    let extra: Vec<u64> = got.iter().filter(|g| !want.contains(g)).copied().collect();
    assert!(
        got == want,
        "{} delivered, {} expected; missing {missing:?}, extra {extra:?}",
        got.len(),
        want.len()
    );
}

fn check_one_lost(at: impl Fn(&[PathBuf]) -> u64) {
    let dir = tempfile::tempdir().unwrap();
    let segs = filled(dir.path());
    let lost = at(&segs);
    let s = Store::open(dir.path(), limits(1_000_000)).unwrap();
    assert_eq!(s.stats().corrupt, 1, "the lost record is counted at open");
    assert_eq!(s.stats().buffered, N - 1);
    assert_delivered(&drain(&s), &all_but(&[lost]));
    let st = s.stats();
    assert_eq!((st.buffered, st.corrupt, st.dropped), (0, 1, 0));
    drop(s);
    let s = Store::open(dir.path(), limits(1_000_000)).unwrap();
    assert_eq!(s.stats().corrupt, 1, "counted once, across a restart");
    assert!(s.read_from(0).unwrap().is_none());
}

#[test]
fn flipped_length_in_a_middle_segment_loses_only_that_record() {
    check_one_lost(|segs| corrupt_record(segs, 1, 100, |_| 1));
    check_one_lost(|segs| corrupt_record(segs, 1, 100, |_| 3));
    check_one_lost(|segs| corrupt_record(segs, 0, 0, |_| 0));
}

#[test]
fn flipped_payload_or_crc_or_seq_loses_only_that_record() {
    check_one_lost(|segs| corrupt_record(segs, 1, 500, |len| len - 10));
    check_one_lost(|segs| corrupt_record(segs, 1, 500, |_| 5));
    check_one_lost(|segs| corrupt_record(segs, 0, 7, |_| 9));
}

#[test]
fn damage_at_a_segment_boundary_loses_only_that_record() {
    // The last record of a segment that is not the last one, then the first of the next.
    check_one_lost(|segs| {
        let n = frames(&segs[0]).len();
        corrupt_record(segs, 0, n - 1, |len| len / 2)
    });
    check_one_lost(|segs| corrupt_record(segs, 1, 0, |_| 2));
}

#[test]
fn damage_in_the_last_segments_tail_loses_only_that_record() {
    check_one_lost(|segs| {
        let last = segs.len() - 1;
        let n = frames(&segs[last]).len();
        corrupt_record(segs, last, n - 1, |len| len - 1)
    });
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
            segment_bytes: SEGMENT_BYTES,
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
    let seg = &segment_files(dir.path())[0];
    let mut f = OpenOptions::new().append(true).open(seg).unwrap();
    let mut torn = Vec::new();
    scan::encode_into(&mut torn, 3, &rec(3), 0).unwrap();
    torn.truncate(torn.len() - 4);
    f.write_all(&torn).unwrap();
    drop(f);
    let s = Store::open(dir.path(), limits(100)).unwrap();
    assert_eq!(s.stats().buffered, 3);
    assert_eq!(
        s.stats().corrupt,
        0,
        "a write cut short is not a lost record"
    );
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

#[test]
fn a_torn_tail_in_the_last_segment_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let segs = filled(dir.path());
    let last = segs.last().unwrap();
    let len = std::fs::metadata(last).unwrap().len();
    // A record that never reached the disk whole (the hub was not told it was stored).
    let salt = parse_segment_name(&last.file_name().unwrap().to_string_lossy())
        .unwrap()
        .1;
    let mut half = Vec::new();
    scan::encode_into(&mut half, N, &big(N), salt).unwrap();
    half.truncate(half.len() - 100);
    let mut f = OpenOptions::new().append(true).open(last).unwrap();
    f.write_all(&half).unwrap();
    drop(f);
    let s = Store::open(dir.path(), limits(1_000_000)).unwrap();
    assert_eq!(
        std::fs::metadata(last).unwrap().len(),
        len,
        "the torn part is cut off"
    );
    assert_eq!(s.stats().corrupt, 0);
    assert_delivered(&drain(&s), &all_but(&[]));
    s.append(&[big(N)]).unwrap();
    assert_eq!(s.read_from(N).unwrap().unwrap(), (N, big(N)));
}

#[test]
fn several_damages_lose_exactly_the_records_hit() {
    let dir = tempfile::tempdir().unwrap();
    let segs = filled(dir.path());
    let mut lost = vec![
        // (the later one first: the frames before a damaged one are still walked by their lengths)
        corrupt_record(&segs, 0, 4, |len| len - 1),
        corrupt_record(&segs, 0, 3, |_| 0),
        corrupt_record(&segs, 1, 250, |_| 6),
        corrupt_record(&segs, 2, 1, |_| 2),
    ];
    lost.sort();
    let s = Store::open(dir.path(), limits(1_000_000)).unwrap();
    assert_eq!(s.stats().corrupt, 4);
    // Deliver part, restart, deliver the rest: nothing counted twice, nothing skipped.
    let mut got = Vec::new();
    let mut next = 0;
    while let Some((seq, rec)) = s.read_from(next).unwrap() {
        assert_eq!(rec, big(seq));
        got.push(seq);
        s.ack(seq).unwrap();
        next = seq + 1;
        if got.len() == 1200 {
            break;
        }
    }
    drop(s);
    let s = Store::open(dir.path(), limits(1_000_000)).unwrap();
    assert_eq!(s.stats().corrupt, 4);
    got.extend(drain(&s));
    assert_delivered(&got, &all_but(&lost));
    assert_eq!(s.stats().corrupt, 4);
}

#[test]
fn a_record_damaged_after_the_open_is_skipped_when_read() {
    let dir = tempfile::tempdir().unwrap();
    let segs = filled(dir.path());
    let s = Store::open(dir.path(), limits(1_000_000)).unwrap();
    assert_eq!(s.stats().corrupt, 0);
    // The forwarder has sent up to 99 when a sector under record 1700 goes bad.
    for seq in 0..100 {
        assert_eq!(s.read_from(seq).unwrap().unwrap().0, seq);
        s.ack(seq).unwrap();
    }
    let lost = corrupt_record(&segs, 1, 1700 - first_of(&segs[1]) as usize, |len| len / 3);
    assert_eq!(lost, 1700);
    let mut got: Vec<u64> = (0..100).collect();
    got.extend(drain(&s));
    assert_delivered(&got, &all_but(&[1700]));
    let st = s.stats();
    assert_eq!((st.buffered, st.corrupt), (0, 1));
    // Damage of the newest record, with nothing after it to send: counted all the same.
    s.append(&[big(N)]).unwrap();
    let seg = segment_files(dir.path()).pop().unwrap();
    let n = frames(&seg).len();
    corrupt_record(&[seg], 0, n - 1, |_| 12);
    assert!(s.read_from(N).unwrap().is_none());
    assert_eq!((s.stats().buffered, s.stats().corrupt), (0, 2));
}

#[test]
fn buffers_written_before_salts_and_corrupt_counts_still_open() {
    let dir = tempfile::tempdir().unwrap();
    // An old-style segment (no salt: plain CRC-32) and an old 20-byte cursor: start 2, 5 dropped.
    let mut seg = Vec::new();
    for i in 0..6 {
        scan::encode_into(&mut seg, i, &rec(i as usize), 0).unwrap();
    }
    std::fs::write(dir.path().join(format!("{:020}.seg", 0)), &seg).unwrap();
    let mut cursor = Vec::new();
    cursor.extend_from_slice(&2u64.to_le_bytes());
    cursor.extend_from_slice(&5u64.to_le_bytes());
    let crc = crc32fast::hash(&cursor);
    cursor.extend_from_slice(&crc.to_le_bytes());
    std::fs::write(dir.path().join("cursor"), &cursor).unwrap();
    let s = Store::open(dir.path(), limits(100)).unwrap();
    let st = s.stats();
    assert_eq!(
        (st.buffered, st.dropped, st.corrupt, st.next_seq),
        (4, 5, 0, 6)
    );
    assert_eq!(s.read_from(0).unwrap().unwrap(), (2, rec(2)));
    s.ack(3).unwrap();
    s.append(&[rec(6)]).unwrap();
    drop(s);
    let s = Store::open(dir.path(), limits(100)).unwrap();
    assert_eq!(s.read_from(0).unwrap().unwrap(), (4, rec(4)));
    assert_eq!(s.read_from(6).unwrap().unwrap(), (6, rec(6)));
    assert_eq!(s.stats().dropped, 5);
}

#[test]
fn a_damaged_cursor_redelivers_what_is_on_disk_without_counting_it_lost() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(
        dir.path(),
        Limits {
            segment_bytes: 256,
            ..limits(1000)
        },
    )
    .unwrap();
    for i in 0..40 {
        s.append(&[rec(i)]).unwrap();
    }
    for seq in 0..30 {
        s.ack(seq).unwrap();
    }
    drop(s);
    flip(&dir.path().join("cursor"), 3);
    let s = Store::open(dir.path(), limits(1000)).unwrap();
    let st = s.stats();
    assert_eq!(st.corrupt, 0, "{st:?}");
    let first = s.read_from(0).unwrap().unwrap().0;
    assert!(
        first <= 30,
        "delivered ones may come again, none is skipped: {first}"
    );
    assert_eq!(st.next_seq, 40);
}
