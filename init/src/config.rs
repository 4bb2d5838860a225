//! The init configuration: a YAML file in the image (`/etc/baetyl/init.yml`) plus `baetyl.*` overrides from the
//! kernel command line.
//!
//! Every key has a default, so a missing or empty file still boots a device that mounts the basics and starts
//! `/bin/baetyl master`. A file with a mistake is reported (file, key, expected) and init continues with the
//! defaults, because PID 1 refusing to boot leaves nobody to report the mistake to the cloud.
//!
//! Kernel command-line overrides (`key=value`, values with spaces in double quotes):
//!
//! | parameter | effect |
//! |---|---|
//! | `baetyl.config=PATH` | read this file instead of `/etc/baetyl/init.yml` |
//! | `baetyl.hostname=NAME` | hostname |
//! | `baetyl.reroot=auto\|always\|never` | re-root out of the initramfs |
//! | `baetyl.modules=a,b,c` | modules to load, in this order (replaces the list) |
//! | `baetyl.modules.dir=DIR` | where the `.ko` files are |
//! | `baetyl.root=LABEL\|off`, `baetyl.root.device=DEV\|PARTUUID=SSSSSSSS-PP`, `baetyl.root.fstype=T`, `baetyl.root.wait=10s` | switch from the initramfs into a read-only root filesystem |
//! | `baetyl.data.label=L`, `baetyl.data.device=DEV`, `baetyl.data.mountpoint=DIR`, `baetyl.data.fstype=T`, `baetyl.data.grow=0` | the data partition |
//! | `baetyl.data.check=preen\|yes\|off`, `baetyl.data.checker=PROG` | how the data partition is checked before it is mounted |
//! | `baetyl.net.address=10.0.2.15/24`, `baetyl.net.gateway=10.0.2.2`, `baetyl.net.interface=eth0` | static IPv4 |
//! | `baetyl.master=off` | do not start the master |
//! | `baetyl.master.command=PROG,ARG,...` | the master's command line, comma-separated |
//! | `baetyl.master.grace=30s` | how long the master may take to stop |
//! | `baetyl.master.nofile=N` | the descriptor limit (RLIMIT_NOFILE) of the master and its services |
//! | `baetyl.shutdown.grace=5s` | how long the remaining processes may take to stop |
//! | `baetyl.trial.timeout=10m`, `baetyl.trial.master_starts=4` | a boot on trial (a new OS): reboot when it is not marked good in time, or when the master had to be started this often |
//! | `baetyl.kmsg=0\|1` | copy the log to /dev/kmsg |

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use baetyl_sdk::config::HumanDuration;
use serde::Deserialize;

use crate::net::Ipv4Cidr;

pub const DEFAULT_CONFIG: &str = "/etc/baetyl/init.yml";

/// The master's default descriptor limit: systemd's default hard limit for services. Our services use epoll, so
/// a high soft limit is safe for them.
pub const DEFAULT_NOFILE: u64 = 524_288;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InitConfig {
    /// Hostname to set; none keeps the kernel's.
    pub hostname: Option<String>,
    pub reroot: RerootMode,
    /// A read-only root filesystem on a partition to switch into from the initramfs; none stays on the initramfs.
    pub root: Option<RootConfig>,
    pub modules: ModulesConfig,
    /// The data partition; none means volumes live on a tmpfs and do not survive a reboot.
    pub data: Option<DataConfig>,
    /// Read-only bind mounts (models, reference data shipped with the application).
    pub datasets: Vec<MountConfig>,
    /// Read-write bind mounts on the data partition (service state).
    pub volumes: Vec<MountConfig>,
    pub network: NetworkConfig,
    pub master: MasterConfig,
    pub shutdown: ShutdownConfig,
    /// A boot on trial (systemd-boot counted its entry: a newly installed OS).
    pub trial: TrialConfig,
    /// Copy the log to /dev/kmsg.
    pub kmsg: bool,
}

impl Default for InitConfig {
    fn default() -> Self {
        InitConfig {
            hostname: Some("baetyl".into()),
            reroot: RerootMode::Auto,
            root: None,
            modules: ModulesConfig::default(),
            data: Some(DataConfig::default()),
            datasets: Vec::new(),
            volumes: Vec::new(),
            network: NetworkConfig::default(),
            master: MasterConfig::default(),
            shutdown: ShutdownConfig::default(),
            trial: TrialConfig::default(),
            kmsg: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RerootMode {
    /// Re-root when `/` is an initramfs (ramfs or tmpfs).
    Auto,
    Always,
    Never,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ModulesConfig {
    /// Directory holding the modules; default `/lib/modules/$(uname -r)`.
    pub dir: Option<PathBuf>,
    /// Module names (`virtio_net`) or paths (`kernel/drivers/net/virtio_net.ko`), in dependency order.
    pub load: Vec<String>,
}

/// The root filesystem init switches into (switch_root): always mounted read-only.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RootConfig {
    /// GPT partition name or filesystem label (the same lookup as the data partition's).
    pub label: Option<String>,
    /// An explicit block device (`/dev/loop3`), or `PARTUUID=SSSSSSSS-PP` (an MBR partition: the disk signature
    /// and the partition number, as the Raspberry Pi card's cmdline.txt names its slot's root); takes precedence
    /// over `label`.
    pub device: Option<PathBuf>,
    pub fstype: String,
    /// How long to wait for the device to appear (drivers probe asynchronously).
    pub wait: HumanDuration,
}

impl Default for RootConfig {
    fn default() -> Self {
        RootConfig {
            label: None,
            device: None,
            fstype: "squashfs".into(),
            wait: HumanDuration::from_secs(10),
        }
    }
}

impl RootConfig {
    /// How the root device is named in log lines: the label, or the device path.
    pub fn describe(&self) -> String {
        match (&self.device, &self.label) {
            (Some(d), _) => d.display().to_string(),
            (None, Some(l)) => format!("labelled `{l}`"),
            (None, None) => "(none)".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// GPT partition name or ext4 filesystem label.
    pub label: String,
    /// An explicit block device (`/dev/mmcblk0p4`); takes precedence over `label`.
    pub device: Option<PathBuf>,
    pub mountpoint: PathBuf,
    pub fstype: String,
    /// How long to wait for the device to appear (drivers probe asynchronously).
    pub wait: HumanDuration,
    /// Grow the filesystem to fill its device when the device is larger (first boot on a bigger medium).
    pub grow: bool,
    /// How the filesystem is checked before it is mounted (ext2/3/4 only).
    pub check: CheckMode,
    /// The checker: Debian's e2fsck, shipped in the image's root.
    pub checker: PathBuf,
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            label: "baetyl-data".into(),
            device: None,
            mountpoint: PathBuf::from("/var/lib/baetyl"),
            fstype: "ext4".into(),
            wait: HumanDuration::from_secs(5),
            grow: true,
            check: CheckMode::Preen,
            checker: PathBuf::from("/sbin/e2fsck"),
        }
    }
}

/// How the data partition is checked before it is mounted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckMode {
    /// `e2fsck -p`: repair what is safe to repair without a person; anything else leaves the device in safe mode.
    Preen,
    /// `e2fsck -y`: repair everything e2fsck can, even where that loses files (unattended fleets that prefer
    /// coming up with what is left over staying in safe mode).
    Yes,
    /// No check: mount as it is.
    Off,
}

impl CheckMode {
    fn parse(v: &str) -> Result<Self, String> {
        match v {
            "preen" => Ok(CheckMode::Preen),
            "yes" => Ok(CheckMode::Yes),
            "off" | "0" | "no" => Ok(CheckMode::Off),
            _ => Err("expected preen, yes or off".into()),
        }
    }
}

/// A dataset or volume: `source` relative to the data partition (or absolute), mounted at `target`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MountConfig {
    pub name: String,
    /// Default: `datasets/<name>` or `volumes/<name>` on the data partition.
    #[serde(default)]
    pub source: Option<PathBuf>,
    pub target: PathBuf,
}

/// Loopback is always brought up; with an `address`, one interface gets it statically.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkConfig {
    /// Default: the first interface that is not loopback.
    pub interface: Option<String>,
    /// e.g. `10.0.2.15/24` (QEMU user networking).
    pub address: Option<Ipv4Cidr>,
    pub gateway: Option<Ipv4Addr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MasterConfig {
    /// Program and arguments; empty means no master (a bare system that only reaps).
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub workdir: Option<PathBuf>,
    /// Time between SIGTERM and SIGKILL at shutdown.
    pub grace: HumanDuration,
    /// First restart delay; doubles on each quick failure.
    pub restart_min: HumanDuration,
    pub restart_max: HumanDuration,
    /// A master that ran this long resets the backoff.
    pub stable_after: HumanDuration,
    /// RLIMIT_NOFILE (soft and hard) of the master, which its services inherit; capped at the kernel's
    /// fs.nr_open. The kernel's default of 1,024 lets a thousand idle TCP connections lock the hub out.
    pub nofile: u64,
}

impl Default for MasterConfig {
    fn default() -> Self {
        MasterConfig {
            command: vec!["/bin/baetyl".into(), "master".into()],
            env: BTreeMap::new(),
            workdir: None,
            grace: HumanDuration::from_secs(30),
            restart_min: HumanDuration::from_secs(1),
            restart_max: HumanDuration::from_secs(60),
            stable_after: HumanDuration::from_secs(60),
            nofile: DEFAULT_NOFILE,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// Time between SIGTERM and SIGKILL for the processes left after the master stopped.
    pub grace: HumanDuration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            grace: HumanDuration::from_secs(5),
        }
    }
}

/// A boot on trial is rebooted (so that the boot loader counts a failed try and, after the last, falls back to
/// the previous OS) when the master has not marked it good within `timeout`, or as soon as the master had to be
/// started `master_starts` times: a new OS whose master cannot run fails fast instead of waiting out the timeout.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrialConfig {
    pub timeout: HumanDuration,
    pub master_starts: u32,
}

impl Default for TrialConfig {
    fn default() -> Self {
        TrialConfig {
            timeout: HumanDuration::from_secs(600),
            master_starts: 4,
        }
    }
}

/// Splits a kernel command line into parameters, honouring double quotes the way the kernel does.
pub fn split_cmdline(cmdline: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_quotes = false;
    let mut any = false;
    for c in cmdline.chars() {
        match c {
            '"' => {
                in_quotes = !in_quotes;
                any = true;
            }
            c if c.is_whitespace() && !in_quotes => {
                if any {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => {
                cur.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(cur);
    }
    out
}

/// The `baetyl.*` parameters of a kernel command line, key without the prefix, in order.
pub fn baetyl_params(cmdline: &str) -> Vec<(String, String)> {
    split_cmdline(cmdline)
        .into_iter()
        .filter_map(|p| {
            let rest = p.strip_prefix("baetyl.")?;
            let (k, v) = rest.split_once('=').unwrap_or((rest, ""));
            Some((k.to_string(), v.to_string()))
        })
        .collect()
}

/// The config file named by `baetyl.config=` if present.
pub fn config_path_override(params: &[(String, String)]) -> Option<PathBuf> {
    params
        .iter()
        .rev()
        .find(|(k, _)| k == "config")
        .map(|(_, v)| PathBuf::from(v))
}

fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "yes" | "true" | "on" | "" => Some(true),
        "0" | "no" | "false" | "off" => Some(false),
        _ => None,
    }
}

fn parse_duration(v: &str) -> Result<HumanDuration, String> {
    v.parse::<HumanDuration>()
}

impl InitConfig {
    /// Applies `baetyl.*` overrides; returns one message per parameter that was ignored and why.
    pub fn apply_overrides(&mut self, params: &[(String, String)]) -> Vec<String> {
        let mut problems = Vec::new();
        for (key, value) in params {
            if let Err(why) = self.apply_one(key, value) {
                problems.push(format!(
                    "kernel parameter baetyl.{key}={value} ignored: {why}"
                ));
            }
        }
        problems
    }

    fn root_mut(&mut self) -> &mut RootConfig {
        self.root.get_or_insert_with(RootConfig::default)
    }

    /// A `root` section naming no device cannot be used: it is dropped (stay on the initramfs) with a message.
    /// Both named: the device wins.
    fn check_root(&mut self) -> Option<String> {
        let root = self.root.as_mut()?;
        match (&root.device, &root.label) {
            (None, None) => {
                self.root = None;
                Some(
                    "root: neither `label` nor `device` is set; staying on the initramfs (set root.label, \
                     or baetyl.root=LABEL on the kernel command line)"
                        .into(),
                )
            }
            (Some(d), Some(l)) => {
                let msg = format!(
                    "root: both `device` ({}) and `label` ({l}) are set; using the device",
                    d.display()
                );
                root.label = None;
                Some(msg)
            }
            _ => None,
        }
    }

    fn data_mut(&mut self) -> &mut DataConfig {
        self.data.get_or_insert_with(DataConfig::default)
    }

    fn apply_one(&mut self, key: &str, value: &str) -> Result<(), String> {
        match key {
            "config" => {}
            "hostname" => {
                if value.is_empty() {
                    return Err("empty hostname".into());
                }
                self.hostname = Some(value.to_string());
            }
            "reroot" => {
                self.reroot = match value {
                    "auto" => RerootMode::Auto,
                    "always" => RerootMode::Always,
                    "never" => RerootMode::Never,
                    _ => return Err("expected auto, always or never".into()),
                }
            }
            "modules" => {
                self.modules.load = value
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect();
            }
            "modules.dir" => self.modules.dir = Some(PathBuf::from(value)),
            "root" => match value {
                "off" => self.root = None,
                "" => return Err("expected a partition name or filesystem label, or off".into()),
                label => {
                    let root = self.root_mut();
                    root.label = Some(label.to_string());
                    root.device = None;
                }
            },
            "root.label" => {
                if value.is_empty() {
                    return Err("empty label".into());
                }
                let root = self.root_mut();
                root.label = Some(value.to_string());
                root.device = None;
            }
            "root.device" => {
                if !value.starts_with('/') && !value.starts_with("PARTUUID=") {
                    return Err(
                        "expected an absolute device path such as /dev/vda2, or PARTUUID=SSSSSSSS-PP".into(),
                    );
                }
                let root = self.root_mut();
                root.device = Some(PathBuf::from(value));
                root.label = None;
            }
            "root.fstype" => {
                if value.is_empty() {
                    return Err("empty filesystem type".into());
                }
                self.root_mut().fstype = value.to_string();
            }
            "root.wait" => self.root_mut().wait = parse_duration(value)?,
            "data" => match parse_bool(value) {
                Some(false) => self.data = None,
                Some(true) => {
                    self.data_mut();
                }
                None => return Err("expected on or off".into()),
            },
            "data.label" => self.data_mut().label = value.to_string(),
            "data.device" => {
                if !value.starts_with('/') {
                    return Err("expected an absolute device path such as /dev/mmcblk0p4".into());
                }
                self.data_mut().device = Some(PathBuf::from(value))
            }
            "data.mountpoint" => self.data_mut().mountpoint = PathBuf::from(value),
            "data.fstype" => self.data_mut().fstype = value.to_string(),
            "data.wait" => self.data_mut().wait = parse_duration(value)?,
            "data.grow" => self.data_mut().grow = parse_bool(value).ok_or("expected 0 or 1")?,
            "data.check" => self.data_mut().check = CheckMode::parse(value)?,
            "data.checker" => {
                if !value.starts_with('/') {
                    return Err("expected an absolute path such as /sbin/e2fsck".into());
                }
                self.data_mut().checker = PathBuf::from(value)
            }
            "net.interface" => self.network.interface = Some(value.to_string()),
            "net.address" => self.network.address = Some(value.parse()?),
            "net.gateway" => {
                self.network.gateway = Some(
                    value
                        .parse()
                        .map_err(|_| format!("`{value}` is not an IPv4 address"))?,
                )
            }
            "master" => match parse_bool(value) {
                Some(false) => self.master.command.clear(),
                Some(true) => {}
                None => return Err("expected on or off".into()),
            },
            "master.command" => {
                self.master.command = value
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect();
            }
            "master.grace" => self.master.grace = parse_duration(value)?,
            "master.nofile" => {
                self.master.nofile = value
                    .parse::<u64>()
                    .ok()
                    .filter(|n| *n >= 1024)
                    .ok_or("expected a number of descriptors, at least 1024")?
            }
            "shutdown.grace" => self.shutdown.grace = parse_duration(value)?,
            "trial.timeout" => self.trial.timeout = parse_duration(value)?,
            "trial.master_starts" => {
                self.trial.master_starts = value
                    .parse::<u32>()
                    .ok()
                    .filter(|n| *n >= 1)
                    .ok_or("expected a number of starts, at least 1")?
            }
            "kmsg" => self.kmsg = parse_bool(value).ok_or("expected 0 or 1")?,
            _ => return Err("unknown parameter (see the init crate's config docs)".into()),
        }
        Ok(())
    }
}

/// Loads the file (a missing file means defaults) and applies the overrides. Problems are returned for logging;
/// the config returned is always usable.
pub fn load(path: &Path, params: &[(String, String)]) -> (InitConfig, Vec<String>) {
    let mut problems = Vec::new();
    let mut cfg = if path.exists() {
        match baetyl_sdk::config::load_yaml::<InitConfig>(path) {
            Ok(cfg) => cfg,
            Err(err) => {
                problems.push(format!(
                    "{err}; fix the file; booting with the default configuration"
                ));
                InitConfig::default()
            }
        }
    } else {
        problems.push(format!(
            "{} does not exist; using the default configuration",
            path.display()
        ));
        InitConfig::default()
    };
    problems.extend(cfg.apply_overrides(params));
    problems.extend(cfg.check_root());
    (cfg, problems)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn cmdline_split_honours_quotes() {
        let p = split_cmdline("console=ttyS0 quiet  baetyl.hostname=\"edge 1\" x=\"a\"b\n");
        assert_eq!(
            p,
            vec!["console=ttyS0", "quiet", "baetyl.hostname=edge 1", "x=ab"]
        );
    }

    #[test]
    fn overrides_apply_and_report_unknown_keys() {
        let params = baetyl_params(
            "console=ttyS0 baetyl.hostname=edge7 baetyl.modules=virtio,virtio_ring baetyl.master.command=/x,run \
             baetyl.data.label=DATA baetyl.master.grace=2s baetyl.net.address=10.0.2.15/24 baetyl.net.gateway=10.0.2.2 baetyl.reroot=never baetyl.bogus=1 baetyl.kmsg=maybe",
        );
        let mut cfg = InitConfig::default();
        let problems = cfg.apply_overrides(&params);
        assert_eq!(cfg.hostname.as_deref(), Some("edge7"));
        assert_eq!(cfg.modules.load, vec!["virtio", "virtio_ring"]);
        assert_eq!(cfg.master.command, vec!["/x", "run"]);
        assert_eq!(cfg.data.as_ref().map(|d| d.label.as_str()), Some("DATA"));
        assert_eq!(cfg.master.grace.get(), Duration::from_secs(2));
        assert_eq!(cfg.reroot, RerootMode::Never);
        assert_eq!(
            cfg.network.address.map(|a| a.to_string()).as_deref(),
            Some("10.0.2.15/24")
        );
        assert_eq!(cfg.network.gateway, Some(Ipv4Addr::new(10, 0, 2, 2)));
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("baetyl.bogus=1"), "{problems:?}");
        assert!(problems[1].contains("baetyl.kmsg=maybe"), "{problems:?}");
    }

    #[test]
    fn master_off_and_config_path() {
        let params =
            baetyl_params("baetyl.config=/etc/other.yml baetyl.master=off baetyl.data=off");
        assert_eq!(
            config_path_override(&params),
            Some(PathBuf::from("/etc/other.yml"))
        );
        let mut cfg = InitConfig::default();
        assert!(cfg.apply_overrides(&params).is_empty());
        assert!(cfg.master.command.is_empty());
        assert!(cfg.data.is_none());
    }

    #[test]
    fn yaml_file_parses_and_rejects_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("init.yml");
        std::fs::write(
            &good,
            "hostname: dev1\nmodules:\n  load: [virtio_net]\nvolumes:\n  - name: hub\n    target: /var/lib/hub\n\
             master:\n  command: [/bin/baetyl, master]\n  grace: 10s\nshutdown:\n  grace: 1s\n",
        )
        .unwrap();
        let (cfg, problems) = load(&good, &[]);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(cfg.hostname.as_deref(), Some("dev1"));
        assert_eq!(cfg.volumes[0].target, PathBuf::from("/var/lib/hub"));
        assert_eq!(cfg.shutdown.grace.get(), Duration::from_secs(1));

        let bad = dir.path().join("bad.yml");
        std::fs::write(&bad, "master:\n  comand: [x]\n").unwrap();
        let (cfg, problems) = load(&bad, &[]);
        assert_eq!(cfg, InitConfig::default());
        assert!(problems[0].contains("master.comand"), "{problems:?}");
        assert!(problems[0].contains("bad.yml"), "{problems:?}");
    }

    #[test]
    fn root_is_absent_by_default_and_parses_from_yaml() {
        assert_eq!(InitConfig::default().root, None);
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("init.yml");
        std::fs::write(&f, "root: {label: root-a}\n").unwrap();
        let (cfg, problems) = load(&f, &[]);
        assert!(problems.is_empty(), "{problems:?}");
        let root = cfg.root.unwrap();
        assert_eq!(root.label.as_deref(), Some("root-a"));
        assert_eq!(root.device, None);
        assert_eq!(root.fstype, "squashfs");
        assert_eq!(root.wait.get(), Duration::from_secs(10));

        std::fs::write(
            &f,
            "root:\n  device: /dev/loop3\n  fstype: ext4\n  wait: 2s\n",
        )
        .unwrap();
        let (cfg, problems) = load(&f, &[]);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(
            cfg.root,
            Some(RootConfig {
                label: None,
                device: Some(PathBuf::from("/dev/loop3")),
                fstype: "ext4".into(),
                wait: HumanDuration::from_secs(2),
            })
        );

        std::fs::write(&f, "root: null\n").unwrap();
        let (cfg, problems) = load(&f, &[]);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(cfg.root, None);
    }

    #[test]
    fn root_rejects_unknown_keys_and_needs_a_device_or_label() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("init.yml");
        std::fs::write(&f, "root: {lable: root-a}\n").unwrap();
        let (cfg, problems) = load(&f, &[]);
        assert_eq!(cfg, InitConfig::default());
        assert!(problems[0].contains("root.lable"), "{problems:?}");

        std::fs::write(&f, "root: {fstype: squashfs}\n").unwrap();
        let (cfg, problems) = load(&f, &[]);
        assert_eq!(cfg.root, None);
        assert!(
            problems[0].contains("neither `label` nor `device`"),
            "{problems:?}"
        );

        std::fs::write(&f, "root: {label: root-a, device: /dev/vdb}\n").unwrap();
        let (cfg, problems) = load(&f, &[]);
        let root = cfg.root.unwrap();
        assert_eq!(root.device, Some(PathBuf::from("/dev/vdb")));
        assert_eq!(root.label, None);
        assert!(problems[0].contains("using the device"), "{problems:?}");
    }

    #[test]
    fn root_overrides_from_the_kernel_command_line() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("init.yml");
        std::fs::write(&f, "root: {device: /dev/loop3, wait: 1s}\n").unwrap();

        // A label on the command line replaces the file's device; fstype and wait apply on top.
        let params =
            baetyl_params("baetyl.root=root-b baetyl.root.fstype=erofs baetyl.root.wait=250ms");
        let (cfg, problems) = load(&f, &params);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(
            cfg.root,
            Some(RootConfig {
                label: Some("root-b".into()),
                device: None,
                fstype: "erofs".into(),
                wait: HumanDuration::from_millis(250),
            })
        );

        // Without a root section, the command line can create one.
        let missing = dir.path().join("missing.yml");
        let (cfg, _) = load(&missing, &baetyl_params("baetyl.root.device=/dev/vda2"));
        let root = cfg.root.unwrap();
        assert_eq!(root.device, Some(PathBuf::from("/dev/vda2")));
        assert_eq!(root.fstype, "squashfs");
        let (cfg, _) = load(&missing, &baetyl_params("baetyl.root.label=root-a"));
        assert_eq!(cfg.root.unwrap().label.as_deref(), Some("root-a"));
        // The Raspberry Pi card names its slot's root by MBR PARTUUID.
        let (cfg, problems) = load(
            &missing,
            &baetyl_params("baetyl.root.device=PARTUUID=bae77103-05"),
        );
        // The only note is the missing file's (the command line itself is accepted).
        assert!(
            problems.iter().all(|p| p.contains("does not exist")),
            "{problems:?}"
        );
        assert_eq!(
            cfg.root.unwrap().device,
            Some(PathBuf::from("PARTUUID=bae77103-05"))
        );

        // off disables it.
        let (cfg, problems) = load(&f, &baetyl_params("baetyl.root=off"));
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(cfg.root, None);

        // Bad values are reported and ignored; fstype/wait alone name no device, so the section is dropped.
        let (cfg, problems) = load(
            &missing,
            &baetyl_params(
                "baetyl.root= baetyl.root.device=vda2 baetyl.root.wait=soon baetyl.root.fstype=ext4",
            ),
        );
        assert_eq!(cfg.root, None);
        let text = problems.join("\n");
        assert!(text.contains("baetyl.root= ignored"), "{text}");
        assert!(text.contains("baetyl.root.device=vda2 ignored"), "{text}");
        assert!(text.contains("baetyl.root.wait=soon ignored"), "{text}");
        assert!(text.contains("neither `label` nor `device`"), "{text}");
    }
}
