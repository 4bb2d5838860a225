//! A fake engine for tests (this crate's, and other crates' through the `testing` feature): its instances
//! run nothing, they do what the test says. How an instance behaves is chosen per image before it starts
//! ([`Behaviour`]: run until stopped, ignore SIGTERM so that only the grace kill ends it, exit with a code
//! or die by a signal after a while, fail to start), and a running one can be told to exit or crash
//! ([`FakeEngine::exit`], [`FakeEngine::crash`]). Everything is recorded in order as [`Event`]s stamped with
//! tokio's clock, so a test under paused time sees exactly when the supervisor did what.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;
use tokio::time::Instant;

use super::{Engine, Exit, InstanceSpec, InstanceStats, Running, RunningInfo};
use crate::config::ServiceSpec;
use crate::error::{MasterError, Result};

const SIGKILL: i32 = 9;
const SIGTERM: i32 = 15;

/// How instances of an image behave once started.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Behaviour {
    /// Run until stopped; SIGTERM ends them.
    #[default]
    Run,
    /// Run until stopped, but ignore SIGTERM: only the kill after `grace` ends them.
    IgnoreTerm,
    /// End by themselves with `code`, `after` their start.
    Exit { code: i32, after: Duration },
    /// Die by `signal`, `after` their start.
    Crash { signal: i32, after: Duration },
    /// Fail to start (the engine's `start` answers an error).
    FailStart,
    /// Take `0` to start (as a container's start waits on containerd), then run until stopped.
    SlowStart(Duration),
}

/// What happened, to which instance (`service/instance`), and when (tokio's clock).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub what: What,
    pub key: String,
    /// The instance object's id (0 for a failed start); a restart makes a new one.
    pub id: u64,
    pub at: Instant,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum What {
    Started,
    StartFailed,
    /// Asked to stop (SIGTERM).
    Terminated,
    /// Killed after the grace period.
    Killed,
    /// Ended, however it ended.
    Ended(Exit),
    /// The master asked for leftovers of a previous master.
    Recovered,
}

#[derive(Default)]
struct State {
    behaviours: BTreeMap<String, Behaviour>,
    unresolvable: BTreeSet<String>,
    /// How long `prepare` takes for an image (an engine pulling or unpacking it).
    prepare_time: BTreeMap<String, Duration>,
    /// The images `prepare` was called for, in order.
    prepared: Vec<String>,
    leftovers: Vec<String>,
    events: Vec<Event>,
    live: BTreeMap<String, Arc<Control>>,
    specs: BTreeMap<String, InstanceSpec>,
    next_id: u64,
}

struct Shared {
    state: Mutex<State>,
    /// Bumped at every event, so tests wait for what they expect instead of sleeping.
    changed: watch::Sender<u64>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn record(&self, what: What, key: &str, id: u64) {
        self.lock().events.push(Event {
            what,
            key: key.to_string(),
            id,
            at: Instant::now(),
        });
        self.changed.send_modify(|n| *n += 1);
    }
}

/// The engine. Clones share their state: keep one in the test, give one to the master.
#[derive(Clone)]
pub struct FakeEngine {
    shared: Arc<Shared>,
}

impl Default for FakeEngine {
    fn default() -> Self {
        FakeEngine {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                changed: watch::channel(0).0,
            }),
        }
    }
}

fn key(service: &str, instance: &str) -> String {
    format!("{service}/{instance}")
}

impl FakeEngine {
    pub fn new() -> Self {
        Self::default()
    }

    /// Instances of `image` started from now on behave as `behaviour`.
    pub fn behave(&self, image: &str, behaviour: Behaviour) -> &Self {
        self.shared
            .lock()
            .behaviours
            .insert(image.to_string(), behaviour);
        self
    }

    /// `prepare` refuses services of `image`, as an engine refuses an image it cannot find.
    pub fn unresolvable(&self, image: &str) -> &Self {
        self.shared.lock().unresolvable.insert(image.to_string());
        self
    }

    /// `prepare` of services of `image` takes `time` (tokio's clock), as pulling an image does.
    pub fn slow_prepare(&self, image: &str, time: Duration) -> &Self {
        self.shared
            .lock()
            .prepare_time
            .insert(image.to_string(), time);
        self
    }

    /// The images `prepare` was called for so far, in order.
    pub fn prepared(&self) -> Vec<String> {
        self.shared.lock().prepared.clone()
    }

    /// What `recover` answers: `service/instance` names a previous master left running.
    pub fn leave_over(&self, leftovers: &[&str]) -> &Self {
        self.shared.lock().leftovers = leftovers.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Makes the running instance `service/instance` exit with `code`. False when none runs.
    pub fn exit(&self, service: &str, instance: &str, code: i32) -> bool {
        self.end(service, instance, Exit::Code(code))
    }

    /// Makes the running instance `service/instance` die by `signal`. False when none runs.
    pub fn crash(&self, service: &str, instance: &str, signal: i32) -> bool {
        self.end(service, instance, Exit::Signal(signal))
    }

    fn end(&self, service: &str, instance: &str, exit: Exit) -> bool {
        let control = self
            .shared
            .lock()
            .live
            .get(&key(service, instance))
            .cloned();
        control.is_some_and(|c| c.end(exit))
    }

    /// Everything that happened so far, in order.
    pub fn events(&self) -> Vec<Event> {
        self.shared.lock().events.clone()
    }

    /// The events of one instance (`service/instance`), in order.
    pub fn events_of(&self, service: &str, instance: &str) -> Vec<Event> {
        let k = key(service, instance);
        self.events().into_iter().filter(|e| e.key == k).collect()
    }

    /// How many times `service/instance` was started (successfully).
    pub fn starts(&self, service: &str, instance: &str) -> usize {
        self.events_of(service, instance)
            .iter()
            .filter(|e| e.what == What::Started)
            .count()
    }

    /// The instances (`service/instance`) whose events are `what`, in the order they happened.
    pub fn keys_of(&self, what: &What) -> Vec<String> {
        self.events()
            .into_iter()
            .filter(|e| &e.what == what)
            .map(|e| e.key)
            .collect()
    }

    /// The id of the instance object running as `service/instance`, if one runs.
    pub fn live_id(&self, service: &str, instance: &str) -> Option<u64> {
        self.shared
            .lock()
            .live
            .get(&key(service, instance))
            .map(|c| c.id)
    }

    /// The keys of every running instance.
    pub fn live(&self) -> Vec<String> {
        self.shared.lock().live.keys().cloned().collect()
    }

    /// The spec `service/instance` was last started with (its environment, mounts, service spec).
    pub fn spec_of(&self, service: &str, instance: &str) -> Option<InstanceSpec> {
        self.shared
            .lock()
            .specs
            .get(&key(service, instance))
            .cloned()
    }

    /// Waits until `cond` holds, re-checking at every event. Panics, naming `what`, when it still does not
    /// hold after an hour of tokio time (under paused time that takes no real time at all).
    pub async fn until(&self, what: &str, cond: impl Fn(&FakeEngine) -> bool) {
        let mut changed = self.shared.changed.subscribe();
        let wait = async {
            while !cond(self) {
                if changed.changed().await.is_err() {
                    return;
                }
            }
        };
        if tokio::time::timeout(Duration::from_secs(3600), wait)
            .await
            .is_err()
        {
            panic!(
                "fake engine: still waiting for {what} after an hour; events: {:#?}",
                self.events()
            );
        }
    }
}

/// One started instance's switch: it ends once, with the first exit it is given.
struct Control {
    id: u64,
    key: String,
    exit: watch::Sender<Option<Exit>>,
    shared: Arc<Shared>,
}

impl Control {
    fn end(&self, exit: Exit) -> bool {
        let first = self.exit.send_if_modified(|e| {
            if e.is_some() {
                return false;
            }
            *e = Some(exit.clone());
            true
        });
        if first {
            {
                let mut st = self.shared.lock();
                if st.live.get(&self.key).is_some_and(|c| c.id == self.id) {
                    st.live.remove(&self.key);
                }
            }
            self.shared.record(What::Ended(exit), &self.key, self.id);
        }
        first
    }

    async fn wait(&self) -> Exit {
        let mut rx = self.exit.subscribe();
        match rx.wait_for(Option::is_some).await {
            Ok(e) => e.clone().unwrap_or(Exit::Error("no exit".into())),
            Err(_) => Exit::Error("the fake engine lost the instance".into()),
        }
    }
}

struct FakeInstance {
    control: Arc<Control>,
    name: String,
    ignore_term: bool,
}

#[async_trait]
impl Running for FakeInstance {
    fn info(&self) -> RunningInfo {
        // Ids stand in for pids, so the inspect entry has the native engine's shape.
        RunningInfo {
            kind: "process",
            id: self.control.id.to_string(),
            name: self.name.clone(),
            pid: u32::try_from(self.control.id).ok(),
        }
    }

    async fn wait(&self) -> Exit {
        self.control.wait().await
    }

    async fn stop(&self, grace: Duration) -> Exit {
        if let Some(exit) = self.control.exit.borrow().clone() {
            return exit;
        }
        let c = &self.control;
        c.shared.record(What::Terminated, &c.key, c.id);
        if !self.ignore_term {
            c.end(Exit::Signal(SIGTERM));
        } else if tokio::time::timeout(grace, c.wait()).await.is_err() {
            c.shared.record(What::Killed, &c.key, c.id);
            c.end(Exit::Signal(SIGKILL));
        }
        c.wait().await
    }

    fn stats(&self) -> InstanceStats {
        InstanceStats::default()
    }
}

#[async_trait]
impl Engine for FakeEngine {
    fn mode(&self) -> &'static str {
        "fake"
    }

    async fn prepare(&self, service: &str, spec: &ServiceSpec) -> Result<()> {
        let time = {
            let mut st = self.shared.lock();
            st.prepared.push(spec.image.clone());
            st.prepare_time.get(&spec.image).copied()
        };
        self.shared.changed.send_modify(|n| *n += 1);
        if let Some(time) = time {
            tokio::time::sleep(time).await;
        }
        if self.shared.lock().unresolvable.contains(&spec.image) {
            return Err(MasterError::UnknownImage {
                service: service.to_string(),
                image: spec.image.clone(),
                searched: "the fake engine".into(),
                roles: "none".into(),
            });
        }
        Ok(())
    }

    async fn start(&self, spec: InstanceSpec) -> Result<Box<dyn Running>> {
        let k = key(&spec.service, &spec.instance);
        let (behaviour, id) = {
            let mut st = self.shared.lock();
            st.specs.insert(k.clone(), spec.clone());
            let b = st
                .behaviours
                .get(&spec.spec.image)
                .cloned()
                .unwrap_or_default();
            st.next_id += 1;
            (b, st.next_id)
        };
        if let Behaviour::SlowStart(d) = behaviour {
            tokio::time::sleep(d).await;
        }
        if behaviour == Behaviour::FailStart {
            self.shared.record(What::StartFailed, &k, 0);
            return Err(MasterError::Spawn {
                service: spec.service,
                instance: spec.instance,
                command: spec.spec.image,
                source: std::io::Error::other("the fake engine was told to fail this start"),
            });
        }
        let control = Arc::new(Control {
            id,
            key: k.clone(),
            exit: watch::channel(None).0,
            shared: self.shared.clone(),
        });
        self.shared.lock().live.insert(k.clone(), control.clone());
        self.shared.record(What::Started, &k, id);
        let ends = match behaviour {
            Behaviour::Exit { code, after } => Some((Exit::Code(code), after)),
            Behaviour::Crash { signal, after } => Some((Exit::Signal(signal), after)),
            _ => None,
        };
        if let Some((exit, after)) = ends {
            let c = control.clone();
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                c.end(exit);
            });
        }
        Ok(Box::new(FakeInstance {
            control,
            name: format!("{}.{}", spec.service, spec.instance),
            ignore_term: behaviour == Behaviour::IgnoreTerm,
        }))
    }

    async fn recover(&self, _grace: Duration) -> Result<Vec<String>> {
        self.shared.record(What::Recovered, "", 0);
        Ok(self.shared.lock().leftovers.clone())
    }
}
