//! cgroup v2 groups for instances: they hold `resources` limits when the controllers are available, and
//! they let stop kill every process of an instance, even ones that left its process group.
//!
//! Layout: `<master's own cgroup>/baetyl-<hash of work dir>/<service>.<instance>`.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::config::Resources;

#[derive(Debug, Clone)]
pub struct CgroupRoot {
    base: PathBuf,
    controllers: BTreeSet<String>,
}

impl CgroupRoot {
    /// Finds the cgroup v2 hierarchy and makes the master's group for this work dir.
    /// An error says why instances will not get cgroups (no v2 hierarchy, not writable).
    pub fn detect(workdir: &Path) -> Result<CgroupRoot, String> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
        let (mount_point, mount_root) =
            find_cgroup2(&mountinfo).ok_or("no cgroup v2 hierarchy is mounted")?;
        let own = std::fs::read_to_string("/proc/self/cgroup")
            .map_err(|e| format!("cannot read /proc/self/cgroup: {e}"))?;
        let own = own
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .ok_or("this process has no cgroup v2 membership")?
            .trim()
            .to_string();
        let rel = own
            .strip_prefix(&mount_root)
            .unwrap_or(&own)
            .trim_start_matches('/')
            .to_string();
        let parent = mount_point.join(rel);
        // Best effort: hand the controllers down; this fails when our own group holds processes (v2's
        // no-internal-processes rule) and then limits are simply not available.
        for c in ["cpu", "cpuset", "memory", "pids"] {
            let _ = write_file(&parent.join("cgroup.subtree_control"), &format!("+{c}"));
        }
        let base = parent.join(format!(
            "baetyl-{:016x}",
            fnv1a(workdir.to_string_lossy().as_bytes())
        ));
        std::fs::create_dir_all(&base)
            .map_err(|e| format!("cannot create {}: {e}", base.display()))?;
        let available =
            std::fs::read_to_string(base.join("cgroup.controllers")).unwrap_or_default();
        for c in available.split_whitespace() {
            let _ = write_file(&base.join("cgroup.subtree_control"), &format!("+{c}"));
        }
        let controllers = std::fs::read_to_string(base.join("cgroup.subtree_control"))
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_string)
            .collect();
        Ok(CgroupRoot { base, controllers })
    }

    pub fn base(&self) -> &Path {
        &self.base
    }

    /// The controllers `resources` would need that this hierarchy cannot give.
    pub fn missing_for(&self, res: &Resources) -> Vec<&'static str> {
        let mut need = Vec::new();
        if let Some(cpu) = &res.cpu {
            if cpu.cpus.is_some() {
                need.push("cpu");
            }
            if cpu.setcpus.is_some() {
                need.push("cpuset");
            }
        }
        if res
            .memory
            .as_ref()
            .is_some_and(|m| m.limit.is_some() || m.swap.is_some())
        {
            need.push("memory");
        }
        if res.pids.as_ref().is_some_and(|p| p.limit.is_some()) {
            need.push("pids");
        }
        need.into_iter()
            .filter(|c| !self.controllers.contains(*c))
            .collect()
    }

    /// Creates (or empties and reuses) the group of one instance.
    pub fn create(&self, name: &str) -> std::io::Result<Cgroup> {
        let path = self.base.join(name);
        let cg = Cgroup { path };
        if cg.path.exists() {
            cg.kill();
        } else {
            std::fs::create_dir(&cg.path)?;
        }
        Ok(cg)
    }
}

#[derive(Debug, Clone)]
pub struct Cgroup {
    path: PathBuf,
}

impl Cgroup {
    pub fn at(path: PathBuf) -> Self {
        Cgroup { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn procs_file(&self) -> PathBuf {
        self.path.join("cgroup.procs")
    }

    /// Writes the limits whose controllers are available (`missing` are skipped: the caller warned about
    /// them); answers what could not be applied.
    pub fn apply(&self, res: &Resources, missing: &[&str]) -> Vec<String> {
        let mut failed = Vec::new();
        let mut set = |file: &str, value: String| {
            let controller = file.split('.').next().unwrap_or(file);
            if missing.contains(&controller) {
                return;
            }
            if let Err(e) = write_file(&self.path.join(file), &value) {
                failed.push(format!("{file}={value}: {e}"));
            }
        };
        if let Some(cpu) = &res.cpu {
            if let Some(cpus) = cpu.cpus {
                let period = 100_000u64;
                set(
                    "cpu.max",
                    format!("{} {period}", ((cpus * period as f64) as u64).max(1000)),
                );
            }
            if let Some(s) = &cpu.setcpus {
                set("cpuset.cpus", s.clone());
            }
        }
        if let Some(mem) = &res.memory {
            if let Some(l) = mem.limit {
                set("memory.max", l.0.to_string());
            }
            if let Some(s) = mem.swap {
                set("memory.swap.max", s.0.to_string());
            }
        }
        if let Some(l) = res.pids.as_ref().and_then(|p| p.limit) {
            set("pids.max", l.to_string());
        }
        failed
    }

    pub fn pids(&self) -> Vec<i32> {
        std::fs::read_to_string(self.procs_file())
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }

    /// SIGKILLs every process in the group (cgroup.kill, or one by one on kernels before 5.14).
    pub fn kill(&self) {
        if write_file(&self.path.join("cgroup.kill"), "1").is_err() {
            for pid in self.pids() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }

    pub fn memory_current(&self) -> Option<u64> {
        std::fs::read_to_string(self.path.join("memory.current"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    pub fn cpu_usage_usec(&self) -> Option<u64> {
        let stat = std::fs::read_to_string(self.path.join("cpu.stat")).ok()?;
        stat.lines()
            .find_map(|l| l.strip_prefix("usage_usec "))
            .and_then(|v| v.trim().parse().ok())
    }

    /// Removes the group once its processes are gone (retries briefly: the kernel empties it asynchronously).
    pub async fn remove(&self) {
        for _ in 0..50 {
            match std::fs::remove_dir(&self.path) {
                Ok(()) => return,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            }
        }
        tracing::warn!(cgroup = %self.path.display(), "cgroup still busy; left in place");
    }
}

fn write_file(path: &Path, value: &str) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new().write(true).open(path)?;
    f.write_all(value.as_bytes())
}

/// The mount point and mount root of the cgroup2 hierarchy in a mountinfo text.
fn find_cgroup2(mountinfo: &str) -> Option<(PathBuf, String)> {
    mountinfo.lines().find_map(|line| {
        let (pre, post) = line.split_once(" - ")?;
        let fstype = post.split_whitespace().next()?;
        if fstype != "cgroup2" {
            return None;
        }
        let fields: Vec<&str> = pre.split_whitespace().collect();
        Some((PathBuf::from(fields.get(4)?), fields.get(3)?.to_string()))
    })
}

/// FNV-1a: a stable name for the work dir's group across master versions (std's hasher is not stable).
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_in_hybrid_and_unified_layouts() {
        let hybrid = "30 25 0:26 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n\
                      31 25 0:27 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(
            find_cgroup2(hybrid),
            Some((PathBuf::from("/sys/fs/cgroup/unified"), "/".into()))
        );
        let unified =
            "35 24 0:30 / /sys/fs/cgroup rw,nosuid shared:9 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            find_cgroup2(unified),
            Some((PathBuf::from("/sys/fs/cgroup"), "/".into()))
        );
        assert_eq!(find_cgroup2("1 2 0:1 / / rw - ext4 /dev/vda rw\n"), None);
    }

    #[test]
    fn fnv_is_stable() {
        assert_eq!(fnv1a(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a(b"a"), 0xaf63dc4c8601ec8c);
    }
}
