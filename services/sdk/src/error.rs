use std::path::PathBuf;

/// A configuration file that could not be used. The `Display` form is meant for the person who wrote the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The YAML did not match the schema: `key` is the dotted path of the offending key (`.` for the top).
    #[error("{file}: {location}key `{key}`: {message}")]
    Schema {
        file: PathBuf,
        key: String,
        location: String,
        message: String,
    },
    /// The file parsed but its content is inconsistent (a dependency cycle, an unknown volume, ...).
    #[error("{file}: {message}")]
    Invalid { file: PathBuf, message: String },
}

impl ConfigError {
    pub fn invalid(file: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            file: file.into(),
            message: message.into(),
        }
    }
}

/// A call to the master's API that did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "master API address `{0}` is not valid: use unix:///path/to/baetyl.sock or tcp://127.0.0.1:PORT"
    )]
    Address(String),
    #[error("cannot connect to the master API at {address}: {source}")]
    Connect {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("master API {method} {path}: {source}")]
    Http {
        method: String,
        path: String,
        #[source]
        source: hyper::Error,
    },
    #[error("master API {method} {path} answered {status}: {body}")]
    Status {
        method: String,
        path: String,
        status: u16,
        body: String,
    },
    #[error("master API {path}: answer is not the expected JSON: {source}")]
    Decode {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "{0} is not set: this program must be started by the baetyl master (or set it by hand)"
    )]
    MissingEnv(&'static str),
}
