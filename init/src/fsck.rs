//! Checking the data partition before it is mounted: Debian's e2fsck (shipped in the image's root with the
//! libraries it needs), in preen mode by default, and its exit status read as e2fsck(8) defines it: a sum of
//! 1 (errors corrected), 2 (corrected, reboot wanted), 4 (errors left uncorrected), 8 (operational error),
//! 16 (usage error), 32 (cancelled), 128 (shared-library error).
//!
//! 0 and 1 mount. 2 asks for a reboot because a *mounted* filesystem was repaired under the kernel's feet; the
//! data partition is never mounted while it is checked, so nothing in memory is stale: init checks once more
//! and mounts when that second pass is clean (a reboot could loop). 4 and above leave the device in safe mode.

use std::path::Path;

use crate::config::CheckMode;

/// How a checker run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(String),
}

/// A finished checker run: how it ended and what it printed (stdout and stderr, bounded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckerRun {
    pub exit: Exit,
    pub output: String,
}

/// What a check means for the boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Clean,
    Repaired,
    /// Exit status 2: repaired, and e2fsck would reboot a system that had it mounted.
    RepairedRebootWanted,
    /// Anything else: the filesystem must not be used; the text says why.
    Failed(String),
}

/// The longest checker output kept for the log (a badly damaged filesystem makes e2fsck very talkative).
pub const OUTPUT_MAX: usize = 16 * 1024;

/// The checker's arguments for `mode` on `device`; None when the mode is `off` or the filesystem is not
/// ext2/3/4.
pub fn arguments(mode: CheckMode, fstype: &str, device: &Path) -> Option<Vec<String>> {
    if !matches!(fstype, "ext2" | "ext3" | "ext4") {
        return None;
    }
    let flag = match mode {
        CheckMode::Off => return None,
        CheckMode::Preen => "-p",
        CheckMode::Yes => "-y",
    };
    Some(vec![flag.to_string(), device.display().to_string()])
}

/// Reads a checker's exit as e2fsck(8) defines it.
pub fn verdict(exit: &Exit) -> Verdict {
    let code = match exit {
        Exit::Code(c) => *c,
        Exit::Signal(s) => return Verdict::Failed(format!("e2fsck was killed by {s}")),
    };
    if !(0..4).contains(&code) {
        return Verdict::Failed(format!("e2fsck exit status {code}: {}", describe(code)));
    }
    match code {
        0 => Verdict::Clean,
        1 => Verdict::Repaired,
        _ => Verdict::RepairedRebootWanted,
    }
}

/// The meaning of an e2fsck exit status (the sum of its bits).
pub fn describe(code: i32) -> String {
    const BITS: [(i32, &str); 8] = [
        (1, "errors corrected"),
        (2, "errors corrected, reboot wanted"),
        (4, "errors left uncorrected"),
        (
            8,
            "operational error (no usable filesystem found, or the device cannot be read)",
        ),
        (16, "usage or syntax error"),
        (32, "cancelled"),
        (64, "unknown status bit 64"),
        (128, "shared-library error"),
    ];
    if code == 0 {
        return "no errors".into();
    }
    if code < 0 {
        return format!("unknown status {code}");
    }
    let parts: Vec<&str> = BITS
        .iter()
        .filter(|(bit, _)| code & bit != 0)
        .map(|(_, what)| *what)
        .collect();
    if parts.is_empty() {
        format!("unknown status {code}")
    } else {
        parts.join(", ")
    }
}

/// The last lines of `text` that fit in [`OUTPUT_MAX`] bytes (the summary e2fsck prints comes last).
pub fn bounded(text: &str) -> String {
    if text.len() <= OUTPUT_MAX {
        return text.to_string();
    }
    let mut start = text.len() - OUTPUT_MAX;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    let tail = &text[start..];
    let tail = tail.split_once('\n').map(|(_, rest)| rest).unwrap_or(tail);
    format!("[... {} bytes cut ...]\n{tail}", start)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn exit_statuses_are_read_as_e2fsck_defines_them() {
        assert_eq!(verdict(&Exit::Code(0)), Verdict::Clean);
        assert_eq!(verdict(&Exit::Code(1)), Verdict::Repaired);
        assert_eq!(verdict(&Exit::Code(2)), Verdict::RepairedRebootWanted);
        assert_eq!(verdict(&Exit::Code(3)), Verdict::RepairedRebootWanted);
        match verdict(&Exit::Code(4)) {
            Verdict::Failed(why) => assert!(why.contains("errors left uncorrected"), "{why}"),
            other => panic!("{other:?}"),
        }
        match verdict(&Exit::Code(12)) {
            Verdict::Failed(why) => {
                assert!(why.contains("exit status 12"), "{why}");
                assert!(why.contains("uncorrected, operational error"), "{why}");
            }
            other => panic!("{other:?}"),
        }
        match verdict(&Exit::Signal("SIGKILL".into())) {
            Verdict::Failed(why) => assert!(why.contains("killed by SIGKILL"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(describe(128), "shared-library error");
    }

    #[test]
    fn arguments_follow_the_mode_and_skip_other_filesystems() {
        let dev = PathBuf::from("/dev/vda4");
        assert_eq!(
            arguments(CheckMode::Preen, "ext4", &dev),
            Some(vec!["-p".to_string(), "/dev/vda4".into()])
        );
        assert_eq!(
            arguments(CheckMode::Yes, "ext2", &dev),
            Some(vec!["-y".to_string(), "/dev/vda4".into()])
        );
        assert_eq!(arguments(CheckMode::Off, "ext4", &dev), None);
        assert_eq!(arguments(CheckMode::Preen, "xfs", &dev), None);
    }

    #[test]
    fn long_output_keeps_its_end() {
        let long: String = (0..5000).map(|i| format!("line {i}\n")).collect();
        let b = bounded(&long);
        assert!(b.len() <= OUTPUT_MAX + 40, "{}", b.len());
        assert!(b.starts_with("[... "), "{}", &b[..40]);
        assert!(b.ends_with("line 4999\n"));
        assert_eq!(bounded("short\n"), "short\n");
    }
}
