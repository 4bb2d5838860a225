//! Errors of the agent and of the HTTPS client it shares with `baetyl ctl`.

use std::path::PathBuf;

/// A request to the cloud that did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum HttpsError {
    #[error("`{url}` is not a usable cloud URL: {why}")]
    Url { url: String, why: String },
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("cannot connect to {address}: {source}")]
    Connect {
        address: String,
        source: std::io::Error,
    },
    #[error("TLS handshake with {address} failed: {why}")]
    Handshake { address: String, why: String },
    #[error("HTTP: {0}")]
    Http(String),
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("the cloud answered {status}: {body}")]
    Status { status: u16, body: String },
    #[error("the answer to {path} is not what was expected: {why}")]
    Decode { path: String, why: String },
    #[error("the answer is larger than the limit of {0} bytes")]
    TooLarge(u64),
}

impl HttpsError {
    /// The cloud refused us for good (revoked, unknown, forbidden): retrying the same way will not help.
    pub fn is_refusal(&self) -> bool {
        matches!(self, HttpsError::Status { status, .. } if matches!(status, 401 | 403))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Config(#[from] baetyl_sdk::ConfigError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Https(#[from] HttpsError),
    #[error("the master API: {0}")]
    Master(#[from] baetyl_sdk::ClientError),
    #[error("provisioning failed: {0}")]
    Provision(String),
    #[error("the device identity in {dir}: {why}")]
    Identity { dir: PathBuf, why: String },
    #[error("deployment {revision} refused: {why}")]
    Refused { revision: u64, why: String },
    #[error("blob {sha256}: {why}")]
    Blob { sha256: String, why: String },
    #[error("staging the application: {0}")]
    Stage(String),
    #[error("the master's update failed: {0}")]
    Update(String),
    #[error("{0}")]
    Operation(String),
    #[error(transparent)]
    Service(#[from] baetyl_sdk::service::ServiceError),
    #[error("the link was refused by the cloud: {0}")]
    Revoked(String),
}

impl AgentError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        AgentError::Io {
            path: path.into(),
            source,
        }
    }
}

pub type Result<T, E = AgentError> = std::result::Result<T, E>;
