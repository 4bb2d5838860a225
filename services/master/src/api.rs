//! The master's REST API (Baetyl v1 routes), served over a unix socket and optionally TCP on loopback.
//! Every route needs a running service's credentials (or the operator token the master writes for local
//! tools); dynamically started instances have none. What each caller may do is [`crate::access`]'s.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Extension, Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::access::Caller;
use crate::error::MasterError;
use crate::ota::Updater;
use crate::stats::HostSampler;
use crate::supervisor::{Supervisor, now_rfc3339};
use baetyl_sdk::env;

mod v0;

/// Static facts for inspect's `software` section.
#[derive(Debug, Clone, Copy)]
pub struct BuildInfo {
    pub version: &'static str,
    pub git_revision: &'static str,
    pub target: &'static str,
}

pub struct ApiState {
    pub sup: Arc<Supervisor>,
    pub updater: Arc<Updater>,
    pub mst: Arc<crate::mst::Mst>,
    pub os: Arc<crate::os_update::OsUpdater>,
    pub build: BuildInfo,
    pub operator: (String, String),
    pub sampler: HostSampler,
    pub timeout: Duration,
}

/// The user name of the operator token written to `var/run/baetyl/operator.token`.
pub const OPERATOR: &str = "baetyl-operator";

pub fn router(state: Arc<ApiState>) -> Router {
    let v1 = Router::new()
        .route("/v1/system/inspect", get(inspect))
        .route("/v1/system/update", put(update))
        .route("/v1/system/update/{trace}", get(update_records))
        .route("/v1/system/application", get(application))
        .route("/v1/ports/available", get(available_port))
        .route("/v1/system/reboot", put(reboot))
        .route("/v1/system/poweroff", put(poweroff))
        .route(
            "/v1/services/{svc}/instances/{inst}/start",
            put(start_instance),
        )
        .route(
            "/v1/services/{svc}/instances/{inst}/stop",
            put(stop_instance),
        )
        .route("/v1/services/{svc}/instances/{inst}/report", put(report));
    v0::routes(v1)
        .layer(middleware::from_fn_with_state(state.clone(), auth))
        .with_state(state)
}

fn header<'a>(h: &'a HeaderMap, a: &str, b: &str) -> Option<&'a str> {
    h.get(a).or_else(|| h.get(b)).and_then(|v| v.to_str().ok())
}

/// Who the credentials of a request name, and with which role; None when they name no one.
fn caller_of(st: &ApiState, h: &HeaderMap) -> Option<Caller> {
    let user = header(h, env::HEADER_USERNAME, env::HEADER_USERNAME_ALT)?;
    let pass = header(h, env::HEADER_PASSWORD, env::HEADER_PASSWORD_ALT)?;
    use subtle::ConstantTimeEq;
    if user == st.operator.0 && bool::from(pass.as_bytes().ct_eq(st.operator.1.as_bytes())) {
        return Some(Caller::Operator);
    }
    if !st.sup.check_token(user, pass) {
        return None;
    }
    let name = user.to_string();
    Some(if st.sup.config().server.agents.contains(&name) {
        Caller::Agent(name)
    } else {
        Caller::Service(name)
    })
}

async fn auth(State(st): State<Arc<ApiState>>, mut req: Request, next: Next) -> Response {
    let Some(caller) = caller_of(&st, req.headers()) else {
        return MasterError::Unauthorized.into_response();
    };
    req.extensions_mut().insert(caller);
    match tokio::time::timeout(st.timeout, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => MasterError::RequestTimeout.into_response(),
    }
}

/// An empty 200 for success, the failure's own status and text otherwise.
fn answer(result: Result<(), MasterError>) -> Response {
    match result {
        Ok(()) => StatusCode::OK.into_response(),
        Err(e) => e.into_response(),
    }
}

/// Parses a JSON request body; `what` says what it must be when it is not.
fn json_body<T: serde::de::DeserializeOwned>(
    body: &[u8],
    what: &'static str,
) -> Result<T, MasterError> {
    serde_json::from_slice(body).map_err(|source| MasterError::InvalidBody { what, source })
}

/// The resident memory of PID 1 (when the master runs under `baetyl init`) and of the master itself, so the
/// footprint of the whole system shows next to the services'.
fn system_processes() -> Value {
    let me = std::process::id();
    let mut out = serde_json::Map::new();
    out.insert(
        "master".into(),
        json!({"pid": me, "rss": crate::stats::process_rss(me)}),
    );
    if let Some(pid) = std::env::var(env::INIT_PID)
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
    {
        out.insert(
            "init".into(),
            json!({"pid": pid, "rss": crate::stats::process_rss(pid)}),
        );
    }
    Value::Object(out)
}

async fn inspect(State(st): State<Arc<ApiState>>) -> Response {
    let sup = &st.sup;
    let app = sup.app();
    let mut hardware = st.sampler.sample(sup.workdir());
    v0::add_v1_fields(&mut hardware, &crate::server::host_id());
    let volumes: Vec<Value> = app
        .volumes
        .iter()
        .map(|(name, v)| {
            json!({"name": name, "path": v.path_or_default(name), "read_only": v.read_only})
        })
        .collect();
    let body = json!({
        "time": now_rfc3339(),
        "error": sup.error(),
        "software": {
            "os": std::env::consts::OS,
            "arch": std::env::consts::ARCH,
            "pwd": sup.workdir().display().to_string(),
            "mode": sup.engine().mode(),
            "bin_version": st.build.version,
            "git_revision": st.build.git_revision,
            "build_target": st.build.target,
            "conf_version": app.app_version,
        },
        "hardware": hardware,
        "processes": system_processes(),
        "services": sup.inspect_services(),
        "volumes": volumes,
        "safe_mode": crate::safe_mode::inspect(),
    });
    axum::Json(body).into_response()
}

#[derive(Deserialize)]
struct UpdateRequest {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    path: String,
    /// v1 agents older than 0.1.4 sent the path as `file`.
    #[serde(default)]
    file: String,
    #[serde(default)]
    trace: String,
}

async fn update(
    State(st): State<Arc<ApiState>>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Response {
    if let Some(refused) = crate::safe_mode::refuse_update(&body) {
        return refused;
    }
    answer(submit_update(&st, &caller, &body))
}

fn submit_update(st: &ApiState, caller: &Caller, body: &[u8]) -> Result<(), MasterError> {
    caller.must_manage("update the application")?;
    let mut req: UpdateRequest = json_body(
        body,
        r#"update body is not {"type":"APP","path":"...","trace":"..."}"#,
    )?;
    let kind = req.kind.to_ascii_uppercase();
    let master = match kind.as_str() {
        "APP" | "" => false,
        "MST" | "OS" => true,
        other => {
            return Err(MasterError::UnknownUpdateType {
                kind: other.to_string(),
            });
        }
    };
    if req.path.is_empty() {
        req.path = std::mem::take(&mut req.file);
    }
    if req.path.is_empty() && master {
        return Err(MasterError::MissingMasterPath);
    }
    if req.path.is_empty() {
        // v1: an update without a path reloads application.yml as it is now on disk (edited in place), with
        // the same validation, `.old` copy and rollback as any update.
        tracing::info!(
            "update without a path: reloading {} as v1 did",
            crate::ota::APP_FILE
        );
        req.path = crate::ota::APP_FILE.to_string();
    }
    // An agent is a service: what it asks the master to read must be what it staged, in its own read-write
    // volumes (an operator may name any file of the work dir).
    let within = match caller {
        Caller::Agent(name) => {
            let dirs = st.sup.staging_dirs(name);
            if dirs.is_empty() {
                return Err(MasterError::UpdateSourceNotStaged {
                    path: req.path,
                    allowed: dirs,
                });
            }
            dirs
        }
        Caller::Operator | Caller::Service(_) => Vec::new(),
    };
    if kind == "OS" {
        return st.os.submit(&req.path, &req.trace, &within);
    }
    if master {
        return st.mst.submit_within(&req.path, &req.trace, &within);
    }
    st.updater.submit_within(&req.path, &req.trace, &within)
}

/// The OTA log's records of one update (`{"trace": T, "records": [...]}`), for the agent, which follows
/// its updates through the API (in a container it sees its own volumes, not the master's files).
async fn update_records(
    State(st): State<Arc<ApiState>>,
    Extension(caller): Extension<Caller>,
    Path(trace): Path<String>,
) -> Response {
    if let Err(e) = caller.must_manage("read the OTA log") {
        return e.into_response();
    }
    axum::Json(json!({"trace": trace, "records": st.updater.records(&trace)})).into_response()
}

/// The running application's text (every service's environment: for the operator and the agent alone,
/// who deploy it); 404 before one is installed.
async fn application(
    State(st): State<Arc<ApiState>>,
    Extension(caller): Extension<Caller>,
) -> Response {
    if let Err(e) = caller.must_manage("read the running application") {
        return e.into_response();
    }
    match st.updater.running_text() {
        Some(text) => (
            [(axum::http::header::CONTENT_TYPE, "application/yaml")],
            text,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no application is installed").into_response(),
    }
}

/// Asks `baetyl init` (the pid in BAETYL_INIT_PID) to reboot or power off: init stops this master, which
/// stops every service, then syncs, unmounts and reboots.
fn ask_init(signal: nix::sys::signal::Signal, action: &'static str) -> Response {
    let pid = std::env::var(env::INIT_PID)
        .ok()
        .and_then(|p| p.parse::<i32>().ok());
    let Some(pid) = pid else {
        return MasterError::NoInit {
            action,
            variable: env::INIT_PID,
        }
        .into_response();
    };
    let target = nix::unistd::Pid::from_raw(pid);
    // Checked now (signal 0) so that a missing init is answered; the signal itself goes a moment after the
    // answer, so that the caller (the cloud agent forwarding an operator's command) gets the answer out before
    // init stops every service.
    if let Err(source) = nix::sys::signal::kill(target, None) {
        return answer(Err(MasterError::SignalInit { pid, source }));
    }
    tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        match nix::sys::signal::kill(target, signal) {
            Ok(()) => tracing::warn!("{action} requested through the API; asked init (pid {pid})"),
            Err(e) => tracing::error!("{action}: cannot signal init (pid {pid}): {e}"),
        }
    });
    answer(Ok(()))
}

async fn reboot(Extension(caller): Extension<Caller>) -> Response {
    if let Err(e) = caller.must_manage("reboot the device") {
        return e.into_response();
    }
    ask_init(nix::sys::signal::Signal::SIGTERM, "reboot")
}

async fn poweroff(Extension(caller): Extension<Caller>) -> Response {
    if let Err(e) = caller.must_manage("power off the device") {
        return e.into_response();
    }
    ask_init(nix::sys::signal::Signal::SIGUSR2, "power off")
}

async fn available_port() -> Response {
    match std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()) {
        Ok(addr) => axum::Json(json!({"port": addr.port().to_string()})).into_response(),
        Err(e) => MasterError::NoFreePort(e).into_response(),
    }
}

async fn start_instance(
    State(st): State<Arc<ApiState>>,
    Extension(caller): Extension<Caller>,
    Path((svc, inst)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let extra: BTreeMap<String, String> = if body.iter().all(u8::is_ascii_whitespace) {
        BTreeMap::new()
    } else {
        match json_body(
            &body,
            "start body must be a JSON object of environment variables (strings)",
        ) {
            Ok(m) => m,
            Err(e) => return e.into_response(),
        }
    };
    answer(st.sup.start_dynamic(&svc, &inst, extra, &caller).await)
}

async fn stop_instance(
    State(st): State<Arc<ApiState>>,
    Extension(caller): Extension<Caller>,
    Path((svc, inst)): Path<(String, String)>,
) -> Response {
    answer(st.sup.stop_dynamic(&svc, &inst, &caller).await)
}

async fn report(
    State(st): State<Arc<ApiState>>,
    Extension(caller): Extension<Caller>,
    Path((svc, inst)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    answer(report_stats(&st, &caller, &svc, &inst, &body))
}

fn report_stats(
    st: &ApiState,
    caller: &Caller,
    svc: &str,
    inst: &str,
    body: &[u8],
) -> Result<(), MasterError> {
    if !caller.manages() && caller.name() != svc {
        return Err(MasterError::NotPermitted {
            caller: caller.name().to_string(),
        });
    }
    let stats: Map<String, Value> = json_body(body, "report body must be a JSON object")?;
    st.sup.report(svc, inst, stats)
}
