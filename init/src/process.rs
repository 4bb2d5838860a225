//! Processes: the signal watch, reaping, the master's restart backoff, and finding what is left to kill.

use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::Signal;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use crate::sys::PowerAction;

/// The documented signal mapping of PID 1.
///
/// | signal | action |
/// |---|---|
/// | SIGTERM, SIGINT (also Ctrl-Alt-Del) | orderly shutdown, then reboot |
/// | SIGPWR, SIGUSR2 | orderly shutdown, then power off |
///
/// The master's `PUT /v1/system/reboot` and `/v1/system/poweroff` send SIGTERM and SIGUSR2 to PID 1.
pub fn action_for_signal(sig: Signal) -> Option<PowerAction> {
    match sig {
        Signal::SIGTERM | Signal::SIGINT => Some(PowerAction::Reboot),
        Signal::SIGPWR | Signal::SIGUSR2 => Some(PowerAction::PowerOff),
        _ => None,
    }
}

/// The signals init reacts to, in the order they are checked when several are pending.
pub const SHUTDOWN_SIGNALS: [Signal; 4] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGPWR,
    Signal::SIGUSR2,
];

/// Signal handlers that set a flag and write to a self-pipe, so the main loop can sleep in poll(2) until a
/// signal (SIGCHLD included) or a restart deadline, without racing either.
pub struct SignalWatch {
    flags: Vec<(Signal, Arc<AtomicBool>)>,
    read: UnixStream,
}

impl SignalWatch {
    pub fn new() -> std::io::Result<Self> {
        let (read, write) = UnixStream::pair()?;
        read.set_nonblocking(true)?;
        write.set_nonblocking(true)?;
        let mut flags = Vec::new();
        for sig in SHUTDOWN_SIGNALS
            .into_iter()
            .chain([Signal::SIGCHLD, Signal::SIGHUP])
        {
            let flag = Arc::new(AtomicBool::new(false));
            // The flag handler is registered first, so the flag is set by the time the pipe wakes us.
            signal_hook::flag::register(sig as i32, Arc::clone(&flag))?;
            signal_hook::low_level::pipe::register(sig as i32, write.try_clone()?)?;
            flags.push((sig, flag));
        }
        Ok(SignalWatch { flags, read })
    }

    /// Whether `sig` arrived since the last call (clears it).
    pub fn take(&self, sig: Signal) -> bool {
        self.flags
            .iter()
            .find(|(s, _)| *s == sig)
            .is_some_and(|(_, f)| f.swap(false, Ordering::SeqCst))
    }

    /// The first pending shutdown request.
    pub fn take_shutdown(&self) -> Option<(Signal, PowerAction)> {
        SHUTDOWN_SIGNALS
            .into_iter()
            .find(|s| self.take(*s))
            .and_then(|s| action_for_signal(s).map(|a| (s, a)))
    }

    /// Sleeps until a signal arrives or `timeout` passes (`None`: no deadline).
    pub fn wait(&mut self, timeout: Option<Duration>) {
        let timeout = match timeout {
            None => PollTimeout::NONE,
            Some(d) => {
                let ms = d.as_millis().clamp(1, 60_000);
                PollTimeout::try_from(ms as u32).unwrap_or(PollTimeout::MAX)
            }
        };
        let mut fds = [PollFd::new(self.read.as_fd(), PollFlags::POLLIN)];
        let _ = poll(&mut fds, timeout);
        let mut buf = [0u8; 64];
        while let Ok(n) = self.read.read(&mut buf) {
            if n == 0 {
                break;
            }
        }
    }
}

/// Reaps every exited child without blocking. `children_left` is false once waitpid says there are none.
pub struct Reaped {
    pub exited: Vec<(Pid, WaitStatus)>,
    pub children_left: bool,
}

pub fn reap_all() -> Reaped {
    let mut exited = Vec::new();
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => {
                return Reaped {
                    exited,
                    children_left: true,
                };
            }
            Ok(status) => {
                if let Some(pid) = status.pid() {
                    exited.push((pid, status));
                }
            }
            Err(Errno::EINTR) => continue,
            Err(_) => {
                return Reaped {
                    exited,
                    children_left: false,
                };
            }
        }
    }
}

pub fn describe(status: &WaitStatus) -> String {
    match status {
        WaitStatus::Exited(_, code) => format!("exit status {code}"),
        WaitStatus::Signaled(_, sig, core) => {
            format!(
                "killed by {sig}{}",
                if *core { " (core dumped)" } else { "" }
            )
        }
        other => format!("{other:?}"),
    }
}

/// All processes below `root` in the process tree (from /proc), deepest last.
pub fn descendants(root: Pid) -> Vec<Pid> {
    let mut parent_of = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for e in entries.filter_map(|e| e.ok()) {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                && let Some(ppid) = stat_ppid(&stat)
            {
                parent_of.push((pid, ppid));
            }
        }
    }
    let mut out: Vec<Pid> = Vec::new();
    let mut frontier = vec![root.as_raw()];
    while let Some(p) = frontier.pop() {
        for &(child, ppid) in &parent_of {
            if ppid == p && !out.contains(&Pid::from_raw(child)) {
                out.push(Pid::from_raw(child));
                frontier.push(child);
            }
        }
    }
    out
}

/// The parent pid from a /proc/PID/stat line (after the parenthesised command, which may contain spaces).
pub fn stat_ppid(stat: &str) -> Option<i32> {
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(1)?.parse().ok()
}

/// Restart delays for the master: `min`, doubling up to `max`; a run longer than `stable_after` resets it.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    stable_after: Duration,
    failures: u32,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration, stable_after: Duration) -> Self {
        Backoff {
            min,
            max: max.max(min),
            stable_after,
            failures: 0,
        }
    }

    /// The delay before the next start, given how long the last run lasted.
    pub fn next_delay(&mut self, ran_for: Duration) -> Duration {
        if ran_for >= self.stable_after {
            self.failures = 0;
        }
        let factor = 1u32.checked_shl(self.failures.min(20)).unwrap_or(u32::MAX);
        self.failures = self.failures.saturating_add(1);
        self.min.saturating_mul(factor).min(self.max)
    }
}

/// Sets this process's RLIMIT_NOFILE (soft and hard) to `want`, capped at the kernel's fs.nr_open (read from
/// `nr_open`, a /proc/sys/fs/nr_open text). Children (the master, its services) inherit it. Where the hard limit
/// cannot be raised (a container without CAP_SYS_RESOURCE), the soft limit is raised to the hard one. The
/// limits set, and whether that was the fallback.
pub fn raise_nofile(want: u64, nr_open: Option<&str>) -> Result<(u64, bool), Errno> {
    let cap = nr_open
        .and_then(|t| t.trim().parse::<u64>().ok())
        .unwrap_or(1 << 20);
    let n = want.min(cap);
    if set_nofile(n, n).is_ok() {
        return Ok((n, false));
    }
    let mut cur = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit struct through the pointer, which points at `cur` on this frame.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut cur) } != 0 {
        return Err(Errno::last());
    }
    let hard: u64 = cur.rlim_max;
    set_nofile(hard.min(n), hard)?;
    Ok((hard.min(n), true))
}

fn set_nofile(soft: u64, hard: u64) -> Result<(), Errno> {
    let lim = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: setrlimit reads one rlimit struct through the pointer, which points at `lim` on this frame.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    if rc == 0 { Ok(()) } else { Err(Errno::last()) }
}

/// `start + d`, without the panic `Instant + Duration` has on overflow (a config can say `grace: 1000000000h`).
pub fn after(start: Instant, d: Duration) -> Instant {
    start
        .checked_add(d)
        .or_else(|| start.checked_add(Duration::from_secs(365 * 24 * 3600)))
        .unwrap_or(start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_mapping_is_the_documented_one() {
        assert_eq!(
            action_for_signal(Signal::SIGTERM),
            Some(PowerAction::Reboot)
        );
        assert_eq!(action_for_signal(Signal::SIGINT), Some(PowerAction::Reboot));
        assert_eq!(
            action_for_signal(Signal::SIGPWR),
            Some(PowerAction::PowerOff)
        );
        assert_eq!(
            action_for_signal(Signal::SIGUSR2),
            Some(PowerAction::PowerOff)
        );
        assert_eq!(action_for_signal(Signal::SIGHUP), None);
        assert_eq!(action_for_signal(Signal::SIGCHLD), None);
    }

    #[test]
    fn backoff_doubles_caps_and_resets_after_a_stable_run() {
        let s = Duration::from_secs;
        let mut b = Backoff::new(s(1), s(10), s(60));
        let quick = Duration::from_millis(100);
        let delays: Vec<_> = (0..6).map(|_| b.next_delay(quick)).collect();
        assert_eq!(delays, vec![s(1), s(2), s(4), s(8), s(10), s(10)]);
        assert_eq!(b.next_delay(s(61)), s(1));
        assert_eq!(b.next_delay(quick), s(2));
    }

    #[test]
    fn ppid_parsed_past_a_command_with_spaces() {
        assert_eq!(stat_ppid("42 (my (odd) cmd) S 7 42 42 0"), Some(7));
        assert_eq!(stat_ppid("garbage"), None);
    }

    #[test]
    fn signal_watch_sees_a_raised_signal() {
        let mut w = SignalWatch::new().unwrap();
        nix::sys::signal::raise(Signal::SIGUSR2).unwrap();
        w.wait(Some(Duration::from_secs(5)));
        assert_eq!(
            w.take_shutdown(),
            Some((Signal::SIGUSR2, PowerAction::PowerOff))
        );
        assert_eq!(w.take_shutdown(), None);
    }
}
