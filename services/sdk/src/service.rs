//! The service kit: what every role's `run_cli` does around its own `run(cfg, shutdown)`, written once.
//!
//! ```text
//! let cfg = MyConfig::load(&args.config)?;
//! let service = Kit::new("timer").init(&cfg.logger, args.log_format)?;
//! service.block_on(my_role::run(cfg, shutdown_signal()))
//! ```
//!
//! [`Kit::init`] sets up logging from the config's `logger:` section (the `--log-format` flag wins over
//! `logger.format`) with the service and instance names of the env contract on every line, then builds the
//! tokio runtime. [`Service::block_on`] runs the role, logs its error if it fails, and shuts the runtime down
//! with a timeout so that a stuck background task cannot keep the process alive. [`shutdown_signal`] is the
//! one SIGTERM/SIGINT future every role stops on.

use std::future::Future;
use std::time::Duration;

use tokio::runtime::Runtime;
use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::env;
use crate::logging::{self, LogError, LogFormat, LogSetup, LoggerConfig};

/// How long the runtime may take to wind down once the role returned.
pub const RUNTIME_SHUTDOWN: Duration = Duration::from_secs(2);

/// Why a service could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("cannot set up logging: {0}")]
    Logging(#[from] LogError),
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

/// The names every log line carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    /// `BAETYL_SERVICE_NAME`, else the role.
    pub service: String,
    /// `BAETYL_SERVICE_INSTANCE_NAME`, else the service.
    pub instance: String,
}

impl Names {
    /// The names from the env contract, with `role` as the default service name.
    pub fn from_env(role: &str) -> Names {
        Names::from_vars(
            role,
            std::env::var(env::SERVICE_NAME).ok(),
            std::env::var(env::SERVICE_INSTANCE_NAME).ok(),
        )
    }

    fn from_vars(role: &str, service: Option<String>, instance: Option<String>) -> Names {
        let service = service
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| role.to_string());
        let instance = instance
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| service.clone());
        Names { service, instance }
    }
}

/// A role about to start: its names and the shape of its runtime.
#[derive(Debug, Clone)]
pub struct Kit {
    role: String,
    names: Names,
    worker_threads: Option<usize>,
}

impl Kit {
    /// `role` names the runtime's threads and is the service name when the master did not give one.
    pub fn new(role: &str) -> Kit {
        Kit {
            role: role.to_string(),
            names: Names::from_env(role),
            worker_threads: None,
        }
    }

    /// A fixed number of runtime workers instead of one per core.
    pub fn worker_threads(mut self, n: usize) -> Kit {
        self.worker_threads = Some(n.max(1));
        self
    }

    pub fn names(&self) -> &Names {
        &self.names
    }

    /// Sets up logging from `logger` (`format`, from `--log-format`, overrides `logger.format`), then builds
    /// the runtime.
    pub fn init(
        self,
        logger: &LoggerConfig,
        format: Option<LogFormat>,
    ) -> Result<Service, ServiceError> {
        logging::init(&LogSetup {
            service: &self.names.service,
            instance: &self.names.instance,
            level: &logger.level,
            format: format.unwrap_or(logger.format),
            file: logger.path.as_deref(),
            rotation: logger.rotation(),
        })?;
        let runtime = runtime(&self.role, self.worker_threads).map_err(ServiceError::Runtime)?;
        Ok(Service {
            names: self.names,
            runtime,
        })
    }
}

/// The multi-threaded runtime of a role: threads named after it, `worker_threads` workers (one per core when
/// `None`), I/O and timers enabled.
pub fn runtime(name: &str, worker_threads: Option<usize>) -> std::io::Result<Runtime> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = worker_threads {
        b.worker_threads(n);
    }
    b.enable_all().thread_name(name).build()
}

/// A started role: logging is set up and its runtime is ready.
#[derive(Debug)]
pub struct Service {
    names: Names,
    runtime: Runtime,
}

impl Service {
    pub fn names(&self) -> &Names {
        &self.names
    }

    /// The runtime, for what must run before the role (the function manager's master client).
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// Runs `role` to its end, logs its error if it failed, and shuts the runtime down within
    /// [`RUNTIME_SHUTDOWN`].
    pub fn block_on<T, E: std::fmt::Display>(
        self,
        role: impl Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        let result = self.runtime.block_on(role);
        if let Err(e) = &result {
            tracing::error!("{e}");
        }
        self.runtime.shutdown_timeout(RUNTIME_SHUTDOWN);
        result
    }
}

/// Completes on SIGTERM or SIGINT and logs which. If the handlers cannot be installed it says so and never
/// completes: the process then runs until it is killed, rather than stopping at once for no reason.
pub async fn shutdown_signal() {
    stop_on(
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    )
    .await;
}

async fn stop_on(term: std::io::Result<Signal>, int: std::io::Result<Signal>) -> &'static str {
    let (mut term, mut int) = match (term, int) {
        (Ok(t), Ok(i)) => (t, i),
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!("cannot install signal handlers: {e}; stop this process with SIGKILL");
            return std::future::pending().await;
        }
    };
    let which = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    tracing::info!("{which} received");
    which
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_the_env_contract() {
        assert_eq!(
            Names::from_vars("timer", None, None),
            Names {
                service: "timer".into(),
                instance: "timer".into()
            }
        );
        assert_eq!(
            Names::from_vars("timer", Some("clock".into()), None),
            Names {
                service: "clock".into(),
                instance: "clock".into()
            }
        );
        assert_eq!(
            Names::from_vars("timer", Some("clock".into()), Some("clock.i2".into())),
            Names {
                service: "clock".into(),
                instance: "clock.i2".into()
            }
        );
        assert_eq!(
            Names::from_vars("hub", Some(String::new()), None).service,
            "hub"
        );
    }

    #[test]
    fn runtime_threads_carry_the_role() {
        let rt = runtime("kit-role", Some(1)).expect("runtime");
        let name = rt.block_on(async {
            tokio::spawn(async { std::thread::current().name().map(str::to_string) })
                .await
                .expect("join")
        });
        assert_eq!(name.as_deref(), Some("kit-role"));
        assert_eq!(rt.metrics().num_workers(), 1);
    }

    #[test]
    fn block_on_returns_the_role_result_and_shuts_down_despite_stuck_tasks() {
        let service = Service {
            names: Names::from_vars("kit", None, None),
            runtime: runtime("kit", Some(1)).expect("runtime"),
        };
        let began = std::time::Instant::now();
        let r: Result<u32, String> = service.block_on(async {
            // A background task that never ends must not keep the process alive.
            tokio::task::spawn_blocking(|| std::thread::sleep(Duration::from_secs(30)));
            Err("the role failed".to_string())
        });
        assert_eq!(r, Err("the role failed".to_string()));
        assert!(
            began.elapsed() < Duration::from_secs(20),
            "shut down within the timeout"
        );
    }

    #[tokio::test]
    async fn shutdown_signal_completes_on_sigterm_and_sigint() {
        use nix::sys::signal::{Signal as Sig, raise};
        for (kind, sig, name) in [
            (SignalKind::terminate(), Sig::SIGTERM, "SIGTERM"),
            (SignalKind::interrupt(), Sig::SIGINT, "SIGINT"),
        ] {
            // Installed before anything is raised, so the default action (end the test process) never runs.
            let _guard = signal(kind).expect("handler");
            let waiting = stop_on(
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            );
            raise(sig).expect("raise");
            let got = tokio::time::timeout(Duration::from_secs(10), waiting)
                .await
                .expect("completes");
            assert_eq!(got, name);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn without_signal_handlers_it_never_completes() {
        let broken = Err(std::io::Error::other("no signal driver"));
        let never = stop_on(broken, signal(SignalKind::interrupt()));
        assert!(
            tokio::time::timeout(Duration::from_secs(3600), never)
                .await
                .is_err(),
            "a shutdown future that cannot hear signals must not stop the service"
        );
    }
}
