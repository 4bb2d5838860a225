//! Fault injection for the bridge's buffer (issue 10; a program, not a timed test). Run:
//! `cargo run -p baetyl-remote --example fault_injection [ROUNDS] [SEED]`.
//!
//! For each class of damage, each round writes a fresh buffer of numbered messages (small segments, so there
//! are several), closes it, damages the files as the class says (random positions from a seeded generator),
//! reopens it and delivers everything it still holds, acknowledging as a remote would. It prints per class:
//! attempts, messages written, held (delivered intact), lost, and the records the damage touched (the most
//! that may be lost). Violations (a lost message the damage did not touch, a delivered message that differs
//! from what was written, a duplicate, out of order, `corrupt` in the stats not equal to the loss) are listed,
//! and the program exits with status 1 if there is any.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use baetyl_remote::store::{Limits, Record, Store};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const MESSAGES: usize = 600;
const SEGMENT: u64 = 32 << 10;
const FRAME_HEADER: usize = 8;

#[derive(Clone, Copy, Debug)]
enum Class {
    /// One byte of a frame's length field.
    Length,
    /// One byte of a frame's checksum.
    Checksum,
    /// One byte of the body's sequence number, QoS or topic.
    BodyHeader,
    /// One byte of a payload.
    Payload,
    /// The first frame of a segment that is not the first.
    SegmentStart,
    /// One byte of the last frame of a segment that is not the last.
    SegmentEnd,
    /// The last segment cut in the middle of a frame (a crash during an append).
    TornTail,
    /// Five bytes anywhere in any segment.
    Scattered,
    /// A run of 64 zero bytes (a bad sector) in the middle of a segment.
    ZeroRun,
}

const CLASSES: [Class; 9] = [
    Class::Length,
    Class::Checksum,
    Class::BodyHeader,
    Class::Payload,
    Class::SegmentStart,
    Class::SegmentEnd,
    Class::TornTail,
    Class::Scattered,
    Class::ZeroRun,
];

fn payload(i: usize) -> Vec<u8> {
    let mut p = format!("m-{i}|").into_bytes();
    p.resize(100 + (i * 37) % 400, b'a' + (i % 26) as u8);
    p
}

fn record(i: usize) -> Record {
    Record {
        topic: format!("t/{}", i % 7),
        qos: 1,
        payload: payload(i),
    }
}

fn id_of(r: &Record) -> Option<usize> {
    std::str::from_utf8(&r.payload)
        .ok()?
        .strip_prefix("m-")?
        .split('|')
        .next()?
        .parse()
        .ok()
}

fn limits() -> Limits {
    Limits {
        max_messages: 1 << 20,
        max_bytes: 1 << 30,
        fsync: false,
        segment_bytes: SEGMENT,
    }
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    v.retain(|p| p.to_string_lossy().ends_with(".seg"));
    v.sort();
    v
}

/// A frame of a segment file: where it starts, its total length and the message id it carries.
struct Frame {
    at: usize,
    len: usize,
    id: usize,
}

fn frames(bytes: &[u8]) -> Vec<Frame> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos + FRAME_HEADER <= bytes.len() {
        let body_len =
            u32::from_le_bytes(bytes[pos..pos + 4].try_into().unwrap_or_default()) as usize;
        let body = &bytes[pos + FRAME_HEADER..pos + FRAME_HEADER + body_len];
        let topic_len = u16::from_le_bytes([body[9], body[10]]) as usize;
        let p = &body[11 + topic_len..];
        let id = std::str::from_utf8(p)
            .ok()
            .and_then(|s| s.strip_prefix("m-")?.split('|').next()?.parse().ok())
            .unwrap_or(usize::MAX);
        out.push(Frame {
            at: pos,
            len: FRAME_HEADER + body_len,
            id,
        });
        pos += FRAME_HEADER + body_len;
    }
    out
}

/// Chooses a frame of a segment and an offset in it.
type Pick<'a> = &'a dyn Fn(&[Frame], &mut StdRng) -> (usize, usize);

/// Damages the buffer in `dir` per `class`; answers the ids of the records the damage touched.
fn damage(dir: &Path, class: Class, rng: &mut StdRng) -> BTreeSet<usize> {
    let segs = segments(dir);
    let mut touched = BTreeSet::new();
    // Frame layouts as written, before any damage (a flipped length field would mislead a later parse).
    let layouts: std::collections::BTreeMap<PathBuf, Vec<Frame>> = segs
        .iter()
        .map(|p| (p.clone(), frames(&std::fs::read(p).unwrap_or_default())))
        .collect();
    let mut flip = |path: &Path, pick: Pick<'_>, rng: &mut StdRng| {
        let mut bytes = std::fs::read(path).unwrap_or_default();
        let fs = &layouts[path];
        let (frame, offset) = pick(fs, rng);
        let f = &fs[frame];
        bytes[f.at + offset] ^= rng.random_range(1..=255u8);
        touched.insert(f.id);
        std::fs::write(path, bytes).unwrap_or_default();
    };
    let inner =
        |segs: &[PathBuf], rng: &mut StdRng| segs[rng.random_range(0..segs.len() - 1)].clone();
    let any_frame = |fs: &[Frame], rng: &mut StdRng| rng.random_range(0..fs.len());
    match class {
        Class::Length => flip(
            &inner(&segs, rng),
            &|fs, rng| (any_frame(fs, rng), rng.random_range(0..4)),
            rng,
        ),
        Class::Checksum => flip(
            &inner(&segs, rng),
            &|fs, rng| (any_frame(fs, rng), rng.random_range(4..8)),
            rng,
        ),
        Class::BodyHeader => flip(
            &inner(&segs, rng),
            &|fs, rng| (any_frame(fs, rng), rng.random_range(8..8 + 13)),
            rng,
        ),
        Class::Payload => flip(
            &inner(&segs, rng),
            &|fs, rng| {
                let i = any_frame(fs, rng);
                (i, rng.random_range(8 + 14..fs[i].len))
            },
            rng,
        ),
        Class::SegmentStart => {
            let s = segs[rng.random_range(1..segs.len())].clone();
            flip(
                &s,
                &|_, rng| (0, rng.random_range(0..FRAME_HEADER + 12)),
                rng,
            )
        }
        Class::SegmentEnd => flip(
            &inner(&segs, rng),
            &|fs, rng| (fs.len() - 1, rng.random_range(0..fs[fs.len() - 1].len)),
            rng,
        ),
        Class::TornTail => {
            let last = segs[segs.len() - 1].clone();
            let bytes = std::fs::read(&last).unwrap_or_default();
            let fs = frames(&bytes);
            let f = &fs[fs.len() - 1];
            let cut = f.at + rng.random_range(1..f.len);
            touched.insert(f.id);
            std::fs::write(&last, &bytes[..cut]).unwrap_or_default();
        }
        Class::Scattered => {
            for _ in 0..5 {
                let s = segs[rng.random_range(0..segs.len())].clone();
                flip(
                    &s,
                    &|fs, rng| {
                        let i = any_frame(fs, rng);
                        (i, rng.random_range(0..fs[i].len))
                    },
                    rng,
                );
            }
        }
        Class::ZeroRun => {
            let s = inner(&segs, rng);
            let mut bytes = std::fs::read(&s).unwrap_or_default();
            let start = rng.random_range(0..bytes.len() - 64);
            for f in frames(&bytes) {
                if f.at < start + 64 && start < f.at + f.len {
                    touched.insert(f.id);
                }
            }
            bytes[start..start + 64].fill(0);
            std::fs::write(&s, bytes).unwrap_or_default();
        }
    }
    touched
}

#[derive(Default)]
struct Tally {
    attempts: usize,
    written: usize,
    held: usize,
    lost: usize,
    touched: usize,
    violations: Vec<String>,
}

fn round(class: Class, rng: &mut StdRng, tally: &mut Tally) -> Result<(), String> {
    let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let dir = tmp.path().join("buffer");
    {
        let store = Store::open(&dir, limits()).map_err(|e| e.to_string())?;
        for chunk in (0..MESSAGES).collect::<Vec<_>>().chunks(50) {
            let recs: Vec<Record> = chunk.iter().map(|&i| record(i)).collect();
            store.append(&recs).map_err(|e| e.to_string())?;
        }
    }
    let touched = damage(&dir, class, rng);
    let store = Store::open(&dir, limits()).map_err(|e| format!("reopen: {e}"))?;
    let mut got = Vec::new();
    let mut next = 0;
    while let Some((seq, rec)) = store.read_from(next).map_err(|e| e.to_string())? {
        match id_of(&rec) {
            Some(id) if rec == record(id) => got.push(id),
            _ => tally.violations.push(format!(
                "{class:?}: seq {seq} delivered a record that was never written"
            )),
        }
        store.ack(seq).map_err(|e| e.to_string())?;
        next = seq + 1;
    }
    let held: BTreeSet<usize> = got.iter().copied().collect();
    if held.len() != got.len() {
        tally.violations.push(format!("{class:?}: duplicates"));
    }
    if !got.windows(2).all(|w| w[0] < w[1]) {
        tally.violations.push(format!("{class:?}: out of order"));
    }
    let lost: Vec<usize> = (0..MESSAGES).filter(|i| !held.contains(i)).collect();
    for id in &lost {
        if !touched.contains(id) {
            tally.violations.push(format!(
                "{class:?}: message {id} lost but not damaged (damaged: {touched:?})"
            ));
        }
    }
    let stats = store.stats();
    // A torn tail's partial frame is not counted as corrupt: it was a write that never completed.
    let counted = if matches!(class, Class::TornTail) {
        0
    } else {
        lost.len() as u64
    };
    if stats.corrupt != counted || stats.buffered != 0 {
        tally.violations.push(format!(
            "{class:?}: stats say corrupt {} buffered {} for {} lost",
            stats.corrupt,
            stats.buffered,
            lost.len()
        ));
    }
    tally.attempts += 1;
    tally.written += MESSAGES;
    tally.held += held.len();
    tally.lost += lost.len();
    tally.touched += touched.len();
    Ok(())
}

fn main() {
    let mut args = std::env::args().skip(1);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(20);
    let seed: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(10);
    let mut rng = StdRng::seed_from_u64(seed);
    println!(
        "bridge buffer fault injection: {rounds} rounds per class, {MESSAGES} messages each, seed {seed}"
    );
    println!(
        "{:<14} {:>8} {:>9} {:>9} {:>6} {:>8} {:>10}",
        "class", "attempts", "messages", "held", "lost", "damaged", "violations"
    );
    let mut failed = false;
    for class in CLASSES {
        let mut t = Tally::default();
        for _ in 0..rounds {
            if let Err(e) = round(class, &mut rng, &mut t) {
                t.violations.push(format!("{class:?}: {e}"));
            }
        }
        println!(
            "{:<14} {:>8} {:>9} {:>9} {:>6} {:>8} {:>10}",
            format!("{class:?}"),
            t.attempts,
            t.written,
            t.held,
            t.lost,
            t.touched,
            t.violations.len()
        );
        for v in t.violations.iter().take(5) {
            println!("    {v}");
        }
        failed |= !t.violations.is_empty();
    }
    std::process::exit(i32::from(failed));
}
