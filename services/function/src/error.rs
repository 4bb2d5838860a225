/// What can go wrong in the function manager and the runtimes.
#[derive(Debug, thiserror::Error)]
pub enum FunctionError {
    #[error(transparent)]
    Config(#[from] baetyl_sdk::ConfigError),
    #[error("SQL `{sql}`: {message}")]
    Sql { sql: String, message: String },
    #[error("{0}")]
    Eval(String),
    #[error("{0}")]
    Payload(String),
    #[error("function `{0}` is not served by this runtime")]
    UnknownFunction(String),
    #[error("function `{function}`: {message}")]
    Pool { function: String, message: String },
    #[error("cannot listen on {address}: {message}")]
    Listen { address: String, message: String },
    #[error("MQTT: {0}")]
    Mqtt(String),
    #[error(transparent)]
    Client(#[from] baetyl_sdk::ClientError),
    #[error("{0}")]
    Other(String),
}
