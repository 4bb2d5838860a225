use std::path::PathBuf;

/// Why the bridge or the timer could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error(transparent)]
    Config(#[from] baetyl_sdk::ConfigError),
    #[error("{name}: {message}")]
    Endpoint { name: String, message: String },
    #[error("{name}: cannot read {what} file {file}: {source}")]
    TlsFile {
        name: String,
        what: &'static str,
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{name}: TLS setup: {source}")]
    Tls {
        name: String,
        #[source]
        source: rustls::Error,
    },
    #[error("buffer of remote `{remote}`: {source}")]
    Store {
        remote: String,
        #[source]
        source: StoreError,
    },
    #[error("cannot set up logging: {0}")]
    Logging(String),
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("a bridge task failed: {0}")]
    Task(String),
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
