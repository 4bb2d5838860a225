//! The supervisor keeps the application's services running: it starts them in dependency order, restarts
//! instances by their restart policy with backoff, starts and stops dynamic instances on request, and
//! stops everything in reverse order. It holds what inspect shows about each instance.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rand::Rng;
use serde::Serialize;
use serde_json::{Map, Value, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::access::Caller;
use crate::config::{Application, MasterConfig, ServiceSpec, valid_name};
use crate::engine::logfile::INSTANCE_LOGS;
use crate::engine::{Engine, Exit, InstanceSpec, Running, RunningInfo};
use crate::error::{MasterError, Result};
use crate::restart::{Decision, Streak, decide};
use crate::users::Users;
use baetyl_sdk::env;

/// Facts about the host and the master that every instance's environment carries.
#[derive(Debug, Clone)]
pub struct HostFacts {
    pub host_id: String,
    pub host_sn: String,
    /// The API address as services must dial it (absolute).
    pub api_address: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Starting,
    Running,
    Restarting,
    Stopping,
    Stopped,
    /// Ended and not restarted (policy `no`, or `on-failure` after a clean exit).
    Exited,
    /// Given up on: the retry maximum was reached.
    Failed,
}

#[derive(Debug, Clone, Serialize)]
pub struct InstanceState {
    pub name: String,
    pub status: Status,
    pub start_time: Option<String>,
    /// Times the supervisor restarted it after it ended.
    pub restarts: u32,
    /// Times it was started (1 + restarts, unless a start failed).
    pub starts: u32,
    pub last_exit: Option<String>,
    pub dynamic: bool,
    #[serde(skip)]
    pub info: Option<RunningInfo>,
    #[serde(skip)]
    pub last_exit_success: bool,
    #[serde(skip)]
    pub reported: Map<String, Value>,
}

struct InstanceHandle {
    /// Who started it through the API; None for the application's static instances.
    started_by: Option<Caller>,
    state: watch::Receiver<InstanceState>,
    running: Arc<Mutex<Option<Arc<dyn Running>>>>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    reported: Arc<Mutex<Map<String, Value>>>,
}

struct ServiceRun {
    spec: ServiceSpec,
    instances: BTreeMap<String, InstanceHandle>,
}

pub struct Supervisor {
    workdir: PathBuf,
    config: MasterConfig,
    engine: Arc<dyn Engine>,
    host: HostFacts,
    app: Mutex<Application>,
    services: Mutex<BTreeMap<String, ServiceRun>>,
    tokens: Mutex<BTreeMap<String, String>>,
    error: Mutex<String>,
    users: Users,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_nanos(SystemTime::now()).to_string()
}

/// A fresh random token for a service's API credentials.
pub fn new_token() -> String {
    let bytes: [u8; 16] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Supervisor {
    pub fn new(
        workdir: PathBuf,
        config: MasterConfig,
        engine: Arc<dyn Engine>,
        host: HostFacts,
    ) -> Self {
        let on = crate::users::enabled_here(config.users.mode);
        let users = Users::new(&workdir, &config.users, &config.server.agents, on);
        Supervisor {
            users,
            workdir,
            config,
            engine,
            host,
            app: Mutex::new(Application::default()),
            services: Mutex::new(BTreeMap::new()),
            tokens: Mutex::new(BTreeMap::new()),
            error: Mutex::new(String::new()),
        }
    }

    pub fn engine(&self) -> &Arc<dyn Engine> {
        &self.engine
    }

    pub fn config(&self) -> &MasterConfig {
        &self.config
    }

    pub fn workdir(&self) -> &std::path::Path {
        &self.workdir
    }

    /// The per-service users.
    pub fn users(&self) -> &Users {
        &self.users
    }

    pub fn app(&self) -> Application {
        lock(&self.app).clone()
    }

    pub fn set_app(&self, app: Application) {
        *lock(&self.app) = app;
    }

    pub fn error(&self) -> String {
        lock(&self.error).clone()
    }

    pub fn set_error(&self, e: impl Into<String>) {
        *lock(&self.error) = e.into();
    }

    /// Whether `username`/`password` are a running service's credentials.
    pub fn check_token(&self, username: &str, password: &str) -> bool {
        use subtle::ConstantTimeEq;
        lock(&self.tokens)
            .get(username)
            .is_some_and(|t| bool::from(t.as_bytes().ct_eq(password.as_bytes())))
    }

    /// Makes `app` the application and starts its services in dependency order: a service starts once
    /// every service it depends on has started, and services that do not depend on each other start
    /// together (a container's start is mostly waiting on containerd and its shim: one after another they
    /// added up to most of a device's boot). A service that cannot start does not stop the others (nor
    /// those that depend on it): the failure is logged and shows in inspect's `error`.
    pub async fn run_app(&self, app: Application) {
        use futures_util::StreamExt;
        use futures_util::stream::FuturesUnordered;
        self.set_app(app.clone());
        let mut pending = app.start_order().unwrap_or_default();
        let mut done = std::collections::BTreeSet::new();
        let mut starting = FuturesUnordered::new();
        loop {
            let (ready, rest): (Vec<String>, Vec<String>) = pending.into_iter().partition(|n| {
                app.services.get(n).is_none_or(|s| {
                    s.depends_on
                        .iter()
                        .all(|d| done.contains(d) || !app.services.contains_key(d))
                })
            });
            pending = rest;
            for name in ready {
                let app = &app;
                starting.push(async move {
                    let r = self.start_service(app, &name).await;
                    (name, r)
                });
            }
            let Some((name, r)) = starting.next().await else {
                break;
            };
            if let Err(e) = r {
                tracing::error!(service = %name, "cannot start: {e}");
                self.set_error(format!("cannot start service `{name}`: {e}"));
            }
            done.insert(name);
        }
    }

    /// Stops every service, in reverse dependency order of the current application.
    pub async fn stop_all(&self) {
        let running: Vec<String> = lock(&self.services).keys().cloned().collect();
        for name in self.app().stop_order(&running) {
            self.stop_service(&name).await;
        }
    }

    /// Starts one service's `replica` instances, waiting until each was started (or failed to start).
    pub async fn start_service(&self, app: &Application, name: &str) -> Result<()> {
        let spec =
            app.services
                .get(name)
                .cloned()
                .ok_or_else(|| MasterError::UndefinedService {
                    service: name.to_string(),
                })?;
        self.check_service(app, name, &spec)?;
        self.engine.prepare(name, &spec).await?;
        let token = new_token();
        lock(&self.tokens).insert(name.to_string(), token.clone());
        lock(&self.services).insert(
            name.to_string(),
            ServiceRun {
                spec: spec.clone(),
                instances: BTreeMap::new(),
            },
        );
        let mut waits = Vec::new();
        for i in 0..spec.replica {
            let inst = if i == 0 {
                name.to_string()
            } else {
                format!("{name}.i{i}")
            };
            let extra = vec![(env::SERVICE_TOKEN, token.clone())];
            let ispec = self.instance_spec(app, name, &spec, &inst, &extra)?;
            waits.push(self.launch(ispec, None));
        }
        for mut w in waits {
            let _ = w.wait_for(|s| s.status != Status::Starting).await;
        }
        tracing::info!(service = name, replicas = spec.replica, "service started");
        Ok(())
    }

    /// Stops every instance of a service (static and dynamic) and forgets it.
    pub async fn stop_service(&self, name: &str) {
        let run = lock(&self.services).remove(name);
        lock(&self.tokens).remove(name);
        if let Some(run) = run {
            let stops: Vec<_> = run.instances.into_values().map(stop_handle).collect();
            futures_join(stops).await;
            tracing::info!(service = name, "service stopped");
        }
    }

    /// Starts a dynamic instance (`PUT .../instances/{inst}/start`) for `by`: no API token, the extra
    /// environment the caller asked for once checked ([`access::dynamic_env`]). A service may start
    /// instances of its own service or of a `replica: 0` service, never under a static instance's name,
    /// and may replace only an instance it started itself.
    pub async fn start_dynamic(
        &self,
        service: &str,
        instance: &str,
        extra: BTreeMap<String, String>,
        by: &Caller,
    ) -> Result<()> {
        if !valid_name(instance) {
            return Err(MasterError::InvalidInstanceName {
                service: service.into(),
                instance: instance.into(),
            });
        }
        let not_allowed = |why: String| MasterError::InstanceNotAllowed {
            caller: by.to_string(),
            action: "start",
            service: service.into(),
            instance: instance.into(),
            why,
        };
        let app = self.app();
        let spec = {
            let services = lock(&self.services);
            let run = services
                .get(service)
                .ok_or_else(|| MasterError::ServiceNotRunning {
                    service: service.into(),
                })?;
            if let Caller::Service(me) = by {
                if me != service && run.spec.replica != 0 {
                    return Err(not_allowed(format!(
                        "a service starts instances of its own service, or of a service with `replica: 0`; `{service}` has replica {}",
                        run.spec.replica
                    )));
                }
                if is_static_name(service, instance) {
                    return Err(not_allowed(format!(
                        "`{instance}` is the name of a static instance of `{service}`"
                    )));
                }
            }
            if let Some(h) = run.instances.get(instance) {
                may_manage(by, h).map_err(not_allowed)?;
                let status = h.state.borrow().status;
                if !matches!(status, Status::Exited | Status::Failed | Status::Stopped) {
                    // v1: starting an instance that runs restarts it (stopped below, then started with
                    // the new environment).
                    tracing::info!(
                        service,
                        instance,
                        "start of a running instance: restarting it, as v1 did"
                    );
                }
            }
            run.spec.clone()
        };
        let extra = crate::access::dynamic_env(service, instance, extra)?;
        let old = lock(&self.services)
            .get_mut(service)
            .and_then(|r| r.instances.remove(instance));
        if let Some(old) = old {
            stop_handle(old).await;
        }
        let extra: Vec<(&str, String)> =
            extra.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        let ispec = self.instance_spec(&app, service, &spec, instance, &extra)?;
        let mut w = self.launch(ispec, Some(by.clone()));
        let _ = w.wait_for(|s| s.status != Status::Starting).await;
        let state = w.borrow().clone();
        if state.starts == 0 {
            return Err(MasterError::StartFailed {
                service: service.into(),
                instance: instance.into(),
                reason: state.last_exit.unwrap_or_else(|| "could not start".into()),
            });
        }
        Ok(())
    }

    /// Stops an instance for `by` (`PUT .../instances/{inst}/stop`) and forgets it. A service may stop
    /// only the dynamic instances it started; the operator and agents any instance.
    pub async fn stop_dynamic(&self, service: &str, instance: &str, by: &Caller) -> Result<()> {
        let handle = {
            let mut services = lock(&self.services);
            let run = services
                .get_mut(service)
                .ok_or_else(|| MasterError::ServiceNotRunning {
                    service: service.into(),
                })?;
            let h = run
                .instances
                .get(instance)
                .ok_or_else(|| MasterError::UnknownInstance {
                    service: service.into(),
                    instance: instance.into(),
                })?;
            may_manage(by, h).map_err(|why| MasterError::InstanceNotAllowed {
                caller: by.to_string(),
                action: "stop",
                service: service.into(),
                instance: instance.into(),
                why,
            })?;
            run.instances.remove(instance)
        };
        if let Some(handle) = handle {
            stop_handle(handle).await;
        }
        Ok(())
    }

    /// Merges what an instance reported into its inspect entry.
    pub fn report(&self, service: &str, instance: &str, stats: Map<String, Value>) -> Result<()> {
        let services = lock(&self.services);
        let h = services
            .get(service)
            .and_then(|r| r.instances.get(instance))
            .ok_or_else(|| MasterError::UnknownInstance {
                service: service.into(),
                instance: instance.into(),
            })?;
        lock(&h.reported).extend(stats);
        Ok(())
    }

    /// States of the instances of `services`, for the update's health check.
    pub fn instance_states(&self, services: &[String]) -> Vec<(String, InstanceState)> {
        let all = lock(&self.services);
        services
            .iter()
            .filter_map(|s| all.get(s).map(|r| (s, r)))
            .flat_map(|(s, r)| {
                r.instances
                    .values()
                    .map(move |h| (s.clone(), h.state.borrow().clone()))
            })
            .collect()
    }

    /// Waits until the state of `service/instance` satisfies `pred`; answers that state, or None when there
    /// is no such instance or it ended in a state that does not.
    pub async fn wait_for_state(
        &self,
        service: &str,
        instance: &str,
        pred: impl Fn(&InstanceState) -> bool,
    ) -> Option<InstanceState> {
        let mut rx = lock(&self.services)
            .get(service)
            .and_then(|r| r.instances.get(instance))
            .map(|h| h.state.clone())?;
        let state = rx.wait_for(|s| pred(s)).await.ok()?.clone();
        Some(state)
    }

    /// The `services` part of inspect.
    pub fn inspect_services(&self) -> Value {
        let all = lock(&self.services);
        let list: Vec<Value> = all
            .iter()
            .map(|(name, run)| {
                let instances: Vec<Value> = run
                    .instances
                    .values()
                    .map(|h| {
                        let st = h.state.borrow().clone();
                        let mut v = json!({
                            "name": st.name,
                            "status": st.status,
                            "start_time": st.start_time,
                            "restarts": st.restarts,
                            "last_exit": st.last_exit,
                            "dynamic": st.dynamic,
                        });
                        if let (Some(info), Some(obj)) = (&st.info, v.as_object_mut()) {
                            obj.insert(
                                info.kind.into(),
                                json!({"id": info.id, "name": info.name, "pid": info.pid}),
                            );
                        }
                        let running = lock(&h.running).clone();
                        if let (Some(r), Some(obj)) = (running, v.as_object_mut()) {
                            let s = r.stats();
                            obj.insert("cpu_stats".into(), json!({"used_percent": s.cpu_percent, "seconds": s.cpu_seconds}));
                            obj.insert("mem_stats".into(), json!({"rss": s.rss_bytes}));
                            obj.insert("processes".into(), json!(s.processes));
                        }
                        if let Some(obj) = v.as_object_mut() {
                            for (k, val) in lock(&h.reported).iter() {
                                obj.entry(k.clone()).or_insert_with(|| val.clone());
                            }
                        }
                        v
                    })
                    .collect();
                json!({"name": name, "image": run.spec.image, "replica": run.spec.replica, "instances": instances})
            })
            .collect();
        Value::Array(list)
    }

    /// Where an agent service may stage updates: the host directories of its read-write volumes in the
    /// running application (its staging area; the master reads an agent's update only from there).
    pub fn staging_dirs(&self, service: &str) -> Vec<std::path::PathBuf> {
        self.mounts(&self.app(), service)
            .map(|ms| {
                ms.into_iter()
                    .filter(|m| !m.read_only)
                    .map(|m| m.host)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Checks what the master's policy says about a service before it starts (or before an update that
    /// brings it is accepted): its volumes stay in the work dir or the allowed roots; root only where
    /// allowed; with per-service users, one writer per volume. Allocates the service's user if needed.
    pub fn check_service(
        &self,
        app: &Application,
        service: &str,
        spec: &ServiceSpec,
    ) -> Result<()> {
        let mounts = self.mounts(app, service)?;
        self.users.check(service, spec)?;
        if self.users.on() {
            for m in mounts.iter().filter(|m| !m.read_only && m.shared) {
                let other = app
                    .others_mounting(service, &m.host, &self.workdir)
                    .into_iter()
                    .find(|(_, read_only)| !read_only);
                if let Some((other, _)) = other {
                    return Err(MasterError::SharedWritable {
                        service: service.to_string(),
                        other,
                        host: m.host.clone(),
                    });
                }
            }
            // A writable volume inside another service's writable volume: the outer one's owner can
            // rewrite or replace the inner one's files. Allowed only when the outer one is an agent's
            // (the staging area where the cloud agent puts the application's volumes: the agent is
            // trusted with every service's files, it deploys them).
            for m in mounts.iter().filter(|m| !m.read_only) {
                let clash = app
                    .others_overlapping(service, &m.host, &self.workdir)
                    .into_iter()
                    .filter(|(_, h, ro)| !ro && h != &m.host)
                    .find(|(other, h, _)| {
                        let outer = if m.host.starts_with(h) {
                            other
                        } else {
                            service
                        };
                        !self.users.is_agent(outer)
                    });
                if let Some((other, other_host, _)) = clash {
                    return Err(MasterError::NestedWritable {
                        service: service.to_string(),
                        host: m.host.clone(),
                        other,
                        other_host,
                    });
                }
            }
        }
        Ok(())
    }

    fn mounts(
        &self,
        app: &Application,
        service: &str,
    ) -> Result<Vec<crate::engine::ResolvedMount>> {
        app.resolve_mounts(service, &self.workdir, &self.config.volumes.allowed_roots)
            .map_err(|o| MasterError::VolumeOutside {
                service: service.to_string(),
                mount: o.source,
                host: o.host,
                workdir: self.workdir.clone(),
            })
    }

    fn instance_spec(
        &self,
        app: &Application,
        service: &str,
        spec: &ServiceSpec,
        instance: &str,
        extra: &[(&str, String)],
    ) -> Result<InstanceSpec> {
        let mut envs = spec
            .environment
            .to_map()
            .map_err(|message| MasterError::Environment {
                service: service.to_string(),
                message,
            })?;
        let contract = [
            (env::HOST_ID, self.host.host_id.clone()),
            (env::HOST_OS, std::env::consts::OS.to_string()),
            (env::HOST_SN, self.host.host_sn.clone()),
            (env::MASTER_API_ADDRESS, self.host.api_address.clone()),
            (env::MASTER_API_VERSION, env::API_VERSION.to_string()),
            (env::SERVICE_MODE, self.engine.mode().to_string()),
            (env::SERVICE_NAME, service.to_string()),
            (env::SERVICE_INSTANCE_NAME, instance.to_string()),
        ];
        for (k, v) in contract.into_iter().chain(extra.iter().cloned()) {
            envs.insert(k.to_string(), v);
        }
        env::add_v1_aliases(&mut envs);
        let mounts = self.mounts(app, service)?;
        let user = self.users.credentials(service, spec)?;
        // The agent sends the instance logs to the cloud: in a container it needs them in view.
        let mut views = Vec::new();
        if self.users.is_agent(service) {
            let logs = self.workdir.join(INSTANCE_LOGS);
            std::fs::create_dir_all(&logs).map_err(|e| MasterError::io(&logs, e))?;
            views.push(logs);
        }
        Ok(InstanceSpec {
            service: service.to_string(),
            instance: instance.to_string(),
            spec: spec.clone(),
            env: envs,
            mounts,
            user,
            views,
        })
    }

    /// Spawns the task that runs and restarts one instance (dynamic when `started_by` someone); answers a
    /// view of its state.
    fn launch(
        &self,
        ispec: InstanceSpec,
        started_by: Option<Caller>,
    ) -> watch::Receiver<InstanceState> {
        let dynamic = started_by.is_some();
        let initial = InstanceState {
            name: ispec.instance.clone(),
            status: Status::Starting,
            start_time: None,
            restarts: 0,
            starts: 0,
            last_exit: None,
            dynamic,
            info: None,
            last_exit_success: false,
            reported: Map::new(),
        };
        let (state_tx, state_rx) = watch::channel(initial);
        let (stop_tx, stop_rx) = watch::channel(false);
        let running = Arc::new(Mutex::new(None));
        let service = ispec.service.clone();
        let instance = ispec.instance.clone();
        let task = tokio::spawn(run_instance(
            self.engine.clone(),
            ispec,
            self.config.grace.get(),
            state_tx,
            running.clone(),
            stop_rx,
        ));
        let handle = InstanceHandle {
            started_by,
            state: state_rx.clone(),
            running,
            stop: stop_tx,
            task,
            reported: Arc::new(Mutex::new(Map::new())),
        };
        if let Some(run) = lock(&self.services).get_mut(&service) {
            run.instances.insert(instance, handle);
        }
        state_rx
    }
}

/// Whether `name` is (or would be) a static instance's name of `service`: `<svc>` or `<svc>.i<N>`.
fn is_static_name(service: &str, name: &str) -> bool {
    name == service
        || name
            .strip_prefix(service)
            .and_then(|rest| rest.strip_prefix(".i"))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Whether `by` may stop or replace the instance `h`: the operator and agents may; a service only a
/// dynamic instance it started. Err says why not.
fn may_manage(by: &Caller, h: &InstanceHandle) -> std::result::Result<(), String> {
    if by.manages() {
        return Ok(());
    }
    match &h.started_by {
        None => Err(
            "it is a static instance of the application; only the operator or an agent may stop it"
                .into(),
        ),
        Some(starter) if starter != by => Err(format!("it was started by {starter}")),
        Some(_) => Ok(()),
    }
}

async fn stop_handle(h: InstanceHandle) {
    let _ = h.stop.send(true);
    let _ = h.task.await;
}

async fn futures_join(stops: Vec<impl std::future::Future<Output = ()> + Send + 'static>) {
    let tasks: Vec<_> = stops.into_iter().map(tokio::spawn).collect();
    for t in tasks {
        let _ = t.await;
    }
}

/// Runs one instance until asked to stop: start, wait, and restart by policy with backoff.
async fn run_instance(
    engine: Arc<dyn Engine>,
    ispec: InstanceSpec,
    grace: Duration,
    state: watch::Sender<InstanceState>,
    running_slot: Arc<Mutex<Option<Arc<dyn Running>>>>,
    mut stop: watch::Receiver<bool>,
) {
    let policy = ispec.spec.restart.clone();
    let mut streak = Streak::new(&policy);
    let (svc, inst) = (ispec.service.clone(), ispec.instance.clone());
    loop {
        if *stop.borrow() {
            state.send_modify(|s| s.status = Status::Stopped);
            return;
        }
        let began = Instant::now();
        let exit = match engine.start(ispec.clone()).await {
            Ok(r) => {
                let r: Arc<dyn Running> = Arc::from(r);
                *lock(&running_slot) = Some(r.clone());
                state.send_modify(|s| {
                    s.status = Status::Running;
                    s.start_time = Some(now_rfc3339());
                    s.starts += 1;
                    s.info = Some(r.info());
                });
                let exit = tokio::select! {
                    e = r.wait() => e,
                    _ = stop.changed() => {
                        state.send_modify(|s| s.status = Status::Stopping);
                        let e = r.stop(grace).await;
                        tracing::info!(service = %svc, instance = %inst, "instance stopped ({e})");
                        *lock(&running_slot) = None;
                        state.send_modify(|s| {
                            s.status = Status::Stopped;
                            s.last_exit = Some(e.to_string());
                            s.last_exit_success = e.success();
                        });
                        return;
                    }
                };
                *lock(&running_slot) = None;
                exit
            }
            Err(e) => {
                tracing::error!(service = %svc, instance = %inst, "cannot start instance: {e}");
                Exit::Error(e.to_string())
            }
        };
        state.send_modify(|s| {
            s.last_exit = Some(exit.to_string());
            s.last_exit_success = exit.success();
        });
        let delay = match decide(&policy, &exit, began.elapsed(), streak) {
            Decision::Leave { success } => {
                tracing::info!(service = %svc, instance = %inst, "instance {exit}; not restarted (restart policy {:?})", policy.policy);
                state.send_modify(|s| {
                    s.status = if success {
                        Status::Exited
                    } else {
                        Status::Failed
                    }
                });
                return;
            }
            Decision::GiveUp => {
                tracing::error!(
                    service = %svc, instance = %inst,
                    "instance {exit}; giving up after {} restarts in a row (restart.retry.max)", policy.retry.max
                );
                state.send_modify(|s| s.status = Status::Failed);
                return;
            }
            Decision::Restart {
                delay,
                streak: next,
            } => {
                streak = next;
                delay
            }
        };
        let limit = if policy.retry.max > 0 {
            policy.retry.max.to_string()
        } else {
            "unlimited".into()
        };
        tracing::warn!(
            service = %svc, instance = %inst,
            "instance {exit}; restarting in {} (restart {} of {limit}, policy {:?})",
            humantime::format_duration(delay), streak.restarts, policy.policy
        );
        state.send_modify(|s| {
            s.status = Status::Restarting;
            s.restarts += 1;
        });
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.changed() => {
                state.send_modify(|s| s.status = Status::Stopped);
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests;
