//! Everything that can go wrong in the master, one variant per failure, and the one place that says what
//! each failure answers over the API ([`MasterError::status`]).

use std::path::PathBuf;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use baetyl_sdk::ConfigError;

use crate::config::Cycle;

/// Variants carry the service, instance, path or value involved; their text is what the API answers and
/// the log says, so it tells the reader what to do.
#[derive(Debug, thiserror::Error)]
pub enum MasterError {
    /// A config file (conf.yml, an application, a package manifest) is invalid; names file and key.
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Cycle(#[from] Cycle),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path}: server.operator_token_file must hold one token of at least 16 printable ASCII characters (e.g. `openssl rand -hex 16`)"
    )]
    OperatorToken { path: PathBuf },
    #[error("another master is already running in {workdir} (lock {lock} is held); stop it first")]
    AlreadyRunning { workdir: PathBuf, lock: PathBuf },
    #[error("cannot serve the API on {address}: {source}")]
    Bind {
        address: String,
        #[source]
        source: std::io::Error,
    },
    /// conf.yml's `server.cert`, `server.key` or `server.ca` cannot be used.
    #[error("the API's TLS (conf.yml server.cert/key/ca): {0}")]
    ApiTls(#[source] baetyl_sdk::mqtt::TlsError),

    // ---- services and instances
    #[error("service `{service}`: is not defined in the application")]
    UndefinedService { service: String },
    #[error("service `{service}`: is not running (it must be part of the running application)")]
    ServiceNotRunning { service: String },
    #[error("instance `{service}/{instance}`: no such instance")]
    UnknownInstance { service: String, instance: String },
    #[error(
        "instance `{service}/{instance}`: instance name must be letters, digits, `-`, `_` or `.`"
    )]
    InvalidInstanceName { service: String, instance: String },
    /// A dynamic start that the engine could not carry out; `reason` is the instance's last exit.
    #[error("instance `{service}/{instance}`: {reason}")]
    StartFailed {
        service: String,
        instance: String,
        reason: String,
    },
    #[error("service `{service}`: key `environment`: {message}")]
    Environment { service: String, message: String },
    #[error(
        "service `{service}`: image `{image}` resolves to no native package (looked for {searched}) and is not a role of this binary ({roles})"
    )]
    UnknownImage {
        service: String,
        image: String,
        /// The package manifests looked for, comma-separated.
        searched: String,
        /// The roles of this binary, comma-separated (`none` without any).
        roles: String,
    },
    #[error("service `{service}`: package {package}: entry `{entry}` does not exist")]
    PackageEntryMissing {
        service: String,
        package: PathBuf,
        entry: String,
    },
    #[error(
        "service `{service}`: key `volumes`: `{mount}` is {host}, outside the work dir {workdir}; list a directory that holds it under conf.yml `volumes.allowed_roots` to allow it"
    )]
    VolumeOutside {
        service: String,
        /// The mount's source as written.
        mount: String,
        host: PathBuf,
        workdir: PathBuf,
    },
    #[error(
        "instance `{service}/{instance}`: {path} is outside the work dir and the allowed volume roots (conf.yml `volumes.allowed_roots`) once symbolic links are resolved, or its allowed root does not exist; nothing was created there"
    )]
    Escape {
        service: String,
        instance: String,
        path: PathBuf,
    },
    #[error("instance `{service}/{instance}`: volume target `{target}` {why}")]
    BadMountTarget {
        service: String,
        instance: String,
        target: String,
        why: &'static str,
    },
    #[error(
        "service `{service}`: key `ulimits.nofile`: hard limit {hard} is above {what} ({limit})"
    )]
    UlimitTooHigh {
        service: String,
        hard: u64,
        limit: u64,
        what: String,
    },
    #[error(
        "service `{service}`: key `user`: the application asks for root, which conf.yml `users.root` does not allow for this service; list it there, or remove `user: root`"
    )]
    RootNotAllowed { service: String },
    #[error(
        "service `{service}`: no free id left in conf.yml `users.ids` ({range}); widen the range"
    )]
    NoFreeId { service: String, range: String },
    #[error(
        "service `{service}`: volume {host} is mounted read-write by `{other}` too; with per-service users a volume has one writer: mount it read-only in the others"
    )]
    SharedWritable {
        service: String,
        other: String,
        host: PathBuf,
    },
    #[error(
        "service `{service}`: volume {host} is read-write and overlaps {other_host}, which `{other}` mounts read-write; with per-service users files have one writer: mount one of them read-only, or move one out of the other"
    )]
    NestedWritable {
        service: String,
        host: PathBuf,
        other: String,
        other_host: PathBuf,
    },
    #[error(
        "conf.yml `users.mode: on` needs the master to run as root (it gives each service a user of its own); run it as root or set `users.mode: off`"
    )]
    UsersNeedRoot,
    #[error("instance `{service}/{instance}`: empty command")]
    EmptyCommand { service: String, instance: String },
    #[error(
        "instance `{service}/{instance}`: cannot link volume at {link}: a real file or directory is in the way"
    )]
    VolumeInTheWay {
        service: String,
        instance: String,
        link: PathBuf,
    },
    #[error("instance `{service}/{instance}`: cannot run {command}: {source}")]
    Spawn {
        service: String,
        instance: String,
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "instance `{service}/{instance}`: did not stay up for the health window of {window} ({last_exit})"
    )]
    Unhealthy {
        service: String,
        instance: String,
        window: String,
        last_exit: String,
    },

    // ---- API requests
    #[error("account unauthorized")]
    Unauthorized,
    #[error("service `{caller}` may only report for its own instances")]
    NotPermitted { caller: String },
    #[error(
        "service `{caller}` may not {action}: that needs the operator token or a service with the agent role (conf.yml `server.agents`)"
    )]
    NeedsManager {
        caller: String,
        action: &'static str,
    },
    #[error("{caller} may not {action} instance `{service}/{instance}`: {why}")]
    InstanceNotAllowed {
        /// Who asked, as people say it (`service `a``).
        caller: String,
        action: &'static str,
        service: String,
        instance: String,
        why: String,
    },
    #[error("instance `{service}/{instance}`: variable `{name}` {why}")]
    DeniedVariable {
        service: String,
        instance: String,
        name: String,
        why: String,
    },
    #[error("request timed out (server.timeout)")]
    RequestTimeout,
    /// A request body that is not the JSON the route takes; `what` says what it must be.
    #[error("{what}: {source}")]
    InvalidBody {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "an update is already in progress; retry when it has finished (see inspect and the OTA log)"
    )]
    UpdateInProgress,
    #[error(
        "type MST cannot replace the master {exe}: it is part of the OS image ({why}); update the OS instead: {{\"type\":\"OS\",\"path\":\"<bundle>\"}}"
    )]
    MasterUpdateOsImage { exe: PathBuf, why: &'static str },
    /// An OS update (type OS) refused or failed; the running OS is untouched.
    #[error(transparent)]
    OsUpdate(#[from] OsUpdateError),
    #[error(
        "type MST replaces {expected}, but this master runs from {exe}: start the master from {expected} (Baetyl v1's layout: `<work dir>/bin/baetyl start`) to update it through the API"
    )]
    MasterUpdateElsewhere { exe: PathBuf, expected: PathBuf },
    #[error("the new master {binary} failed its check (`check -w <work dir> -c <conf>`): {reason}")]
    MasterCheck { binary: PathBuf, reason: String },
    #[error(
        "a master or OS update needs `path` (or v1's `file`): the new baetyl binary or the OS update bundle, a file under the work dir"
    )]
    MissingMasterPath,
    #[error("update type `{kind}` is unknown; use APP, MST or OS")]
    UnknownUpdateType { kind: String },
    #[error(
        "update path `{path}`: the update source must be a file under the work dir {workdir} (a relative path without `..`, or an absolute one inside it)"
    )]
    UpdateSourceOutside { path: String, workdir: PathBuf },
    #[error(
        "update source {path}: an agent's update must come from its own staging area, a read-write volume of its service ({}); stage the application there",
        .allowed.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    UpdateSourceNotStaged { path: String, allowed: Vec<PathBuf> },
    #[error("update source {path}: is a symbolic link; give the path of the file itself")]
    UpdateSourceSymlink { path: PathBuf },
    #[error("update source {path}: is a {kind}, not a regular file")]
    UpdateSourceNotRegular { path: PathBuf, kind: &'static str },
    #[error(
        "update source {path}: {size} bytes is more than {key} ({max}) allows; raise it in conf.yml if the file really is that large"
    )]
    UpdateSourceTooLarge {
        path: PathBuf,
        size: u64,
        key: &'static str,
        max: String,
    },
    #[error("update source {path}: {source}")]
    UpdateSource {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{action} needs baetyl init: this master was not started by it ({variable} is not set); {action} the host yourself"
    )]
    NoInit {
        action: &'static str,
        variable: &'static str,
    },
    #[error("cannot signal init (pid {pid}): {source}")]
    SignalInit {
        pid: i32,
        #[source]
        source: nix::Error,
    },
    #[error("no free port: {0}")]
    NoFreePort(#[source] std::io::Error),

    // ---- the containerd engine
    #[error("conf.yml key `containerd`: {0}")]
    ContainerdConfig(String),
    #[error(
        "containerd does not answer on {socket} ({detail}); `mode: containerd` needs it running (on a device init starts it; elsewhere start `containerd`, or set conf.yml `containerd.socket`)"
    )]
    ContainerdUnreachable { socket: PathBuf, detail: String },
    #[error("containerd: {what}: {detail}")]
    Containerd { what: String, detail: String },
    #[error("importing the OCI images: {0}")]
    ImageImport(#[from] crate::engine::containerd::import::ImportError),
    #[error(transparent)]
    ContainerSpec(#[from] crate::engine::containerd::spec::SpecError),
    #[error(
        "service `{service}`: image `{image}` is in none of the OCI layouts of conf.yml `containerd.images` (they hold: {available})"
    )]
    ImageNotImported {
        service: String,
        image: String,
        available: String,
    },
}

impl MasterError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        MasterError::Io {
            path: path.into(),
            source,
        }
    }

    /// The HTTP status this failure answers. v1 answers every refused request with 400 and a text body,
    /// and its clients (and ours) rely on that, so only the failures v1 did not have get their own status.
    pub fn status(&self) -> StatusCode {
        use MasterError::*;
        match self {
            Unauthorized => StatusCode::UNAUTHORIZED,
            NotPermitted { .. } | NeedsManager { .. } | InstanceNotAllowed { .. } => {
                StatusCode::FORBIDDEN
            }
            UpdateInProgress => StatusCode::CONFLICT,
            RequestTimeout => StatusCode::SERVICE_UNAVAILABLE,
            // The master's own faults, not the request's.
            Io { .. }
            | AlreadyRunning { .. }
            | Bind { .. }
            | ApiTls(_)
            | UsersNeedRoot
            | ContainerdConfig(_)
            | ContainerdUnreachable { .. }
            | Containerd { .. }
            | ImageImport(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Config(_)
            | OperatorToken { .. }
            | Cycle(_)
            | UndefinedService { .. }
            | ServiceNotRunning { .. }
            | UnknownInstance { .. }
            | InvalidInstanceName { .. }
            | StartFailed { .. }
            | Environment { .. }
            | DeniedVariable { .. }
            | UnknownImage { .. }
            | PackageEntryMissing { .. }
            | EmptyCommand { .. }
            | VolumeInTheWay { .. }
            | VolumeOutside { .. }
            | Escape { .. }
            | BadMountTarget { .. }
            | UlimitTooHigh { .. }
            | RootNotAllowed { .. }
            | NoFreeId { .. }
            | SharedWritable { .. }
            | NestedWritable { .. }
            | Spawn { .. }
            | Unhealthy { .. }
            | InvalidBody { .. }
            | MasterUpdateOsImage { .. }
            | OsUpdate(_)
            | MasterUpdateElsewhere { .. }
            | MasterCheck { .. }
            | MissingMasterPath
            | UnknownUpdateType { .. }
            | UpdateSourceOutside { .. }
            | UpdateSourceNotStaged { .. }
            | UpdateSourceSymlink { .. }
            | UpdateSourceNotRegular { .. }
            | UpdateSourceTooLarge { .. }
            | UpdateSource { .. }
            | NoInit { .. }
            | SignalInit { .. }
            | NoFreePort(_)
            | ContainerSpec(_)
            | ImageNotImported { .. } => StatusCode::BAD_REQUEST,
        }
    }
}

/// v1's answer to a failed request: the status, and the message as a text line.
impl IntoResponse for MasterError {
    fn into_response(self) -> Response {
        (self.status(), format!("{self}\n")).into_response()
    }
}

pub type Result<T, E = MasterError> = std::result::Result<T, E>;

/// Why an OS update was refused or failed. Each leaves the running slot as it was; the text is what the API
/// answers and the OTA log says.
#[derive(Debug, thiserror::Error)]
pub enum OsUpdateError {
    #[error(
        "OS updates need a device booted from a baetyl disk image ({why}); on this host update the application \
         (type APP) or the master (type MST) instead"
    )]
    NotADevice { why: String },
    #[error("{path}: not an OS update bundle: {why}")]
    NotABundle { path: PathBuf, why: String },
    #[error(
        "{path}: the bundle is truncated ({have} bytes, its manifest needs {need}); copy it again"
    )]
    Truncated { path: PathBuf, have: u64, need: u64 },
    #[error("{path}: {extra} bytes after the last payload; this is not the bundle the build wrote")]
    TrailingBytes { path: PathBuf, extra: u64 },
    #[error(
        "{path}: the signature does not match the key this device trusts ({key}); sign the bundle with that \
         key (`baetyl image build --sign-key`)"
    )]
    BadSignature { path: PathBuf, key: String },
    #[error("{path}: the public key this device trusts cannot be read: {why}")]
    Key { path: PathBuf, why: String },
    #[error("{path}: the bundle is for {found}, this device is {want}")]
    WrongDevice {
        path: PathBuf,
        found: String,
        want: String,
    },
    #[error(
        "{path}: payload {payload} does not match its SHA-256 in the signed manifest{when}; nothing was written"
    )]
    HashMismatch {
        path: PathBuf,
        payload: String,
        when: &'static str,
    },
    #[error(
        "the running OS (slot {slot}, {entry}) is still on trial: wait until it is marked good (after \
         update.os.bless_after of healthy services) before installing another"
    )]
    OnTrial { slot: char, entry: String },
    #[error("no partition named {name} on this device (GPT partition names root-a, root-b, boot)")]
    NoPartition { name: String },
    #[error(
        "the new root ({need} bytes) does not fit into {name} ({have} bytes); the disk was laid out for a \
         smaller OS"
    )]
    DoesNotFit { name: String, need: u64, have: u64 },
    #[error(
        "the ESP ({path}) has {free} bytes free, the new boot entry needs {need}: the disk is full"
    )]
    EspFull { path: PathBuf, free: u64, need: u64 },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot {what}: {source}")]
    Sys {
        what: String,
        #[source]
        source: nix::Error,
    },
}

impl OsUpdateError {
    pub fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        OsUpdateError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_failure_has_its_status_and_v1_text_body() {
        let cases = [
            (MasterError::Unauthorized, 401, "account unauthorized"),
            (
                MasterError::NotPermitted { caller: "a".into() },
                403,
                "service `a` may only report for its own instances",
            ),
            (
                MasterError::UpdateInProgress,
                409,
                "an update is already in progress",
            ),
            (
                MasterError::ServiceNotRunning {
                    service: "ghost".into(),
                },
                400,
                "service `ghost`: is not running",
            ),
            (
                MasterError::UnknownInstance {
                    service: "s".into(),
                    instance: "i".into(),
                },
                400,
                "instance `s/i`: no such instance",
            ),
            (
                MasterError::Config(ConfigError::invalid("new/application.yml", "key `x`: bad")),
                400,
                "new/application.yml: key `x`: bad",
            ),
            (
                MasterError::io("/w/x", std::io::Error::other("disk full")),
                500,
                "/w/x: disk full",
            ),
        ];
        for (e, status, text) in cases {
            assert_eq!(e.status().as_u16(), status, "{e}");
            let body = e.to_string();
            assert!(body.starts_with(text), "{body}");
            let resp = e.into_response();
            assert_eq!(resp.status().as_u16(), status);
            assert_eq!(
                resp.headers()["content-type"],
                "text/plain; charset=utf-8",
                "v1 answers errors as text"
            );
        }
    }
}
