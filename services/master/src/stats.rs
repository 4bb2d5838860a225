//! Real figures for inspect, read from /proc and statvfs: the host's CPU, memory, disk and network,
//! and a process's CPU time, start time and resident memory.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use serde_json::{Value, json};

/// An instance's CPU use between two samples, in percent of one CPU.
#[derive(Debug, Default)]
pub struct CpuSampler(Mutex<Option<(std::time::Instant, f64)>>);

impl CpuSampler {
    /// The use since the previous call, given the total CPU time now (0 at the first call).
    pub fn percent(&self, cpu_seconds: f64) -> f64 {
        let now = std::time::Instant::now();
        let mut last = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let percent = match *last {
            Some((t, c)) if now > t => {
                ((cpu_seconds - c).max(0.0) / (now - t).as_secs_f64() * 10000.0).round() / 100.0
            }
            _ => 0.0,
        };
        *last = Some((now, cpu_seconds));
        percent
    }
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`), for /proc/<pid>/stat times.
pub fn clock_ticks() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map(|v| v as f64)
        .unwrap_or(100.0)
}

fn page_size() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .map(|v| v as u64)
        .unwrap_or(4096)
}

/// Fields of /proc/<pid>/stat after the command name (field 3 onwards), which may contain spaces.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &text[text.rfind(')')? + 1..];
    Some(after.split_whitespace().map(str::to_string).collect())
}

/// The process's start time in clock ticks since boot: with the pid, it names one process for good.
pub fn process_start_ticks(pid: u32) -> Option<u64> {
    // Field 22 overall; index 19 after the command name.
    stat_fields(pid)?.get(19)?.parse().ok()
}

/// Whether the process exists and is not a zombie.
pub fn process_alive(pid: u32) -> bool {
    stat_fields(pid)
        .and_then(|f| f.first().cloned())
        .is_some_and(|s| s != "Z" && s != "X")
}

/// User + system CPU seconds of a process.
pub fn process_cpu_seconds(pid: u32) -> Option<f64> {
    let f = stat_fields(pid)?;
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

/// Resident memory of a process in bytes.
pub fn process_rss(pid: u32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * page_size())
}

/// Parses /proc/meminfo into bytes.
fn meminfo(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            let kb: u64 = v.split_whitespace().next()?.parse().ok()?;
            Some((k.to_string(), kb * 1024))
        })
        .collect()
}

/// The aggregate `cpu` line of /proc/stat: (busy, total) jiffies.
fn cpu_times(text: &str) -> Option<(u64, u64)> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().sum();
    // idle + iowait are not busy.
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}

/// Per-interface counters from /proc/net/dev.
fn net_dev(text: &str) -> Vec<Value> {
    text.lines()
        .skip(2)
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let v: Vec<u64> = rest.split_whitespace().filter_map(|x| x.parse().ok()).collect();
            Some(json!({
                "name": name.trim(),
                "bytes_recv": v.first()?, "packets_recv": v.get(1)?, "errin": v.get(2)?, "dropin": v.get(3)?,
                "bytes_sent": v.get(8)?, "packets_sent": v.get(9)?, "errout": v.get(10)?, "dropout": v.get(11)?,
            }))
        })
        .collect()
}

fn percent(part: f64, whole: f64) -> f64 {
    if whole <= 0.0 {
        0.0
    } else {
        (part / whole * 10000.0).round() / 100.0
    }
}

/// Samples the host; keeps the previous CPU reading so usage is over the interval between inspects.
#[derive(Default)]
pub struct HostSampler {
    last_cpu: Mutex<Option<(u64, u64)>>,
}

impl HostSampler {
    pub fn sample(&self, disk_path: &Path) -> Value {
        json!({
            "host_stats": host_stats(),
            "mem_stats": mem_stats(),
            "cpu_stats": self.cpu_stats(),
            "disk_stats": disk_stats(disk_path),
            "net_stats": net_stats(),
        })
    }

    fn cpu_stats(&self) -> Value {
        let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let now = cpu_times(&text);
        let mut last = self.last_cpu.lock().unwrap_or_else(|p| p.into_inner());
        let used = match (now, *last) {
            (Some((b1, t1)), Some((b0, t0))) if t1 > t0 => {
                percent((b1 - b0) as f64, (t1 - t0) as f64)
            }
            (Some((b, t)), _) => percent(b as f64, t as f64),
            _ => 0.0,
        };
        *last = now;
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name") || l.starts_with("Model"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default();
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        let loads: Vec<f64> = load
            .split_whitespace()
            .take(3)
            .filter_map(|x| x.parse().ok())
            .collect();
        json!({"used_percent": used, "cores": cores, "model_name": model, "load_avg": loads})
    }
}

fn host_stats() -> Value {
    let uname = nix::sys::utsname::uname().ok();
    let s = |f: fn(&nix::sys::utsname::UtsName) -> &std::ffi::OsStr| {
        uname
            .as_ref()
            .map(|u| f(u).to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let uptime: f64 = std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|t| t.split_whitespace().next().and_then(|x| x.parse().ok()))
        .unwrap_or(0.0);
    let procs = std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .bytes()
                        .all(|b| b.is_ascii_digit())
                })
                .count()
        })
        .unwrap_or(0);
    json!({
        "hostname": s(|u| u.nodename()),
        "os": std::env::consts::OS,
        "kernel_version": s(|u| u.release()),
        "arch": s(|u| u.machine()),
        "uptime": uptime as u64,
        "procs": procs,
    })
}

fn mem_stats() -> Value {
    let m = meminfo(&std::fs::read_to_string("/proc/meminfo").unwrap_or_default());
    let total = m.get("MemTotal").copied().unwrap_or(0);
    let free = m.get("MemFree").copied().unwrap_or(0);
    let available = m.get("MemAvailable").copied().unwrap_or(free);
    let used = total.saturating_sub(available);
    json!({
        "total": total, "free": free, "available": available, "used": used,
        "used_percent": percent(used as f64, total as f64),
        "swap_total": m.get("SwapTotal").copied().unwrap_or(0),
        "swap_free": m.get("SwapFree").copied().unwrap_or(0),
    })
}

fn disk_stats(path: &Path) -> Value {
    match nix::sys::statvfs::statvfs(path) {
        Ok(s) => {
            let frsize = s.fragment_size();
            let total = s.blocks() * frsize;
            let free = s.blocks_available() * frsize;
            let used = total.saturating_sub(s.blocks_free() * frsize);
            json!({
                "path": path.display().to_string(), "total": total, "free": free, "used": used,
                "used_percent": percent(used as f64, (used + free) as f64),
                "inodes_total": s.files(), "inodes_free": s.files_free(),
            })
        }
        Err(e) => json!({"path": path.display().to_string(), "error": e.to_string()}),
    }
}

fn net_stats() -> Value {
    json!({"interfaces": net_dev(&std::fs::read_to_string("/proc/net/dev").unwrap_or_default())})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_formats() {
        let m = meminfo(
            "MemTotal:       16000 kB\nMemFree:         4000 kB\nMemAvailable:    8000 kB\n",
        );
        assert_eq!(m["MemTotal"], 16000 * 1024);
        assert_eq!(m["MemAvailable"], 8000 * 1024);
        assert_eq!(
            cpu_times("cpu  10 0 10 70 10 0 0 0 0 0\ncpu0 1 2 3\n"),
            Some((20, 100))
        );
        let n = net_dev(
            "Inter-|   Receive\n face |bytes packets errs drop fifo frame compressed multicast|bytes\n  lo: 100 2 0 0 0 0 0 0 200 3 0 0 0 0 0 0\n",
        );
        assert_eq!(n[0]["name"], "lo");
        assert_eq!(n[0]["bytes_recv"], 100);
        assert_eq!(n[0]["bytes_sent"], 200);
    }

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        assert!(process_alive(me));
        assert!(process_start_ticks(me).is_some());
        assert!(process_rss(me).unwrap() > 0);
        assert!(process_cpu_seconds(me).is_some());
    }

    #[test]
    fn host_sample_has_real_figures() {
        let s = HostSampler::default().sample(Path::new("/"));
        assert!(s["mem_stats"]["total"].as_u64().unwrap() > 0);
        assert!(s["disk_stats"]["total"].as_u64().unwrap() > 0);
        assert!(s["cpu_stats"]["cores"].as_u64().unwrap() >= 1);
        assert!(!s["net_stats"]["interfaces"].as_array().unwrap().is_empty());
    }
}
