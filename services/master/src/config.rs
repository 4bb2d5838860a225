//! The master's two config files: `etc/baetyl/conf.yml` (how the master runs) and `application.yml`
//! (what it runs, in Baetyl v1's compose-like form). Both reject unknown keys and are validated at load.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use baetyl_sdk::ConfigError;
use baetyl_sdk::config::{ByteSize, ConfigFile, HumanDuration};
use serde::{Deserialize, Serialize};

// ---------------------------------------------------------------- conf.yml

/// `etc/baetyl/conf.yml`. Every key has a default, so an absent file is a valid config.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MasterConfig {
    /// The engine that runs services: `native` (processes) or `containerd`.
    pub mode: Mode,
    pub server: ServerConfig,
    pub logger: LoggerConfig,
    pub otalog: OtaLogConfig,
    /// How long a stopped instance gets between SIGTERM and SIGKILL.
    pub grace: HumanDuration,
    /// A file holding the device's serial number (given to services as BAETYL_HOST_SN).
    pub snfile: Option<PathBuf>,
    pub update: UpdateConfig,
    pub native: NativeConfig,
    /// Rotation of each instance's stdout/stderr log.
    pub instance_log: InstanceLogConfig,
}

impl Default for MasterConfig {
    fn default() -> Self {
        MasterConfig {
            mode: Mode::Native,
            server: ServerConfig::default(),
            logger: LoggerConfig::default(),
            otalog: OtaLogConfig::default(),
            grace: HumanDuration::from_secs(30),
            snfile: None,
            update: UpdateConfig::default(),
            native: NativeConfig::default(),
            instance_log: InstanceLogConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Native,
    Containerd,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Native => "native",
            Mode::Containerd => "containerd",
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// The API address: `unix://PATH` (relative paths are under the work dir) or `tcp://127.0.0.1:PORT`.
    pub address: String,
    /// An optional second, TCP listener (e.g. `127.0.0.1:50050`), for tools that cannot speak unix sockets.
    pub tcp: Option<String>,
    /// Longest time one API request may take.
    pub timeout: HumanDuration,
    /// A file holding the operator token (user `baetyl-operator`), for a management tool that must know it in
    /// advance (a development image's test harness); relative paths are under the work dir. Without it the
    /// master makes a new random token at every start. Either way the token is written to
    /// `var/run/baetyl/operator.token` (0600) for `baetyl inspect`.
    pub operator_token_file: Option<PathBuf>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            address: "unix://var/run/baetyl.sock".into(),
            tcp: None,
            timeout: HumanDuration::from_secs(30),
            operator_token_file: None,
        }
    }
}

pub use baetyl_sdk::logging::LoggerConfig;

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OtaLogConfig {
    pub path: PathBuf,
}

impl Default for OtaLogConfig {
    fn default() -> Self {
        OtaLogConfig {
            path: PathBuf::from("var/db/baetyl/ota.log"),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct UpdateConfig {
    /// After an update starts new or changed services, they must stay up this long or the update rolls back.
    pub health: HumanDuration,
}

impl Default for UpdateConfig {
    fn default() -> Self {
        UpdateConfig {
            health: HumanDuration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NativeConfig {
    /// Directories searched for native packages (`<dir>/<image name>/package.yml`), relative to the work dir.
    pub packages: Vec<PathBuf>,
}

impl Default for NativeConfig {
    fn default() -> Self {
        NativeConfig {
            packages: vec![PathBuf::from("lib/baetyl/packages")],
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct InstanceLogConfig {
    /// Rotate an instance's log when it would grow past this size.
    pub max_size: ByteSize,
    /// How many rotated files to keep (`<inst>.log.1` ... `.N`).
    pub backups: u32,
}

impl Default for InstanceLogConfig {
    fn default() -> Self {
        InstanceLogConfig {
            max_size: ByteSize(10 << 20),
            backups: 3,
        }
    }
}

impl ConfigFile for MasterConfig {
    fn validate(&self, file: &Path) -> Result<(), ConfigError> {
        baetyl_sdk::client::Address::parse(&self.server.address).map_err(|_| {
            ConfigError::invalid(
                file,
                format!(
                    "key `server.address`: `{}` is not an API address; write unix://var/run/baetyl.sock or tcp://127.0.0.1:50050",
                    self.server.address
                ),
            )
        })?;
        if let Some(tcp) = &self.server.tcp
            && tcp.parse::<std::net::SocketAddr>().is_err()
        {
            return Err(ConfigError::invalid(
                file,
                format!("key `server.tcp`: `{tcp}` is not HOST:PORT; write e.g. 127.0.0.1:50050"),
            ));
        }
        if tracing_level_ok(&self.logger.level).is_err() {
            return Err(ConfigError::invalid(
                file,
                format!(
                    "key `logger.level`: `{}` is not a level; use error, warn, info, debug or trace",
                    self.logger.level
                ),
            ));
        }
        if self.instance_log.max_size.0 < 4096 {
            return Err(ConfigError::invalid(
                file,
                "key `instance_log.max_size`: must be at least 4k",
            ));
        }
        Ok(())
    }
}

fn tracing_level_ok(level: &str) -> Result<(), ()> {
    // A plain level or a directive list (`info,baetyl_master=debug`): each part must end in a level.
    let levels = ["error", "warn", "info", "debug", "trace", "off"];
    for part in level.split(',') {
        let lvl = part
            .rsplit('=')
            .next()
            .unwrap_or(part)
            .trim()
            .to_ascii_lowercase();
        if !levels.contains(&lvl.as_str()) {
            return Err(());
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- application.yml

/// `var/db/baetyl/application.yml`: the services to run and the volumes they use.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct Application {
    /// Schema version (v1 wrote `v0`/`v1`); informational.
    #[serde(default)]
    pub version: String,
    /// The version of this application, reported in inspect.
    #[serde(default)]
    pub app_version: String,
    #[serde(default)]
    pub services: BTreeMap<String, ServiceSpec>,
    #[serde(default)]
    pub volumes: BTreeMap<String, VolumeSpec>,
    /// Accepted for compatibility; the native engine shares the host network.
    #[serde(default)]
    pub networks: BTreeMap<String, serde_yaml_ng::Value>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// What to run: a native package name, a role of the `baetyl` binary (`baetyl-hub`), or an OCI image.
    pub image: String,
    /// Instances started with the application; 0 means only started on request (function runtimes).
    #[serde(default = "one")]
    pub replica: u32,
    #[serde(default)]
    pub volumes: Vec<VolumeMount>,
    #[serde(default)]
    pub ports: Vec<String>,
    #[serde(default)]
    pub devices: Vec<String>,
    #[serde(default)]
    pub depends_on: Vec<String>,
    #[serde(default)]
    pub command: Option<StringOrList>,
    #[serde(default)]
    pub entrypoint: Option<StringOrList>,
    #[serde(default)]
    pub environment: Environment,
    #[serde(default)]
    pub restart: RestartPolicy,
    #[serde(default)]
    pub resources: Resources,
    #[serde(default)]
    pub network_mode: Option<String>,
    #[serde(default)]
    pub hostname: Option<String>,
}

fn one() -> u32 {
    1
}

/// `command:`/`entrypoint:` as a list, or as one string split on whitespace.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(untagged, expecting = "a string or a list of strings")]
pub enum StringOrList {
    List(Vec<String>),
    One(String),
}

impl StringOrList {
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            StringOrList::List(v) => v.clone(),
            StringOrList::One(s) => s.split_whitespace().map(str::to_string).collect(),
        }
    }
}

/// `environment:` as a map or as a list of `KEY=VALUE`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(
    untagged,
    expecting = "a map of NAME: value, or a list of NAME=value strings"
)]
pub enum Environment {
    Map(BTreeMap<String, EnvValue>),
    List(Vec<String>),
}

impl Default for Environment {
    fn default() -> Self {
        Environment::Map(BTreeMap::new())
    }
}

/// Environment values may be written as numbers or booleans in YAML; they become strings.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(untagged, expecting = "a string, number or boolean")]
pub enum EnvValue {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
}

impl std::fmt::Display for EnvValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EnvValue::Str(s) => f.write_str(s),
            EnvValue::Int(i) => write!(f, "{i}"),
            EnvValue::Float(x) => write!(f, "{x}"),
            EnvValue::Bool(b) => write!(f, "{b}"),
        }
    }
}

impl Environment {
    /// The variables as a map; a list entry without `=` is an error naming it.
    pub fn to_map(&self) -> Result<BTreeMap<String, String>, String> {
        match self {
            Environment::Map(m) => Ok(m.iter().map(|(k, v)| (k.clone(), v.to_string())).collect()),
            Environment::List(l) => l
                .iter()
                .map(|e| match e.split_once('=') {
                    Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
                    _ => Err(format!("`{e}` is not NAME=value")),
                })
                .collect(),
        }
    }
}

/// A volume mounted into a service: `"source:target[:ro|:rw]"` or `{source, target, read_only}`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct VolumeMount {
    pub source: String,
    pub target: String,
    pub read_only: bool,
}

impl<'de> Deserialize<'de> for VolumeMount {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Long {
            source: String,
            target: String,
            #[serde(default)]
            read_only: bool,
        }
        #[derive(Deserialize)]
        #[serde(
            untagged,
            expecting = "\"source:target[:ro]\" or {source, target, read_only}"
        )]
        enum Form {
            Short(String),
            Long(Long),
        }
        match Form::deserialize(d)? {
            Form::Long(l) => Ok(VolumeMount {
                source: l.source,
                target: l.target,
                read_only: l.read_only,
            }),
            Form::Short(s) => parse_short_mount(&s).map_err(serde::de::Error::custom),
        }
    }
}

fn parse_short_mount(s: &str) -> Result<VolumeMount, String> {
    let parts: Vec<&str> = s.split(':').collect();
    let (source, target, mode) = match parts.as_slice() {
        [src, dst] => (*src, *dst, "rw"),
        [src, dst, mode] => (*src, *dst, *mode),
        _ => {
            return Err(format!(
                "volume `{s}` is not \"source:target\" or \"source:target:ro\""
            ));
        }
    };
    if source.is_empty() || target.is_empty() {
        return Err(format!("volume `{s}` has an empty source or target"));
    }
    let read_only = match mode {
        "ro" => true,
        "rw" => false,
        other => {
            return Err(format!(
                "volume `{s}`: mode `{other}` is unknown; use ro or rw"
            ));
        }
    };
    Ok(VolumeMount {
        source: source.to_string(),
        target: target.to_string(),
        read_only,
    })
}

/// A named volume of the application: a directory on the device.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct VolumeSpec {
    /// Where its data lives, relative to the work dir; default `var/db/baetyl/volumes/<name>`.
    #[serde(default)]
    pub path: Option<String>,
    /// A dataset: mounted read-only into every service that uses it.
    #[serde(default)]
    pub read_only: bool,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    #[default]
    Always,
    OnFailure,
    No,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct RestartPolicy {
    #[serde(default)]
    pub policy: Policy,
    #[serde(default)]
    pub retry: Retry,
    #[serde(default)]
    pub backoff: Backoff,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct Retry {
    /// Restarts allowed in a row before the instance is given up on; 0 or absent means no limit.
    #[serde(default)]
    pub max: u32,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Backoff {
    pub min: HumanDuration,
    pub max: HumanDuration,
    pub factor: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            min: HumanDuration::from_secs(1),
            max: HumanDuration::from_secs(300),
            factor: 2.0,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    #[serde(default)]
    pub cpu: Option<CpuResources>,
    #[serde(default)]
    pub memory: Option<MemoryResources>,
    #[serde(default)]
    pub pids: Option<PidsResources>,
}

impl Resources {
    pub fn is_empty(&self) -> bool {
        self.cpu.is_none() && self.memory.is_none() && self.pids.is_none()
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct CpuResources {
    /// CPU time as a number of CPUs (0.5 = half of one CPU).
    #[serde(default)]
    pub cpus: Option<f64>,
    /// CPUs the service may run on, as cpuset syntax (`0-1`, `0,2`).
    #[serde(default)]
    pub setcpus: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct MemoryResources {
    #[serde(default)]
    pub limit: Option<ByteSize>,
    #[serde(default)]
    pub swap: Option<ByteSize>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct PidsResources {
    #[serde(default)]
    pub limit: Option<u64>,
}

impl Application {
    /// Service names in an order where every service comes after what it depends on (ties by name).
    /// A cycle is an error naming the services on it.
    pub fn start_order(&self) -> Result<Vec<String>, String> {
        let mut indegree: BTreeMap<&str, usize> =
            self.services.keys().map(|k| (k.as_str(), 0)).collect();
        for (name, svc) in &self.services {
            let deps: BTreeSet<&str> = svc.depends_on.iter().map(String::as_str).collect();
            if let Some(d) = indegree.get_mut(name.as_str()) {
                *d = deps
                    .iter()
                    .filter(|d| self.services.contains_key(**d))
                    .count();
            }
        }
        let mut ready: BTreeSet<&str> = indegree
            .iter()
            .filter(|(_, d)| **d == 0)
            .map(|(k, _)| *k)
            .collect();
        let mut order = Vec::with_capacity(self.services.len());
        while let Some(next) = ready.pop_first() {
            order.push(next.to_string());
            for (name, svc) in &self.services {
                if svc.depends_on.iter().any(|d| d == next)
                    && let Some(d) = indegree.get_mut(name.as_str())
                {
                    *d = d.saturating_sub(1);
                    if *d == 0 {
                        ready.insert(name.as_str());
                    }
                }
            }
        }
        if order.len() < self.services.len() {
            let stuck: Vec<&str> = indegree
                .iter()
                .filter(|(k, _)| !order.iter().any(|o| o == *k))
                .map(|(k, _)| *k)
                .collect();
            return Err(format!(
                "services {} depend on each other in a cycle (key `depends_on`); remove one of the dependencies",
                stuck
                    .iter()
                    .map(|s| format!("`{s}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        Ok(order)
    }

    /// The volume specs a service uses, by name, for change detection.
    pub fn volumes_of(&self, service: &str) -> BTreeMap<String, Option<VolumeSpec>> {
        self.services
            .get(service)
            .map(|s| {
                s.volumes
                    .iter()
                    .map(|m| (m.source.clone(), self.volumes.get(&m.source).cloned()))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl ConfigFile for Application {
    /// Checks what the schema cannot: names, references, dependency order, values.
    fn validate(&self, file: &Path) -> Result<(), ConfigError> {
        let bad = |m: String| ConfigError::invalid(file, m);
        for (name, svc) in &self.services {
            if !valid_name(name) {
                return Err(bad(format!(
                    "service name `{name}` is not valid: use letters, digits, `-`, `_` and `.`, starting with a letter or digit"
                )));
            }
            let key = format!("services.{name}");
            if svc.image.trim().is_empty() {
                return Err(bad(format!(
                    "key `{key}.image`: must name an image or package"
                )));
            }
            for dep in &svc.depends_on {
                if !self.services.contains_key(dep) {
                    return Err(bad(format!(
                        "key `{key}.depends_on`: service `{name}` depends on `{dep}`, which is not defined under services"
                    )));
                }
                if dep == name {
                    return Err(bad(format!(
                        "key `{key}.depends_on`: service `{name}` depends on itself"
                    )));
                }
            }
            svc.environment
                .to_map()
                .map_err(|e| bad(format!("key `{key}.environment`: {e}")))?;
            for m in &svc.volumes {
                if !self.volumes.contains_key(&m.source) && !looks_like_path(&m.source) {
                    return Err(bad(format!(
                        "key `{key}.volumes`: `{}` is neither a volume declared under `volumes:` nor a path (write ./dir or /dir for a path)",
                        m.source
                    )));
                }
                if !m.target.starts_with('/') {
                    return Err(bad(format!(
                        "key `{key}.volumes`: target `{}` must be an absolute path inside the service (e.g. /data)",
                        m.target
                    )));
                }
            }
            let b = &svc.restart.backoff;
            if b.min.get().is_zero()
                || b.max.get() < b.min.get()
                || !(b.factor >= 1.0 && b.factor.is_finite())
            {
                return Err(bad(format!(
                    "key `{key}.restart.backoff`: need min > 0, max >= min and factor >= 1 (got min {}, max {}, factor {})",
                    b.min, b.max, b.factor
                )));
            }
            if let Some(cpus) = svc.resources.cpu.as_ref().and_then(|c| c.cpus)
                && !(cpus > 0.0 && cpus.is_finite())
            {
                return Err(bad(format!(
                    "key `{key}.resources.cpu.cpus`: must be a positive number of CPUs"
                )));
            }
        }
        for (name, vol) in &self.volumes {
            if !valid_name(name) {
                return Err(bad(format!(
                    "volume name `{name}` is not valid: use letters, digits, `-`, `_` and `.`"
                )));
            }
            if let Some(p) = &vol.path
                && p.split('/').any(|c| c == "..")
            {
                return Err(bad(format!(
                    "key `volumes.{name}.path`: `{p}` must not contain `..`"
                )));
            }
        }
        self.start_order().map_err(bad)?;
        Ok(())
    }
}

fn looks_like_path(s: &str) -> bool {
    s.starts_with('/') || s.starts_with("./") || s.starts_with("../") || s.contains('/')
}

/// Service, instance and volume names become directory names and cgroup names.
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// What an app update does to each service.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct AppDiff {
    pub unchanged: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
    pub added: Vec<String>,
}

/// A service is unchanged only if its own config and every volume it uses are unchanged.
pub fn diff(old: &Application, new: &Application) -> AppDiff {
    let mut d = AppDiff::default();
    for (name, spec) in &old.services {
        match new.services.get(name) {
            None => d.removed.push(name.clone()),
            Some(n) if n == spec && new.volumes_of(name) == old.volumes_of(name) => {
                d.unchanged.push(name.clone())
            }
            Some(_) => d.changed.push(name.clone()),
        }
    }
    for name in new.services.keys() {
        if !old.services.contains_key(name) {
            d.added.push(name.clone());
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(text: &str) -> Result<Application, ConfigError> {
        Application::parse(text, Path::new("application.yml"))
    }

    #[test]
    fn full_service_parses() {
        let a = app(r#"
version: v1
app_version: "2"
services:
  hub:
    image: baetyl-hub
    replica: 1
    volumes:
      - data:/var/db
      - {source: conf, target: /etc/baetyl, read_only: true}
      - ./raw:/raw:ro
    ports: ["1883:1883"]
    environment: [A=1, B=x=y]
    command: run --fast
    restart:
      policy: on-failure
      retry: {max: 3}
      backoff: {min: 200ms, max: 2s, factor: 1.5}
    resources:
      cpu: {cpus: 0.5, setcpus: "0"}
      memory: {limit: 64m, swap: 0}
      pids: {limit: 32}
  fn:
    image: pkg-fn
    replica: 0
    environment: {DEBUG: true, N: 3}
    depends_on: [hub]
    restart: {policy: no}
volumes:
  data: {path: var/db/baetyl/hub}
  conf: {read_only: true}
"#)
        .unwrap();
        let hub = &a.services["hub"];
        assert_eq!(
            hub.volumes[0],
            VolumeMount {
                source: "data".into(),
                target: "/var/db".into(),
                read_only: false
            }
        );
        assert!(hub.volumes[1].read_only && hub.volumes[2].read_only);
        assert_eq!(hub.environment.to_map().unwrap()["B"], "x=y");
        assert_eq!(
            hub.command.as_ref().unwrap().to_vec(),
            vec!["run", "--fast"]
        );
        assert_eq!(hub.restart.policy, Policy::OnFailure);
        assert_eq!(hub.restart.retry.max, 3);
        assert_eq!(
            hub.resources.memory.as_ref().unwrap().limit,
            Some(ByteSize(64 << 20))
        );
        let f = &a.services["fn"];
        assert_eq!(f.replica, 0);
        assert_eq!(f.restart.policy, Policy::No);
        assert_eq!(f.environment.to_map().unwrap()["DEBUG"], "true");
        assert_eq!(a.start_order().unwrap(), vec!["hub", "fn"]);
    }

    #[test]
    fn unknown_key_is_named_with_its_path() {
        let e = app("services:\n  hub:\n    image: x\n    restart: {polcy: always}\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("application.yml"), "{e}");
        assert!(e.contains("services.hub.restart"), "{e}");
        assert!(e.contains("polcy"), "{e}");
    }

    #[test]
    fn mistyped_policy_lists_the_choices() {
        let e = app("services:\n  hub:\n    image: x\n    restart: {policy: sometimes}\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("services.hub.restart.policy"), "{e}");
        assert!(e.contains("always") && e.contains("on-failure"), "{e}");
    }

    #[test]
    fn missing_image_is_an_error() {
        let e = app("services:\n  hub:\n    replica: 1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("services.hub") && e.contains("image"), "{e}");
    }

    #[test]
    fn missing_dependency_names_both_services() {
        let e = app("services:\n  a:\n    image: x\n    depends_on: [ghost]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("`a`") && e.contains("`ghost`"), "{e}");
    }

    #[test]
    fn cycle_names_the_services_on_it() {
        let e = app(
            "services:\n  a: {image: x, depends_on: [b]}\n  b: {image: x, depends_on: [c]}\n  c: {image: x, depends_on: [a]}\n  d: {image: x}\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("cycle"), "{e}");
        assert!(
            e.contains("`a`") && e.contains("`b`") && e.contains("`c`") && !e.contains("`d`"),
            "{e}"
        );
    }

    #[test]
    fn start_order_is_topological_then_by_name() {
        let a = app(
            "services:\n  web: {image: x, depends_on: [db, cache]}\n  db: {image: x}\n  cache: {image: x, depends_on: [db]}\n  aux: {image: x}\n",
        )
        .unwrap();
        assert_eq!(a.start_order().unwrap(), vec!["aux", "db", "cache", "web"]);
    }

    #[test]
    fn undeclared_volume_is_an_error() {
        let e = app("services:\n  a:\n    image: x\n    volumes: [nope:/d]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope") && e.contains("volumes"), "{e}");
        let e = app("services:\n  a:\n    image: x\n    volumes: [\"a:b:c:d\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("services.a.volumes"), "{e}");
    }

    #[test]
    fn bad_backoff_is_rejected() {
        let e = app("services:\n  a:\n    image: x\n    restart: {backoff: {min: 5s, max: 1s}}\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("backoff"), "{e}");
    }

    #[test]
    fn diff_keeps_services_whose_config_and_volumes_are_unchanged() {
        let old = app(
            "services:\n  a: {image: x}\n  b: {image: y, volumes: [v:/v]}\n  c: {image: z}\n  gone: {image: g}\nvolumes:\n  v: {path: p1}\n",
        )
        .unwrap();
        let new = app(
            "services:\n  a: {image: x}\n  b: {image: y, volumes: [v:/v]}\n  c: {image: z2}\n  fresh: {image: f}\nvolumes:\n  v: {path: p2}\n",
        )
        .unwrap();
        let d = diff(&old, &new);
        assert_eq!(d.unchanged, vec!["a"]);
        assert_eq!(d.changed, vec!["b", "c"]);
        assert_eq!(d.removed, vec!["gone"]);
        assert_eq!(d.added, vec!["fresh"]);
    }

    #[test]
    fn master_config_defaults_and_errors() {
        let c = MasterConfig::parse("", Path::new("conf.yml")).unwrap();
        assert_eq!(c.mode, Mode::Native);
        assert_eq!(c.grace.get().as_secs(), 30);
        assert_eq!(c.server.address, "unix://var/run/baetyl.sock");
        let e = MasterConfig::parse("mode: docker\n", Path::new("conf.yml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("conf.yml") && e.contains("mode") && e.contains("native"),
            "{e}"
        );
        let e = MasterConfig::parse("server: {address: http://x}\n", Path::new("conf.yml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("server.address"), "{e}");
        let e = MasterConfig::parse("logger: {level: loud}\n", Path::new("conf.yml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("logger.level"), "{e}");
        let e = MasterConfig::parse("grace: forever\n", Path::new("conf.yml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("grace"), "{e}");
    }
}
