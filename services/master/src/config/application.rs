//! `var/db/baetyl/application.yml`: the services to run and the volumes they use, in Baetyl v1's
//! compose-like schema, and the checks the schema cannot express (names, references, values).

use std::collections::BTreeMap;
use std::path::Path;

use baetyl_sdk::ConfigError;
use baetyl_sdk::config::{ByteSize, ConfigFile, HumanDuration};
use serde::{Deserialize, Serialize};

use super::v1::ServiceNetworks;
use super::volumes::{VolumeMount, VolumeSpec, looks_like_path};

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
    /// `root` to run as root (only where conf.yml `users.root` lists the service too); absent: the service's
    /// own user when per-service users are on.
    #[serde(default)]
    pub user: Option<String>,
    /// Resource limits of the service's processes (compose's key); only `nofile` is supported.
    #[serde(default)]
    pub ulimits: Ulimits,
    #[serde(default)]
    pub network_mode: Option<String>,
    #[serde(default)]
    pub hostname: Option<String>,
    /// Compose keys Baetyl v1 accepted; accepted and reported as ignored (see [`super::v1::ignored_keys`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub networks: Option<ServiceNetworks>,
}

impl ServiceSpec {
    /// Whether the application asks for the service to run as root (`user: root`, `0` or `0:0`).
    pub fn wants_root(&self) -> bool {
        matches!(self.user.as_deref(), Some("root" | "0" | "0:0"))
    }
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

/// `ulimits:` as in compose: each limit a number (soft = hard) or `{soft, hard}`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct Ulimits {
    /// Open file descriptors (sockets included). Default: the master's hard limit, the soft one at most
    /// 65536.
    #[serde(default)]
    pub nofile: Option<Ulimit>,
}

/// One limit: `{soft, hard}`, or one number for both.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Ulimit {
    pub soft: u64,
    pub hard: u64,
}

impl<'de> Deserialize<'de> for Ulimit {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Pair {
            soft: u64,
            hard: u64,
        }
        #[derive(Deserialize)]
        #[serde(untagged, expecting = "a number, or {soft: N, hard: N}")]
        enum Form {
            One(u64),
            Pair(Pair),
        }
        Ok(match Form::deserialize(d)? {
            Form::One(n) => Ulimit { soft: n, hard: n },
            Form::Pair(p) => Ulimit {
                soft: p.soft,
                hard: p.hard,
            },
        })
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
    /// Parses an application file's bytes (`origin` names it in errors). Unlike other config files, an empty
    /// one is an error: it is what a crash or a full disk leaves, not a wish to run nothing (that is written
    /// `services: {}`).
    pub fn from_bytes(bytes: &[u8], origin: &Path) -> Result<Application, ConfigError> {
        let text = std::str::from_utf8(bytes).map_err(|e| {
            ConfigError::invalid(
                origin,
                format!(
                    "is not UTF-8 text (invalid byte at offset {})",
                    e.valid_up_to()
                ),
            )
        })?;
        if text.trim().is_empty() {
            return Err(ConfigError::invalid(
                origin,
                "is empty (cut short by a crash or a full disk?); an application without services is written `services: {}`",
            ));
        }
        Application::parse(text, origin)
    }
}

impl ConfigFile for Application {
    /// Reads either form (compose, or Baetyl v1's list form) after v1's `{{.ENV}}` templating, and logs the
    /// keys it accepts but ignores.
    fn load(path: &Path) -> Result<Self, ConfigError> {
        super::v1::load_application(path).map(super::v1::LoadedApplication::logged)
    }

    /// [`ConfigFile::load`] on text already read (the master reads the file's bytes once, see `from_bytes`).
    fn parse(text: &str, origin: &Path) -> Result<Self, ConfigError> {
        let text = baetyl_sdk::template::expand_env(text, origin);
        super::v1::parse_application(&text, origin).map(super::v1::LoadedApplication::logged)
    }

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
                if let Some(why) = crate::engine::confine::target_problem(&m.target) {
                    return Err(bad(format!(
                        "key `{key}.volumes`: target `{}` {why}",
                        m.target
                    )));
                }
                if looks_like_path(&m.source)
                    && Path::new(&m.source)
                        .components()
                        .any(|c| c == std::path::Component::ParentDir)
                {
                    return Err(bad(format!(
                        "key `{key}.volumes`: source `{}` must not contain `..`",
                        m.source
                    )));
                }
            }
            if let Some(u) = &svc.user
                && !svc.wants_root()
            {
                return Err(bad(format!(
                    "key `{key}.user`: `{u}` is not supported: write `root` (allowed by conf.yml `users.root`), or leave it out for the service's own user"
                )));
            }
            if let Some(l) = svc.ulimits.nofile
                && (l.soft == 0 || l.soft > l.hard)
            {
                return Err(bad(format!(
                    "key `{key}.ulimits.nofile`: need 0 < soft <= hard (got soft {}, hard {})",
                    l.soft, l.hard
                )));
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
        self.start_order().map_err(|e| bad(e.to_string()))?;
        Ok(())
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_app as app;

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
    fn volume_targets_and_sources_stay_inside() {
        let with = |mount: &str| {
            app(&format!(
                "services:\n  a:\n    image: x\n    volumes: [\"{mount}\"]\nvolumes:\n  data: {{}}\n"
            ))
            .map(|_| ())
            .map_err(|e| e.to_string())
        };
        for (mount, says) in [
            ("data:/../../etc", "`..`"),
            ("data:/data/../../x", "`..`"),
            ("data:/", "a directory inside the service"),
            ("data:/.", "a directory inside the service"),
            ("../up:/d", "`..`"),
            ("./a/../../up:/d", "`..`"),
            ("/abs/../etc:/d", "`..`"),
        ] {
            let e = with(mount).expect_err(mount);
            assert!(
                e.contains("services.a.volumes") && e.contains(says),
                "{mount}: {e}"
            );
        }
        for fine in ["data:/data", "data:/var/db/x", "./raw:/raw", "/srv/x:/x"] {
            with(fine).unwrap_or_else(|e| panic!("{fine}: {e}"));
        }
    }

    #[test]
    fn ulimits_take_a_number_or_soft_and_hard() {
        let a = app("services:\n  a: {image: x, ulimits: {nofile: {soft: 10, hard: 20}}}\n  b: {image: x, ulimits: {nofile: 30}}\n")
            .unwrap();
        let nofile = |s: &str| a.services[s].ulimits.nofile.map(|l| (l.soft, l.hard));
        assert_eq!(nofile("a"), Some((10, 20)));
        assert_eq!(nofile("b"), Some((30, 30)));
        let e = app("services:\n  a: {image: x, ulimits: {nofile: {soft: 30, hard: 20}}}\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("services.a.ulimits.nofile") && e.contains("soft"),
            "{e}"
        );
        let e = app("services:\n  a: {image: x, ulimits: {nproc: 10}}\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("services.a.ulimits") && e.contains("nofile"),
            "{e}"
        );
    }

    #[test]
    fn bad_backoff_is_rejected() {
        let e = app("services:\n  a:\n    image: x\n    restart: {backoff: {min: 5s, max: 1s}}\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("backoff"), "{e}");
    }
}
