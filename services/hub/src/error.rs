use std::net::SocketAddr;

use baetyl_sdk::ConfigError;

/// Why the hub could not start or stopped with an error. The `Display` form is meant for the operator.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// The config file is unreadable, does not match the schema or is inconsistent.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A listener could not be bound or its TLS material could not be loaded.
    #[error("listener {url} on {addr}: {message}")]
    Listener {
        url: String,
        addr: SocketAddr,
        message: String,
    },
    /// A broker plugin (retained store, session store, $SYS) failed to start.
    #[error("hub plugin {plugin} failed to start: {message}")]
    Plugin {
        plugin: &'static str,
        message: String,
    },
    /// An `rmqtt_plugin_*` variable would silently override the hub's own engine configuration.
    #[error(
        "environment variable {0} would override the hub's engine configuration; unset it (the hub is configured only by its config file)"
    )]
    EnvOverride(String),
    /// The async runtime could not be built.
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// Logging could not be set up.
    #[error("cannot set up logging: {0}")]
    Logging(String),
    /// The engine's listener loop ended with an error.
    #[error("hub engine stopped: {0}")]
    Engine(String),
}
