//! A container's figures for inspect, read from its cgroup (the path its runtime spec names): from the
//! unified hierarchy (cgroup v2, a device) or from the v1 controllers (hosts still on a hybrid layout). The
//! files are read directly rather than through containerd's task metrics, whose types (cgroups v1/v2
//! `Metrics`) the client crate does not carry.

use std::path::PathBuf;

const ROOT: &str = "/sys/fs/cgroup";

pub struct ContainerCgroup {
    /// The path under the hierarchy's root, without the leading `/`.
    rel: String,
    v2: bool,
}

fn read_u64(path: PathBuf) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

impl ContainerCgroup {
    pub fn new(cgroups_path: &str) -> Self {
        ContainerCgroup {
            rel: cgroups_path.trim_start_matches('/').to_string(),
            v2: std::path::Path::new(ROOT)
                .join("cgroup.controllers")
                .is_file(),
        }
    }

    fn v1(&self, controller: &str) -> PathBuf {
        PathBuf::from(ROOT).join(controller).join(&self.rel)
    }

    fn unified(&self) -> super::super::cgroup::Cgroup {
        super::super::cgroup::Cgroup::at(PathBuf::from(ROOT).join(&self.rel))
    }

    pub fn cpu_seconds(&self) -> Option<f64> {
        if self.v2 {
            self.unified().cpu_usage_usec().map(|u| u as f64 / 1e6)
        } else {
            read_u64(self.v1("cpuacct").join("cpuacct.usage")).map(|ns| ns as f64 / 1e9)
        }
    }

    pub fn memory(&self) -> Option<u64> {
        if self.v2 {
            self.unified().memory_current()
        } else {
            read_u64(self.v1("memory").join("memory.usage_in_bytes"))
        }
    }

    pub fn processes(&self) -> u64 {
        let procs = if self.v2 {
            PathBuf::from(ROOT).join(&self.rel).join("cgroup.procs")
        } else {
            self.v1("pids").join("cgroup.procs")
        };
        std::fs::read_to_string(procs)
            .map(|s| s.lines().count() as u64)
            .unwrap_or(0)
    }
}
