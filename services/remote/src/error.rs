use std::path::PathBuf;

/// Why the bridge or the timer could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error(transparent)]
    Config(#[from] baetyl_sdk::ConfigError),
    /// A connection's TLS material cannot be used (`name`: `hub`, ``remote `cloud` ``).
    #[error("{name}: {source}")]
    Tls {
        name: String,
        #[source]
        source: baetyl_sdk::mqtt::TlsError,
    },
    /// The timer's payload template (checked at load, so only a config built by hand gets here).
    #[error("publish.payload: {0}")]
    Template(String),
    #[error("buffer of remote `{remote}`: {source}")]
    Store {
        remote: String,
        #[source]
        source: StoreError,
    },
    #[error(transparent)]
    Service(#[from] baetyl_sdk::service::ServiceError),
    #[error("a bridge task failed: {0}")]
    Task(#[source] tokio::task::JoinError),
}

/// A failure of the on-disk message buffer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("record for topic `{topic}` is too large ({len} bytes)")]
    TooLarge { topic: String, len: usize },
}

impl StoreError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        StoreError::Io {
            path: path.into(),
            source,
        }
    }
}
