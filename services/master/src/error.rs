use std::path::PathBuf;

use baetyl_sdk::ConfigError;

/// Everything that can go wrong in the master. Variants carry the service, instance or path involved.
#[derive(Debug, thiserror::Error)]
pub enum MasterError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("service `{service}`: {message}")]
    Service { service: String, message: String },
    #[error("instance `{service}/{instance}`: {message}")]
    Instance {
        service: String,
        instance: String,
        message: String,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("another master is already running in {workdir} (lock {lock} is held); stop it first")]
    AlreadyRunning { workdir: PathBuf, lock: PathBuf },
    #[error("cannot serve the API on {address}: {source}")]
    Bind {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Update(String),
}

impl MasterError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        MasterError::Io {
            path: path.into(),
            source,
        }
    }
    pub fn service(service: &str, message: impl Into<String>) -> Self {
        MasterError::Service {
            service: service.to_string(),
            message: message.into(),
        }
    }
}

pub type Result<T, E = MasterError> = std::result::Result<T, E>;
