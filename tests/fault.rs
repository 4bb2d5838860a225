//! The bounded fault-injection run of issue 10 (a program, not a timed test). Run:
//! `cargo run -p baetyl-e2e --example fault -- [COUNT] [SEED] [--strict] [--only CLASS,...]`
//! (scripts/test.sh runs the built example with COUNT 3).
//!
//! Every class runs against real processes (a native `baetyl master` with our hub, the function manager and the
//! SQL runtime, or test services), COUNT attempts each, with faults placed by a generator seeded with SEED. It
//! prints one line per class: attempts, held (attempts after which nothing was lost and the system was whole
//! again), lost (messages, or for the master services, that the class must not lose), and a note.
//!
//! - `hub-kill9`: the hub is killed -9 while a publisher sends numbered QoS 1 messages (each waits for its
//!   PUBACK; after the kill it reconnects and resends); a persistent subscriber (clean session off) reconnects
//!   too. Lost: acknowledged numbers the subscriber never received.
//! - `bridge-store`: the bridge buffer's own program (`baetyl-remote`'s `fault_injection` example: 9 kinds of
//!   damage at random offsets, COUNT rounds each). Lost: records lost that the damage did not touch.
//! - `function-poison`: a non-JSON input (random size) or an input whose output exceeds the hub's limit, then a
//!   good input. Held: each answered once (the poison with a bounded error), nothing redelivered, the manager
//!   never restarted. Lost: good inputs never answered.
//! - `master-kill9-update`: the master is killed -9 at a random moment of an app update that changes every
//!   service; a new master starts on the same work dir. Held: application.yml is the old or the new app,
//!   inspect reports that version and every service of it runs with that version's environment. Lost: services
//!   that did not come back, or came back with the other version.
//! - `manager-kill9`: the function manager is killed -9 with numbered QoS 1 inputs in flight (the master
//!   restarts it, the hub redelivers). Lost: inputs never answered.
//! - `update-source`: app updates whose source is a FIFO, a character device (`/dev/zero`'s numbers), a symlink
//!   to a file outside the work dir, or a `../` path out of it. Held: refused with a 4xx within 5 s, the error
//!   quotes nothing of the file, the running app is unchanged, and a valid update afterwards still applies.
//!
//! `hub-kill9` and `manager-kill9` have known losses (README, "Fault injection") that the hub's owners are
//! working on: they are measured and printed as `known`, and fail the run only with `--strict`. Every other
//! class fails the run (exit status 1) if it loses anything.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baetyl_e2e::*;
use baetyl_testkit::mqtt::{Client, MessageExt, options};
use baetyl_testkit::net::{localhost, wait_accepting_async};
use baetyl_testkit::wait::poll_async;
use baetyl_testkit::{free_port, test_dir};
use rumqttc::QoS;
use serde_json::{Value, json};

const LONG: Duration = Duration::from_secs(60);
/// The hub's default payload limit, which the function manager's error answers stay under.
const HUB_LIMIT: usize = 32 * 1024;

/// splitmix64: a small seeded generator (the run must be repeatable from its seed, not cryptographic).
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `lo..hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo).max(1)
    }
}

/// One class's line.
struct Tally {
    class: &'static str,
    /// Known to lose today (README): reported, fails the run only with `--strict`.
    known: bool,
    attempts: u64,
    held: u64,
    lost: u64,
    notes: Vec<String>,
}

impl Tally {
    fn new(class: &'static str, known: bool) -> Self {
        Tally {
            class,
            known,
            attempts: 0,
            held: 0,
            lost: 0,
            notes: Vec::new(),
        }
    }

    /// Counts one attempt that lost `lost`; `why` says what went wrong when it did not hold.
    fn attempt(&mut self, lost: u64, why: Option<String>) {
        self.attempts += 1;
        self.lost += lost;
        match why {
            None if lost == 0 => self.held += 1,
            // The class noted what was lost.
            None => {}
            Some(w) => self.notes.push(format!("attempt {}: {w}", self.attempts)),
        }
    }

    fn failed(&self) -> bool {
        self.held < self.attempts || self.lost > 0
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The functions application (`write_sql_rules`): hub (persistent storage, restarted), function manager, SQL runtime.

fn setup_functions(w: &Work, port: u16) {
    write_sql_rules(w, port);
}

async fn manager(m: &Master) -> Value {
    m.instance("function-manager", "function-manager")
        .await
        .unwrap_or(Value::Null)
}

async fn rules_subscribed(m: &Master) -> bool {
    let v = manager(m).await;
    v["rules"]["rule-sql"]["subscribed"] == true && v["rules"]["rule-big"]["subscribed"] == true
}

async fn wait_rules(m: &Master) -> Result<(), String> {
    poll_async(LONG, || rules_subscribed(m))
        .await
        .map_err(|_| "the manager's rules did not subscribe again within 60 s".to_string())
}

fn sigkill(pid: u32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
}

/// Connects as the `tester` principal, retrying while the hub is down (up to 60 s).
async fn connect(port: u16, id: &str, clean: bool) -> Result<Client, String> {
    let deadline = tokio::time::Instant::now() + LONG;
    loop {
        let mut o = options(id, port);
        o.set_credentials("tester", "tester-password")
            .set_clean_session(clean);
        match Client::connect(o).await {
            Ok(c) => return Ok(c),
            Err(e) if tokio::time::Instant::now() > deadline => {
                return Err(format!("{id} could not reconnect: {e}"));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// A persistent subscriber to `topic` that reconnects whenever the connection ends and records the numbers
/// (`n`) of the messages tagged `tag` that it receives.
struct Collector {
    got: Arc<Mutex<BTreeSet<u64>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Collector {
    async fn start(port: u16, id: &'static str, topic: &'static str, tag: String) -> Collector {
        let got = Arc::new(Mutex::new(BTreeSet::new()));
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let seen = got.clone();
        let task = tokio::spawn(async move {
            let mut ready_tx = Some(ready_tx);
            loop {
                let Ok(mut c) = connect(port, id, false).await else {
                    return;
                };
                if c.subscribe(topic, QoS::AtLeastOnce).await.is_err() {
                    continue;
                }
                if let Some(tx) = ready_tx.take() {
                    let _ = tx.send(());
                }
                while let Ok(m) = c.recv(Duration::from_secs(1)).await {
                    let Some(v) = m.and_then(|p| p.json()) else {
                        continue;
                    };
                    if v["tag"] == tag.as_str()
                        && let Some(n) = v["n"].as_u64()
                    {
                        seen.lock().expect("collector").insert(n);
                    }
                }
            }
        });
        let _ = tokio::time::timeout(LONG, ready_rx).await;
        Collector { got, task }
    }

    fn count_of(&self, want: &BTreeSet<u64>) -> usize {
        self.got
            .lock()
            .expect("collector")
            .intersection(want)
            .count()
    }

    /// Waits until every number in `want` arrived, or nothing new came for `quiet`; answers the missing ones.
    async fn missing(&self, want: &BTreeSet<u64>, quiet: Duration) -> Vec<u64> {
        let mut last = usize::MAX;
        let mut since = tokio::time::Instant::now();
        loop {
            let n = self.count_of(want);
            if n == want.len() {
                return Vec::new();
            }
            if n != last {
                last = n;
                since = tokio::time::Instant::now();
            } else if since.elapsed() > quiet {
                let got = self.got.lock().expect("collector");
                return want.difference(&got).copied().collect();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Publishes `payload` at QoS 1 until the hub acknowledges it, reconnecting `c` when the hub went away.
async fn publish_acked(
    c: &mut Client,
    port: u16,
    id: &str,
    topic: &str,
    payload: &[u8],
) -> Result<(), String> {
    for _ in 0..20 {
        if c.publish(topic, QoS::AtLeastOnce, false, payload.to_vec())
            .await
            .is_ok()
        {
            return Ok(());
        }
        *c = connect(port, id, true).await?;
    }
    Err(format!("{id}: no PUBACK after 20 reconnections"))
}

async fn hub_kill9(m: &Master, port: u16, count: u64, rng: &mut Rng) -> Tally {
    let mut t = Tally::new("hub-kill9", true);
    const MESSAGES: u64 = 40;
    for attempt in 0..count {
        let tag = format!("hub-{attempt}");
        let sub = Collector::start(port, "fault-sub", "fault/hub", tag.clone()).await;
        let mut publisher = match connect(port, "fault-pub", true).await {
            Ok(c) => c,
            Err(e) => {
                t.attempt(0, Some(e));
                continue;
            }
        };
        let kill_at = rng.range(5, MESSAGES - 5);
        let mut acked = BTreeSet::new();
        let mut why = None;
        for n in 0..MESSAGES {
            if n == kill_at {
                match m.pid_of("hub", "hub").await {
                    Some(pid) => sigkill(pid),
                    None => why = Some("no hub pid in inspect".to_string()),
                }
            }
            let p = json!({"tag": tag, "n": n}).to_string();
            match publish_acked(&mut publisher, port, "fault-pub", "fault/hub", p.as_bytes()).await
            {
                Ok(()) => {
                    acked.insert(n);
                }
                Err(e) => {
                    why = Some(e);
                    break;
                }
            }
        }
        let missing = sub.missing(&acked, Duration::from_secs(10)).await;
        if !missing.is_empty() {
            t.notes.push(format!(
                "attempt {attempt}: kill -9 before message {kill_at}; acknowledged but never delivered: {missing:?}"
            ));
        }
        t.attempt(missing.len() as u64, why);
    }
    t
}

async fn manager_kill9(m: &Master, port: u16, count: u64, rng: &mut Rng) -> Tally {
    let mut t = Tally::new("manager-kill9", true);
    const INPUTS: u64 = 60;
    for attempt in 0..count {
        if let Err(e) = wait_rules(m).await {
            t.attempt(0, Some(e));
            continue;
        }
        let tag = format!("mgr-{attempt}");
        let out = Collector::start(port, "fault-out", "sql/out", tag.clone()).await;
        let mut peer = match connect(port, "fault-in", true).await {
            Ok(c) => c,
            Err(e) => {
                t.attempt(0, Some(e));
                continue;
            }
        };
        let kill_at = rng.range(5, INPUTS - 5);
        let mut why = None;
        for n in 0..INPUTS {
            if n == kill_at {
                match m.pid_of("function-manager", "function-manager").await {
                    Some(pid) => sigkill(pid),
                    None => why = Some("no manager pid in inspect".to_string()),
                }
            }
            // Queued without waiting for each PUBACK, as a busy sensor does; the hub acknowledges them below.
            let p = json!({"id": 1, "tag": tag, "n": n}).to_string();
            if let Err(e) = peer.send("sql/in", QoS::AtLeastOnce, false, p).await {
                why = Some(format!("publishing input {n}: {e}"));
                break;
            }
            if n % 10 == 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        if let Err(e) = peer.wait_acks().await {
            why = Some(format!("the hub did not acknowledge every input: {e}"));
        }
        let want: BTreeSet<u64> = (0..INPUTS).collect();
        let missing = out.missing(&want, Duration::from_secs(15)).await;
        if !missing.is_empty() {
            t.notes.push(format!(
                "attempt {attempt}: kill -9 after input {kill_at}; never answered: {missing:?}"
            ));
        }
        t.attempt(missing.len() as u64, why);
    }
    t
}

async fn function_poison(m: &Master, port: u16, count: u64, rng: &mut Rng) -> Tally {
    let mut t = Tally::new("function-poison", false);
    if let Err(e) = wait_rules(m).await {
        t.attempt(0, Some(e));
        return t;
    }
    let before = manager(m).await;
    let restarts = before["restarts"].as_u64().unwrap_or(0);
    let received: u64 = ["rule-sql", "rule-big"]
        .iter()
        .map(|r| before["rules"][r]["received"].as_u64().unwrap_or(0))
        .sum();
    let mut peer = match connect(port, "fault-poison", true).await {
        Ok(c) => c,
        Err(e) => {
            t.attempt(0, Some(e));
            return t;
        }
    };
    if let Err(e) = peer
        .subscribe_many(&[("sql/out", QoS::AtLeastOnce), ("big/out", QoS::AtLeastOnce)])
        .await
    {
        t.attempt(0, Some(format!("subscribe: {e}")));
        return t;
    }
    for attempt in 0..count {
        let tag = format!("poison-{attempt}");
        let (topic, out, poison, kind) = if rng.next_u64().is_multiple_of(2) {
            let size = rng.range(1024, 30 * 1024) as usize;
            (
                "sql/in",
                "sql/out",
                vec![1u8; size],
                format!("{size} non-JSON bytes"),
            )
        } else {
            // Tripled by the function: more than the hub's limit.
            let size = rng.range(11 * 1024, 15 * 1024) as usize;
            let s = "x".repeat(size);
            (
                "big/in",
                "big/out",
                json!({"s": s}).to_string().into_bytes(),
                format!("an output of {} bytes", 3 * size),
            )
        };
        let good = match topic {
            "sql/in" => json!({"id": 1, "tag": tag}),
            _ => json!({"s": tag}),
        };
        let sent = match peer.publish(topic, QoS::AtLeastOnce, false, poison).await {
            Ok(()) => {
                peer.publish(topic, QoS::AtLeastOnce, false, good.to_string())
                    .await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = sent {
            t.attempt(1, Some(format!("{kind}: publishing: {e}")));
            continue;
        }
        let got = peer.recv_n(2, LONG).await;
        let why = match &got {
            Err(e) => Some(format!("{kind}: {e}")),
            Ok(got) => {
                let err = got[0].json().unwrap_or(Value::Null);
                let answered = got[1].json().is_some_and(|v| match topic {
                    "sql/in" => v["tag"] == tag.as_str(),
                    _ => v["s"] == tag.repeat(3),
                });
                if got.iter().any(|p| p.topic != out) {
                    Some(format!("{kind}: answers on the wrong topic"))
                } else if got.iter().any(|p| p.payload.len() > HUB_LIMIT) {
                    Some(format!("{kind}: an answer over the hub's limit"))
                } else if err["errorType"].as_str().is_none() {
                    Some(format!(
                        "{kind}: the poison got no error answer: {}",
                        got[0].text()
                    ))
                } else if !answered {
                    Some(format!(
                        "{kind}: the good input after it was not answered: {}",
                        got[1].text()
                    ))
                } else {
                    None
                }
            }
        };
        let lost = u64::from(why.is_some());
        t.attempt(lost, why);
    }
    // Nothing redelivered, the manager saw each input once and never restarted.
    let extra = peer.drain(Duration::from_secs(3)).await;
    let after = manager(m).await;
    let now: u64 = ["rule-sql", "rule-big"]
        .iter()
        .map(|r| after["rules"][r]["received"].as_u64().unwrap_or(0))
        .sum();
    if !extra.is_empty() {
        t.notes.push(format!("{} answers redelivered", extra.len()));
        t.held = 0;
    }
    if now.saturating_sub(received) != 2 * count {
        t.notes.push(format!(
            "the manager received {} inputs for {}",
            now.saturating_sub(received),
            2 * count
        ));
        t.held = 0;
    }
    if after["restarts"].as_u64().unwrap_or(0) != restarts {
        t.notes.push("the function manager restarted".to_string());
        t.held = 0;
    }
    t
}

// ---------------------------------------------------------------------------------------------------------------
// Master classes: test services that record the version in their environment.

/// A service that writes $VERSION into `version` in its work dir and runs until stopped.
const VERSIONED: &str = "#!/bin/sh\necho \"$VERSION\" > version\nsleep 1000 &\nwait\n";

fn versioned_app(v: u64) -> String {
    format!(
        "app_version: v{v}\nservices:\n  a: {{image: ver, environment: {{VERSION: \"{v}\"}}}}\n  b: {{image: ver, environment: {{VERSION: \"{v}\"}}}}\n  c: {{image: ver, depends_on: [a], environment: {{VERSION: \"{v}\"}}}}\n"
    )
}

fn installed_version(w: &Work) -> Option<u64> {
    let text = std::fs::read_to_string(w.path().join("var/db/baetyl/application.yml")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("app_version: v"))?
        .trim()
        .parse()
        .ok()
}

/// Services of the installed app that do not run with its version (polled up to 30 s); None: whole.
async fn half_applied(w: &Work, m: &Master) -> Option<(u64, String)> {
    let ok = poll_async(Duration::from_secs(30), || async {
        let Some(v) = installed_version(w) else {
            return Err("application.yml is unreadable".to_string());
        };
        let conf = m.inspect().await["software"]["conf_version"].clone();
        if conf != format!("v{v}").as_str() {
            return Err(format!("application.yml is v{v}, inspect says {conf}"));
        }
        let mut bad = Vec::new();
        for s in ["a", "b", "c"] {
            let running = m.pid_of(s, s).await.is_some_and(alive);
            let version =
                std::fs::read_to_string(w.instance_dir(s, s).join("version")).unwrap_or_default();
            if !running || version.trim() != v.to_string() {
                bad.push(format!(
                    "{s} (running {running}, version {:?})",
                    version.trim()
                ));
            }
        }
        if bad.is_empty() {
            Ok(())
        } else {
            Err(format!("v{v} installed, not whole: {}", bad.join(", ")))
        }
    })
    .await;
    match ok {
        Ok(()) => None,
        Err(last) => {
            let last = last.unwrap_or_default();
            let lost = last.matches("(running").count().max(1) as u64;
            Some((lost, last))
        }
    }
}

fn versioned_work() -> Work {
    let w = Work::new();
    w.package("ver", VERSIONED);
    w.app(&versioned_app(1));
    w
}

async fn master_kill9_update(count: u64, rng: &mut Rng) -> (Tally, Work, Master) {
    let mut t = Tally::new("master-kill9-update", false);
    let w = versioned_work();
    let mut m = w.start_master();
    let mut version = 1;
    if let Some((_, why)) = half_applied(&w, &m).await {
        t.notes.push(format!("the first start: {why}"));
    }
    for attempt in 0..count {
        let next = version + 1;
        let source = format!("upd/{attempt}/application.yml");
        w.write(&source, &versioned_app(next));
        let delay = rng.range(0, 400);
        if let Err(e) = m
            .client()
            .update_app(&source, &format!("fault-{attempt}"))
            .await
        {
            t.attempt(0, Some(format!("the update was refused: {e}")));
            continue;
        }
        tokio::time::sleep(Duration::from_millis(delay)).await;
        m.kill9();
        drop(m);
        m = Master::start(w.path(), &[]);
        match half_applied(&w, &m).await {
            None => t.attempt(0, None),
            Some((lost, why)) => t.attempt(
                lost,
                Some(format!("kill -9 {delay} ms into v{next}: {why}")),
            ),
        }
        version = installed_version(&w).unwrap_or(version).max(version);
    }
    (t, w, m)
}

async fn update_source(w: &Work, m: &Master, count: u64) -> Tally {
    let mut t = Tally::new("update-source", false);
    let outside = test_dir("baetyl-fault-outside-");
    let marker = "SECRET-FAULT-MARKER";
    let secret = outside.path().join("application.yml");
    let _ = std::fs::write(
        &secret,
        format!("app_version: v99\n# {marker}\nservices: {{}}\n"),
    );
    let fifo = w.path().join("src-fifo");
    let _ = nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600));
    let _ = std::os::unix::fs::symlink(&secret, w.path().join("src-link"));
    // /dev/zero's device numbers under another name (mknod needs root; without it the case is skipped).
    let zero = nix::sys::stat::mknod(
        &w.path().join("src-zero"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o600),
        nix::sys::stat::makedev(1, 5),
    )
    .is_ok();
    if !zero {
        t.notes
            .push("not root: the character-device case was skipped".to_string());
    }
    // `../` up to the root, then down to the outside file.
    let up = format!(
        "{}{}",
        "../".repeat(w.path().components().count()),
        secret.display().to_string().trim_start_matches('/')
    );
    let mut cases = vec!["src-fifo".to_string(), "src-link".to_string(), up];
    if zero {
        cases.push("src-zero".to_string());
    }
    let before = installed_version(w);
    for attempt in 0..count {
        for path in &cases {
            let trace = format!("attack-{attempt}");
            let answer =
                tokio::time::timeout(Duration::from_secs(5), m.client().update_app(path, &trace))
                    .await;
            let why = match answer {
                Err(_) => Some(format!("{path}: no answer within 5 s")),
                Ok(Ok(())) => Some(format!("{path}: accepted")),
                Ok(Err(e)) if e.to_string().contains(marker) => {
                    Some(format!("{path}: the error quotes the file: {e}"))
                }
                Ok(Err(e)) if !e.to_string().contains("400") => Some(format!("{path}: {e}")),
                Ok(Err(_)) => None,
            };
            let lost = u64::from(why.is_some());
            t.attempt(lost, why);
        }
    }
    // The running app is unchanged, and a valid update still applies (a FIFO once blocked every later one).
    let ota = std::fs::read_to_string(w.path().join("var/db/baetyl/ota.log")).unwrap_or_default();
    if ota.contains(marker) || m.inspect().await["error"].to_string().contains(marker) {
        t.notes
            .push("ota.log or inspect quotes the file".to_string());
        t.held = 0;
    }
    if installed_version(w) != before {
        t.notes.push("the installed app changed".to_string());
        t.held = 0;
    }
    let next = before.unwrap_or(1) + 1;
    w.write("upd/valid/application.yml", &versioned_app(next));
    let applied = match m
        .client()
        .update_app("upd/valid/application.yml", "valid")
        .await
    {
        Err(e) => Err(e.to_string()),
        Ok(()) => match poll_async(LONG, || async { installed_version(w) == Some(next) }).await {
            Err(_) => Err("not installed within 60 s".to_string()),
            Ok(()) => half_applied(w, m).await.map_or(Ok(()), |(_, why)| Err(why)),
        },
    };
    if let Err(e) = applied {
        t.notes
            .push(format!("a valid update after the attacks: {e}"));
        t.held = 0;
    }
    t
}

// ---------------------------------------------------------------------------------------------------------------

/// The bridge buffer's program, built beside this one (`cargo build --all-targets`), or built now.
fn bridge_store(count: u64, seed: u64) -> Tally {
    let mut t = Tally::new("bridge-store", false);
    let beside = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("fault_injection")))
        .filter(|p| p.exists());
    let mut cmd = match beside {
        Some(p) => std::process::Command::new(p),
        None => {
            let mut c =
                std::process::Command::new(std::env::var("CARGO").unwrap_or("cargo".into()));
            c.current_dir(baetyl_testkit::workspace_dir()).args([
                "run",
                "-q",
                "-p",
                "baetyl-remote",
                "--example",
                "fault_injection",
                "--",
            ]);
            c
        }
    };
    let out = match cmd.args([count.to_string(), seed.to_string()]).output() {
        Ok(o) => o,
        Err(e) => {
            t.attempt(
                0,
                Some(format!("running the bridge store's fault_injection: {e}")),
            );
            return t;
        }
    };
    let text = String::from_utf8_lossy(&out.stdout);
    // Rows: class attempts messages held lost damaged violations.
    let (mut damaged, mut dropped) = (0, 0);
    for row in text.lines() {
        let f: Vec<&str> = row.split_whitespace().collect();
        let nums: Vec<u64> = f.iter().skip(1).filter_map(|x| x.parse().ok()).collect();
        if f.len() == 7 && nums.len() == 6 {
            let violations = nums[5];
            t.attempts += nums[0];
            t.held += nums[0].saturating_sub(violations);
            t.lost += violations;
            dropped += nums[3];
            damaged += nums[4];
        } else if row.starts_with("    ") {
            t.notes.push(row.trim().to_string());
        }
    }
    if t.attempts == 0 || (!out.status.success() && t.lost == 0) {
        t.notes.push(format!(
            "fault_injection failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
        ));
        t.held = 0;
    }
    t.notes.insert(
        0,
        format!("{dropped} damaged records dropped of {damaged} touched; lost counts only undamaged ones"),
    );
    t
}

fn print(t: &Tally, strict: bool) {
    let verdict = match (t.failed(), t.known && !strict) {
        (false, _) => "ok",
        (true, true) => "KNOWN LOSS",
        (true, false) => "FAILED",
    };
    println!(
        "{:<20} {:>8} {:>6} {:>6}  {verdict}",
        t.class, t.attempts, t.held, t.lost
    );
    for n in t.notes.iter().take(6) {
        println!("    {n}");
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut positional = Vec::new();
    let mut strict = false;
    let mut only: Option<Vec<String>> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--strict" => strict = true,
            "--only" => {
                only = args
                    .next()
                    .map(|s| s.split(',').map(String::from).collect())
            }
            _ => positional.push(a),
        }
    }
    let count: u64 = positional
        .first()
        .and_then(|a| a.parse().ok())
        .unwrap_or(3)
        .max(1);
    let seed: u64 = positional.get(1).and_then(|a| a.parse().ok()).unwrap_or(1);
    let wanted = |c: &str| only.as_ref().is_none_or(|o| o.iter().any(|x| x == c));
    let mut rng = Rng(seed);
    let began = std::time::Instant::now();
    println!(
        "fault injection: {count} attempts per class, seed {seed}{}",
        if strict { ", strict" } else { "" }
    );
    println!(
        "{:<20} {:>8} {:>6} {:>6}  verdict",
        "class", "attempts", "held", "lost"
    );
    let mut all = Vec::new();
    let mut report = |t: Tally| {
        print(&t, strict);
        all.push(t);
    };
    if wanted("bridge-store") {
        report(bridge_store(count, seed));
    }
    if ["hub-kill9", "function-poison", "manager-kill9"]
        .iter()
        .any(|c| wanted(c))
    {
        let w = Work::new();
        let port = free_port();
        setup_functions(&w, port);
        let m = Master::start(w.path(), &[]);
        wait_accepting_async(localhost(port), LONG).await;
        if wanted("function-poison") {
            report(function_poison(&m, port, count, &mut rng).await);
        }
        if wanted("hub-kill9") {
            report(hub_kill9(&m, port, count, &mut rng).await);
        }
        if wanted("manager-kill9") {
            report(manager_kill9(&m, port, count, &mut rng).await);
        }
    }
    if wanted("master-kill9-update") || wanted("update-source") {
        let (t, w, m) = master_kill9_update(
            if wanted("master-kill9-update") {
                count
            } else {
                0
            },
            &mut rng,
        )
        .await;
        if wanted("master-kill9-update") {
            report(t);
        }
        if wanted("update-source") {
            report(update_source(&w, &m, count).await);
        }
    }
    let failed = all.iter().any(|t| t.failed() && (strict || !t.known));
    println!(
        "fault injection: {} classes in {} s; {}",
        all.len(),
        began.elapsed().as_secs(),
        if failed {
            "a class that must hold lost"
        } else {
            "every class that must hold held"
        }
    );
    std::process::exit(i32::from(failed));
}
