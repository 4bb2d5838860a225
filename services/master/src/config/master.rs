//! `etc/baetyl/conf.yml`: how the master runs (engine, API listeners, logging, update health window,
//! instance logs). Values with a syntax of their own (addresses, durations, sizes) are typed and parsed once,
//! when the file is loaded, so a mistake is reported with its key path.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use baetyl_sdk::ConfigError;
use baetyl_sdk::client::Address;
use baetyl_sdk::config::{ByteSize, ConfigFile, HumanDuration};
use serde::{Deserialize, Serialize};

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
    /// The containerd engine (`mode: containerd`).
    pub containerd: ContainerdConfig,
    /// Rotation of each instance's stdout/stderr log.
    pub instance_log: InstanceLogConfig,
    pub volumes: VolumesConfig,
    pub users: UsersConfig,
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
            containerd: ContainerdConfig::default(),
            instance_log: InstanceLogConfig::default(),
            volumes: VolumesConfig::default(),
            users: UsersConfig::default(),
        }
    }
}

/// Per-service users: each service's processes run under a uid/gid of their own.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct UsersConfig {
    /// `auto` (on when the master runs as root under `baetyl init`, i.e. on a device), `on` or `off`.
    pub mode: UsersMode,
    /// The ids services get, allocated once and remembered (`var/db/baetyl/users.json`), uid = gid. The
    /// first id of the range is the group of the API socket, which every service gets as a supplementary
    /// group.
    pub ids: IdRange,
    /// Fixed ids for services, instead of allocated ones: `{hub: {uid: 1001, gid: 1001}}`.
    pub services: std::collections::BTreeMap<String, FixedIds>,
    /// Services that may run as root, when their application also asks for it (`user: root`).
    pub root: Vec<String>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum UsersMode {
    #[default]
    Auto,
    On,
    Off,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FixedIds {
    pub uid: u32,
    pub gid: u32,
}

/// `FIRST-LAST`, inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct IdRange {
    pub first: u32,
    pub last: u32,
}

impl Default for IdRange {
    fn default() -> Self {
        IdRange {
            first: 20000,
            last: 29999,
        }
    }
}

impl TryFrom<String> for IdRange {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let bad = || {
            format!("`{s}` is not an id range; write FIRST-LAST, e.g. 20000-29999 (0 is root's)")
        };
        let (a, b) = s.split_once('-').ok_or_else(bad)?;
        let (first, last): (u32, u32) = (
            a.trim().parse().map_err(|_| bad())?,
            b.trim().parse().map_err(|_| bad())?,
        );
        if first == 0 || last <= first {
            return Err(bad());
        }
        Ok(IdRange { first, last })
    }
}

impl From<IdRange> for String {
    fn from(r: IdRange) -> String {
        format!("{}-{}", r.first, r.last)
    }
}

/// Where volumes may live on the host.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct VolumesConfig {
    /// Absolute directories outside the work dir that an application's volumes may use (e.g. `/media/usb`);
    /// by default volumes live in the work dir only.
    pub allowed_roots: Vec<PathBuf>,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Native,
    /// Baetyl v1's `mode: docker` (its container engine) reads as this one.
    #[serde(alias = "docker")]
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
    pub address: ApiAddress,
    /// An optional second, TCP listener (e.g. `127.0.0.1:50050`), for tools that cannot speak unix sockets.
    #[serde(with = "optional_socket_addr")]
    pub tcp: Option<SocketAddr>,
    /// Longest time one API request may take.
    pub timeout: HumanDuration,
    /// A file holding the operator token (user `baetyl-operator`), for a management tool that must know it in
    /// advance (a development image's test harness); relative paths are under the work dir. Without it the
    /// master makes a new random token at every start. Either way the token is written to
    /// `var/run/baetyl/operator.token` (0600) for `baetyl inspect`.
    pub operator_token_file: Option<PathBuf>,
    /// Services whose token has the agent role: like the operator, they may update the application, reboot
    /// or power off the device and manage every instance (the cloud agent).
    pub agents: Vec<String>,
    /// v1's `server.cert` and `server.key` (PEM; relative paths under the work dir): the TCP listeners
    /// (`address` when it is TCP, and `tcp`) serve HTTPS. The unix socket stays plain HTTP: its file mode
    /// is its access control, and the services dial it (with a TCP `address`, they get the socket
    /// `var/run/baetyl.sock` instead, as they have no certificate).
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// v1's `server.ca`: callers on the TCP listeners must present a client certificate chaining to it.
    pub ca: Option<PathBuf>,
}

impl ServerConfig {
    /// The TLS files with relative paths under `workdir`, when `cert` and `key` are set.
    pub fn tls(&self, workdir: &Path) -> Option<baetyl_sdk::mqtt::ServerTls> {
        match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => Some(baetyl_sdk::mqtt::ServerTls {
                cert: workdir.join(cert),
                key: workdir.join(key),
                ca: self.ca.as_ref().map(|ca| workdir.join(ca)),
            }),
            _ => None,
        }
    }

    /// Whether some listener is TCP (what TLS applies to).
    pub fn has_tcp(&self) -> bool {
        self.tcp.is_some() || matches!(self.address.0, Address::Tcp(_))
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            address: ApiAddress(Address::Unix(PathBuf::from("var/run/baetyl.sock"))),
            tcp: None,
            timeout: HumanDuration::from_secs(30),
            operator_token_file: None,
            agents: Vec::new(),
            cert: None,
            key: None,
            ca: None,
        }
    }
}

pub use baetyl_sdk::logging::LoggerConfig;

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OtaLogConfig {
    pub path: PathBuf,
    /// Rotate the OTA log when it would grow past this size.
    pub max_size: ByteSize,
    /// How many rotated files to keep (`ota.log.1` ... `.N`).
    pub backups: u32,
}

impl Default for OtaLogConfig {
    fn default() -> Self {
        OtaLogConfig {
            path: PathBuf::from("var/db/baetyl/ota.log"),
            max_size: ByteSize(1 << 20),
            backups: 3,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct UpdateConfig {
    /// After an update starts new or changed services, they must stay up this long or the update rolls back.
    pub health: HumanDuration,
    /// The largest application file an update may name.
    pub max_size: ByteSize,
    /// Master updates (type MST): the new `baetyl` binary.
    pub master: MasterUpdateConfig,
    /// OS updates (type OS): the signed bundle of `baetyl image build`, on a device booted from a baetyl disk.
    pub os: OsUpdateConfig,
}

/// `update.os`: how an OS update bundle is accepted and when a new OS counts as good.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OsUpdateConfig {
    /// The largest bundle an update may name.
    pub max_size: ByteSize,
    /// The public key bundles must be signed with (`ed25519:<base64>`), pinned by the image.
    pub key: PathBuf,
    /// How long every service must run without a restart on a newly installed OS (booted on trial) before the
    /// master marks it good; until then the boot loader falls back to the previous OS after its tries.
    pub bless_after: HumanDuration,
}

impl Default for OsUpdateConfig {
    fn default() -> Self {
        OsUpdateConfig {
            max_size: ByteSize(2 << 30),
            key: PathBuf::from(baetyl_sdk::os::UPDATE_KEY),
            bless_after: HumanDuration::from_secs(60),
        }
    }
}

impl Default for UpdateConfig {
    fn default() -> Self {
        UpdateConfig {
            health: HumanDuration::from_secs(5),
            max_size: ByteSize(1 << 20),
            master: MasterUpdateConfig::default(),
            os: OsUpdateConfig::default(),
        }
    }
}

/// `update.master`: how a new master binary is accepted.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MasterUpdateConfig {
    /// The largest binary an update may name.
    pub max_size: ByteSize,
    /// How long the new binary's `check -w <work dir> -c <conf>` may take.
    pub check_timeout: HumanDuration,
    /// How long the new master, on trial, has to serve its API and run again every service that ran before;
    /// it must then keep them running for `update.health`.
    pub deadline: HumanDuration,
}

impl Default for MasterUpdateConfig {
    fn default() -> Self {
        MasterUpdateConfig {
            max_size: ByteSize(256 << 20),
            check_timeout: HumanDuration::from_secs(30),
            deadline: HumanDuration::from_secs(120),
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

/// `containerd:` in conf.yml: where containerd is and which images it runs.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ContainerdConfig {
    /// containerd's gRPC socket.
    pub socket: PathBuf,
    /// The containerd namespace of this master's images and containers; what is in it belongs to this master
    /// (a master removes the containers it finds there at start).
    pub namespace: String,
    /// OCI image layout directories (`baetyl image oci --out DIR`) imported at start, relative to the work
    /// dir; a service's `image` (v1 names such as `hub.baetyl.io/baetyl-hub:v2` read as `baetyl-hub`) names
    /// one of their images. Nothing is ever pulled from a registry.
    pub images: Vec<PathBuf>,
    /// The cgroup under which each container gets `<parent>/<service>.<instance>`.
    pub cgroup_parent: String,
    /// How long to wait for containerd's socket to answer at start.
    pub connect_timeout: HumanDuration,
}

impl Default for ContainerdConfig {
    fn default() -> Self {
        ContainerdConfig {
            socket: PathBuf::from("/run/containerd/containerd.sock"),
            namespace: "baetyl".to_string(),
            images: Vec::new(),
            cgroup_parent: "/baetyl".to_string(),
            connect_timeout: HumanDuration::from_secs(30),
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
        if tracing_level_ok(&self.logger.level).is_err() {
            return Err(ConfigError::invalid(
                file,
                format!(
                    "key `logger.level`: `{}` is not a level; use error, warn, info, debug or trace",
                    self.logger.level
                ),
            ));
        }
        for root in &self.volumes.allowed_roots {
            if !root.is_absolute()
                || root
                    .components()
                    .any(|c| c == std::path::Component::ParentDir)
            {
                return Err(ConfigError::invalid(
                    file,
                    format!(
                        "key `volumes.allowed_roots`: `{}` must be an absolute path without `..`",
                        root.display()
                    ),
                ));
            }
        }
        for (name, ids) in &self.users.services {
            if ids.uid == 0 || ids.gid == 0 {
                return Err(ConfigError::invalid(
                    file,
                    format!(
                        "key `users.services.{name}`: uid and gid must not be 0; a service runs as root only when listed under `users.root` and its application asks for `user: root`"
                    ),
                ));
            }
        }
        let server = &self.server;
        if server.cert.is_some() != server.key.is_some() {
            return Err(ConfigError::invalid(
                file,
                "keys `server.cert` and `server.key` go together (the API's certificate and its key)",
            ));
        }
        if server.ca.is_some() && server.cert.is_none() {
            return Err(ConfigError::invalid(
                file,
                "key `server.ca` (callers must present a client certificate) needs `server.cert` and `server.key`",
            ));
        }
        if server.cert.is_some() && !server.has_tcp() {
            return Err(ConfigError::invalid(
                file,
                "key `server.cert`: TLS applies to the API's TCP listeners and there is none; set `server.address` to tcp://HOST:PORT or add `server.tcp`",
            ));
        }
        if self.otalog.max_size.0 < 1024 {
            return Err(ConfigError::invalid(
                file,
                "key `otalog.max_size`: must be at least 1k",
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

/// `server.address`: where the API listens and what services dial (`BAETYL_MASTER_API_ADDRESS`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct ApiAddress(pub Address);

impl ApiAddress {
    /// The address with a relative socket path resolved under `workdir`.
    pub fn under(&self, workdir: &Path) -> Address {
        match &self.0 {
            Address::Unix(p) => Address::Unix(workdir.join(p)),
            a => a.clone(),
        }
    }
}

impl TryFrom<String> for ApiAddress {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Address::parse(&s).map(ApiAddress).map_err(|_| {
            format!(
                "`{s}` is not an API address; write unix://var/run/baetyl.sock or tcp://127.0.0.1:50050"
            )
        })
    }
}

impl From<ApiAddress> for String {
    fn from(a: ApiAddress) -> String {
        a.0.to_string()
    }
}

impl std::fmt::Display for ApiAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// `server.tcp`: absent, or `HOST:PORT` with a numeric host.
mod optional_socket_addr {
    use std::net::SocketAddr;

    use serde::{Deserialize, Deserializer, Serialize, Serializer, de::Error};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| {
                s.parse().map_err(|_| {
                    D::Error::custom(format!(
                        "`{s}` is not HOST:PORT; write e.g. 127.0.0.1:50050"
                    ))
                })
            })
            .transpose()
    }

    pub fn serialize<S: Serializer>(v: &Option<SocketAddr>, s: S) -> Result<S::Ok, S::Error> {
        v.map(|a| a.to_string()).serialize(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(text: &str) -> Result<MasterConfig, String> {
        MasterConfig::parse(text, Path::new("conf.yml")).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_and_errors_name_the_key() {
        let c = conf("").unwrap();
        assert_eq!(c.mode, Mode::Native);
        assert_eq!(c.grace.get().as_secs(), 30);
        assert_eq!(c.server.address.to_string(), "unix://var/run/baetyl.sock");
        assert_eq!(conf("mode: docker\n").unwrap().mode, Mode::Containerd);
        let e = conf("mode: kubernetes\n").unwrap_err();
        assert!(
            e.contains("conf.yml") && e.contains("mode") && e.contains("native"),
            "{e}"
        );
        let e = conf("logger: {level: loud}\n").unwrap_err();
        assert!(e.contains("logger.level"), "{e}");
        let e = conf("grace: forever\n").unwrap_err();
        assert!(e.contains("grace"), "{e}");
    }

    #[test]
    fn addresses_are_parsed_at_load() {
        let c = conf("server: {address: \"tcp://127.0.0.1:50050\", tcp: \"127.0.0.1:9990\"}\n")
            .unwrap();
        assert_eq!(c.server.address.0, Address::Tcp("127.0.0.1:50050".into()));
        assert_eq!(c.server.tcp, Some("127.0.0.1:9990".parse().unwrap()));
        let c = conf("server: {address: \"unix://run/api.sock\"}\n").unwrap();
        assert_eq!(
            c.server.address.under(Path::new("/w")),
            Address::Unix(PathBuf::from("/w/run/api.sock"))
        );
        let e = conf("server: {address: http://x}\n").unwrap_err();
        assert!(
            e.contains("key `server.address`") && e.contains("`http://x` is not an API address"),
            "{e}"
        );
        let e = conf("server: {tcp: \"localhost\"}\n").unwrap_err();
        assert!(
            e.contains("key `server.tcp`") && e.contains("`localhost` is not HOST:PORT"),
            "{e}"
        );
        // What loads is what is written back.
        let text = serde_yaml_ng::to_string(&c).unwrap();
        assert_eq!(conf(&text).unwrap(), c);
    }
}
