//! What this crate's in-process tests share: a supervisor on the fake engine in a temp work dir and readers
//! of what it did (instance states, gaps between an instance's end and its next start); a whole master
//! running in-process with its API on a socket in a temp dir.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use baetyl_sdk::client::{Address, MasterClient};
use baetyl_sdk::config::ConfigFile;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::api::{BuildInfo, OPERATOR};
use crate::config::{Application, MasterConfig};
use crate::engine::fake::{FakeEngine, What};
use crate::server::{Listeners, Setup};
use crate::supervisor::{HostFacts, InstanceState, Status, Supervisor};

pub struct Rig {
    pub fake: FakeEngine,
    pub sup: Arc<Supervisor>,
    pub dir: tempfile::TempDir,
}

pub fn conf(text: &str) -> MasterConfig {
    MasterConfig::parse(text, Path::new("conf.yml")).expect("conf.yml")
}

pub fn app(text: &str) -> Application {
    crate::config::test_app(text).expect("application.yml")
}

impl Rig {
    /// A supervisor with `conf.yml` text `conf_text` on a fresh fake engine and work dir.
    pub fn new(conf_text: &str) -> Rig {
        Rig::in_dir(conf_text, tempfile::tempdir().expect("temp dir"))
    }

    /// A supervisor like [`Rig::new`]'s in the work dir `dir` (left by an earlier one).
    pub fn in_dir(conf_text: &str, dir: tempfile::TempDir) -> Rig {
        let fake = FakeEngine::new();
        let host = HostFacts {
            host_id: "test-host".into(),
            host_sn: String::new(),
            api_address: "unix:///nowhere/baetyl.sock".into(),
        };
        let sup = Arc::new(Supervisor::new(
            dir.path().to_path_buf(),
            conf(conf_text),
            Arc::new(fake.clone()),
            host,
        ));
        Rig { fake, sup, dir }
    }

    /// Runs the application in `text` as the master does at start.
    pub async fn run(&self, text: &str) -> Application {
        let a = app(text);
        self.sup.run_app(a.clone()).await;
        a
    }

    /// The supervisor's state of `service/instance` once `pred` holds.
    pub async fn state_when(
        &self,
        service: &str,
        instance: &str,
        pred: impl Fn(&InstanceState) -> bool,
    ) -> InstanceState {
        self.sup
            .wait_for_state(service, instance, pred)
            .await
            .unwrap_or_else(|| panic!("{service}/{instance} never reached the state waited for"))
    }

    /// The state of `service/instance` once it has `status`.
    pub async fn status(&self, service: &str, instance: &str, status: Status) -> InstanceState {
        self.state_when(service, instance, |s| s.status == status)
            .await
    }

    /// Waits for `service/instance` to have been started `n` times.
    pub async fn starts(&self, service: &str, instance: &str, n: usize) {
        self.fake
            .until(&format!("{service}/{instance} to start {n} times"), |f| {
                f.starts(service, instance) >= n
            })
            .await;
    }

    /// For each end of `service/instance` followed by a start: how long after the end the start came.
    pub fn restart_delays(&self, service: &str, instance: &str) -> Vec<Duration> {
        let mut ended = None;
        let mut gaps = Vec::new();
        for e in self.fake.events_of(service, instance) {
            match e.what {
                What::Ended(_) => ended = Some(e.at),
                What::Started => {
                    if let Some(t) = ended.take() {
                        gaps.push(e.at - t);
                    }
                }
                // A start that fails is an end of its own.
                What::StartFailed => {
                    if let Some(t) = ended.replace(e.at) {
                        gaps.push(e.at - t);
                    }
                }
                _ => {}
            }
        }
        gaps
    }
}

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A whole master ([`crate::run`]) in this process on the fake engine, its API on a unix socket (and a
/// TCP listener on a free port) in a temp work dir.
pub struct Master {
    pub fake: FakeEngine,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub tcp: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<crate::error::Result<()>>,
}

impl Master {
    /// Starts a master with `conf_text` as conf.yml and `app_text` as its application, on `fake`, and
    /// waits until the instances in `expect` (`service/instance`) run.
    pub async fn start(
        conf_text: &str,
        app_text: &str,
        fake: FakeEngine,
        expect: &[&str],
    ) -> Master {
        let dir = tempfile::tempdir().expect("temp dir");
        write(dir.path(), "var/db/baetyl/application.yml", app_text);
        Master::start_in(dir, conf_text, fake, expect).await
    }

    /// Starts a master in a work dir the test prepared (`dir`), with `conf_text` as conf.yml.
    pub async fn start_in(
        dir: tempfile::TempDir,
        conf_text: &str,
        fake: FakeEngine,
        expect: &[&str],
    ) -> Master {
        let mut config = conf(conf_text);
        config.server.tcp = Some(([127, 0, 0, 1], 0).into());
        let listeners = Listeners::bind(dir.path(), &config.server)
            .await
            .expect("bind");
        let tcp = listeners
            .tcp
            .as_ref()
            .and_then(|l| l.local_addr().ok())
            .expect("tcp address");
        let setup = Setup {
            workdir: dir.path().to_path_buf(),
            config,
            build: BuildInfo {
                version: "0.0.0-test",
                git_revision: "test",
                target: "test-target",
            },
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let mut task = tokio::spawn(crate::run(
            setup,
            Arc::new(fake.clone()),
            listeners,
            async move {
                let _ = stopped.await;
            },
        ));
        let running = fake.until("the application's instances", |f| {
            expect.iter().all(|k| f.live().iter().any(|l| l == k))
        });
        // A master that does not get there fails the test in seconds, not after the hour `until` allows.
        let running = tokio::time::timeout(Duration::from_secs(30), running);
        tokio::select! {
            r = running => if r.is_err() {
                panic!("{expect:?} do not run after 30 s; events: {:#?}", fake.events());
            },
            ended = &mut task => panic!("the master stopped before its instances ran: {ended:?}"),
        }
        Master {
            fake,
            socket: dir.path().join("var/run/baetyl.sock"),
            dir,
            tcp,
            stop: Some(stop),
            task,
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// A client without credentials.
    pub fn anonymous(&self) -> MasterClient {
        MasterClient::new(Address::Unix(self.socket.clone()))
    }

    /// A client with the operator token the master wrote.
    pub fn operator(&self) -> MasterClient {
        let token = std::fs::read_to_string(crate::server::operator_token_path(self.dir.path()))
            .expect("operator token");
        self.anonymous().with_credentials(OPERATOR, token.trim())
    }

    /// A client with the credentials the master gave the instance `service/service`.
    pub fn service(&self, service: &str) -> MasterClient {
        let spec = self.fake.spec_of(service, service).expect("instance spec");
        self.anonymous()
            .with_credentials(service, &spec.env[baetyl_sdk::env::SERVICE_TOKEN])
    }

    /// Asks the master to stop and answers what `run` answered.
    pub async fn stop(self) -> crate::error::Result<()> {
        self.stop_keeping_dir().await.0
    }

    /// Stops the master like [`Master::stop`] and hands over its work dir for a look at what it left.
    pub async fn stop_keeping_dir(mut self) -> (crate::error::Result<()>, tempfile::TempDir) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let result = (&mut self.task).await.expect("run panicked");
        (result, self.dir)
    }
}

/// Writes `text` to `rel` under `root`, making the directories on the way.
pub fn write(root: &Path, rel: &str, text: &str) -> PathBuf {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().expect("parent")).expect("dir");
    std::fs::write(&path, text).expect("write");
    path
}

/// Status and body text of an API call.
pub async fn call(c: &MasterClient, method: &str, path: &str, body: &str) -> (u16, String) {
    let body = (!body.is_empty()).then(|| body.as_bytes().to_vec());
    let (status, bytes) = c.call(method, path, body).await.expect("call");
    (status, String::from_utf8_lossy(&bytes).trim().to_string())
}
