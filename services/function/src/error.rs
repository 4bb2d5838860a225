/// What can go wrong in the function manager and the runtimes.
#[derive(Debug, thiserror::Error)]
pub enum FunctionError {
    #[error(transparent)]
    Config(#[from] baetyl_sdk::ConfigError),
    /// A SQL handler that cannot be compiled.
    #[error("SQL `{sql}`: {message}")]
    Sql { sql: String, message: String },
    /// A SQL handler failed on a message (or, at load, on the probe row every handler is checked with).
    #[error(transparent)]
    Eval(#[from] EvalError),
    /// A SQL function's input is not JSON.
    #[error("the payload is not JSON: {0}")]
    Payload(#[source] serde_json::Error),
    #[error("function `{0}` is not served by this runtime")]
    UnknownFunction(String),
    /// A rule names a function that has no pool (the config check prevents it).
    #[error("rule `{rule}`: function `{function}` is not defined")]
    UndefinedFunction { rule: String, function: String },
    #[error(
        "`{address}` is not an address to serve on: {source}; write HOST:PORT or tcp://HOST:PORT"
    )]
    ListenAddress {
        address: String,
        #[source]
        source: std::net::AddrParseError,
    },
    #[error(
        "no address to serve on: pass --listen HOST:PORT or set {}",
        baetyl_sdk::env::SERVICE_INSTANCE_ADDRESS
    )]
    NoListenAddress,
    #[error("cannot listen on {address}: {source}")]
    Bind {
        address: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("gRPC server: {0}")]
    Serve(#[source] tonic::transport::Error),
    /// The function server's `cert`, `key` or `ca` cannot be used.
    #[error("server: {source}")]
    ServerTls {
        #[source]
        source: baetyl_sdk::mqtt::TlsError,
    },
    /// The hub connection's TLS material cannot be used.
    #[error("hub: {0}")]
    Tls(#[from] baetyl_sdk::mqtt::TlsError),
    #[error("cannot publish to {topic}: {source}")]
    Publish {
        topic: String,
        #[source]
        source: rumqttc::ClientError,
    },
    #[error(transparent)]
    Client(#[from] baetyl_sdk::ClientError),
    #[error(transparent)]
    Service(#[from] baetyl_sdk::service::ServiceError),
    /// The Python runtime's config could not be handed over as JSON.
    #[error("cannot pass the config to the Python runtime: {0}")]
    ConfigJson(#[source] serde_json::Error),
    #[error(
        "cannot run the Python runtime with `{python}`: {source} (set BAETYL_PYTHON to a Python 3 with grpcio)"
    )]
    Python {
        python: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "cannot run the Node.js runtime with `{node}`: {source} (set BAETYL_NODE to Node.js 18 or later)"
    )]
    Node {
        node: String,
        #[source]
        source: std::io::Error,
    },
    /// None of the places searched holds the Node.js runtime's modules.
    #[error(
        "the Node.js runtime's modules (@grpc/grpc-js, @grpc/proto-loader, protobufjs) are not in {searched}: run scripts/setup.sh (it installs them into services/function/runtimes/node/node_modules) and set BAETYL_NODE_MODULES to that directory, or install them beside the binary in <prefix>/lib/baetyl/node_modules"
    )]
    NodeModules { searched: String },
}

/// Why a SQL handler cannot evaluate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvalError {
    #[error("unsupported {what} `{text}`")]
    Unsupported { what: &'static str, text: String },
    #[error("bad number {0}")]
    Number(String),
    #[error("only IN (value, ...) lists are supported, not `{0}`")]
    InTarget(String),
    #[error("unsupported argument `{argument}` to {function}()")]
    Argument { function: String, argument: String },
    #[error("subqueries are not supported in {0}()")]
    Subquery(String),
    #[error("{function}() needs {needed} argument(s), got {got}")]
    Arity {
        function: String,
        needed: usize,
        got: usize,
    },
    #[error(
        "unknown function {0}(); use topic, qos, clientid, timestamp, functionname, upper, lower, length, trim, concat, substring, replace, startswith, endswith, abs, ceil, floor, round, sqrt, power, mod, exp, ln, log10, coalesce, now"
    )]
    UnknownFunction(String),
}
