//! Console and /dev/kmsg logging for PID 1.
//!
//! PID 1 cannot rely on anything being set up: the console is whatever fd 2 the kernel gave us, and /dev/kmsg
//! only exists once devtmpfs is mounted. Each line goes to stderr prefixed with the monotonic (boot) clock, so it
//! lines up with the kernel's own timestamps, and, once enabled, to /dev/kmsg where `dmesg` and the master's log
//! API can read it. Writing never fails loudly: a log line that cannot be written is dropped.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use nix::time::{ClockId, clock_gettime};

/// The kernel log, and the console log level: records below it the kernel echoes to the console itself, so
/// those are not written to stderr as well.
struct Kmsg {
    file: File,
    console_level: u8,
}

static KMSG: Mutex<Option<Kmsg>> = Mutex::new(None);

/// Records logged before /dev/kmsg exists (the first mounts), replayed into it once it is opened.
static EARLY: Mutex<Vec<String>> = Mutex::new(Vec::new());
const EARLY_MAX: usize = 200;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Error,
    Warn,
    Info,
}

impl Level {
    fn name(self) -> &'static str {
        match self {
            Level::Error => "ERROR",
            Level::Warn => "WARN",
            Level::Info => "INFO",
        }
    }
    fn severity(self) -> u8 {
        match self {
            Level::Error => 3,
            Level::Warn => 4,
            Level::Info => 6,
        }
    }
    /// syslog priority for /dev/kmsg (facility daemon = 3 << 3).
    fn kmsg_priority(self) -> u8 {
        24 + self.severity()
    }
}

/// Starts copying log lines to the kernel log at `path` (normally /dev/kmsg). Returns whether it could be opened.
///
/// The kernel rate-limits /dev/kmsg writers (10 lines per 5 s by default), which would drop most of the boot
/// log; as PID 1 we own the system, so the limit is lifted through /proc/sys/kernel/printk_devkmsg.
pub fn enable_kmsg(path: &Path) -> bool {
    let _ = std::fs::write("/proc/sys/kernel/printk_devkmsg", "on\n");
    let console_level = std::fs::read_to_string("/proc/sys/kernel/printk")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    match OpenOptions::new().write(true).open(path) {
        Ok(mut file) => {
            if let Ok(mut early) = EARLY.lock() {
                for record in early.drain(..) {
                    let _ = file.write_all(record.as_bytes());
                }
            }
            if let Ok(mut guard) = KMSG.lock() {
                *guard = Some(Kmsg {
                    file,
                    console_level,
                });
            }
            true
        }
        Err(err) => {
            write_line(
                Level::Warn,
                format_args!(
                    "cannot open {}: {err}; logging to the console only",
                    path.display()
                ),
            );
            false
        }
    }
}

/// Stops writing to the kernel log (before /dev is unmounted at shutdown).
pub fn disable_kmsg() {
    if let Ok(mut guard) = KMSG.lock() {
        *guard = None;
    }
}

pub fn write_line(level: Level, args: fmt::Arguments<'_>) {
    let (secs, micros) = match clock_gettime(ClockId::CLOCK_MONOTONIC) {
        Ok(ts) => (ts.tv_sec(), ts.tv_nsec() / 1000),
        Err(_) => (0, 0),
    };
    let message = args.to_string();
    let line = format!(
        "[{secs:5}.{micros:06}] baetyl-init: {} {message}\n",
        level.name()
    );
    let mut echoed_by_kernel = false;
    // One write(2) per record: /dev/kmsg treats each write as one message.
    let record = format!("<{}>baetyl-init: {message}\n", level.kmsg_priority());
    if let Ok(mut guard) = KMSG.lock() {
        match guard.as_mut() {
            Some(kmsg) => {
                echoed_by_kernel = kmsg.file.write_all(record.as_bytes()).is_ok()
                    && level.severity() < kmsg.console_level;
            }
            None => {
                if let Ok(mut early) = EARLY.lock()
                    && early.len() < EARLY_MAX
                {
                    early.push(record);
                }
            }
        }
    }
    if !echoed_by_kernel {
        let mut stderr = std::io::stderr().lock();
        let _ = stderr.write_all(line.as_bytes());
        let _ = stderr.flush();
    }
}

macro_rules! info {
    ($($arg:tt)*) => { $crate::log::write_line($crate::log::Level::Info, format_args!($($arg)*)) };
}
macro_rules! warning {
    ($($arg:tt)*) => { $crate::log::write_line($crate::log::Level::Warn, format_args!($($arg)*)) };
}
macro_rules! error {
    ($($arg:tt)*) => { $crate::log::write_line($crate::log::Level::Error, format_args!($($arg)*)) };
}

pub(crate) use {error, info, warning};
