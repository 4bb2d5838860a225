//! Debian's mosquitto (`/usr/sbin/mosquitto`) as a test peer: a generated config on free ports of 127.0.0.1,
//! optional TLS listener and password file, persistence and log in its own directory; [`Mosquitto::start`]
//! returns once it accepts connections; dropped = killed. The log is in every failure message.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::net::{free_port, localhost};
use crate::pki::Pki;
use crate::process::Process;
use crate::wait::{poll, poll_async};

/// How long mosquitto may take to accept connections after it was started.
const START: Duration = Duration::from_secs(15);

/// The program: Debian installs it in /usr/sbin.
pub fn mosquitto_bin() -> PathBuf {
    for p in ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!(
        "mosquitto is not installed: apt-get install mosquitto (scripts/setup.sh keeps its daemon stopped)"
    );
}

/// TLS files for a second listener.
#[derive(Clone, Debug)]
pub struct Tls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Two-way TLS: clients must present a certificate signed by `ca`.
    pub require_client_cert: bool,
}

impl Tls {
    /// The server certificate of a test PKI, trusting its CA for client certificates.
    pub fn from_pki(pki: &Pki, require_client_cert: bool) -> Tls {
        Tls {
            ca: pki.ca.clone(),
            cert: pki.server.cert.clone(),
            key: pki.server.key.clone(),
            require_client_cert,
        }
    }
}

/// What the broker is started with; [`Mosquitto::builder`] makes one with the defaults (anonymous access,
/// persistence on, full log).
#[derive(Clone, Debug)]
pub struct Builder {
    dir: PathBuf,
    tls: Option<Tls>,
    users: Vec<(String, String)>,
    persistence: bool,
    quiet: bool,
    extra: Vec<String>,
}

impl Builder {
    /// Adds a TLS listener (its port is [`Mosquitto::tls_port`]).
    pub fn tls(mut self, tls: Tls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// A password principal; with any, anonymous clients are refused.
    pub fn user(mut self, name: &str, password: &str) -> Self {
        self.users.push((name.to_string(), password.to_string()));
        self
    }

    pub fn persistence(mut self, on: bool) -> Self {
        self.persistence = on;
        self
    }

    /// Logs errors and warnings only (for benchmarks: a full log costs throughput).
    pub fn quiet(mut self) -> Self {
        self.quiet = true;
        self
    }

    /// A line of mosquitto.conf (e.g. `max_inflight_messages 16`).
    pub fn option(mut self, line: &str) -> Self {
        self.extra.push(line.to_string());
        self
    }

    /// Writes the config on free ports and starts the broker; a port taken meanwhile is retried on another.
    pub fn start(self) -> Result<Mosquitto> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        let mut last = None;
        for _ in 0..3 {
            let mut m = Mosquitto {
                port: free_port(),
                tls_port: self.tls.as_ref().map(|_| free_port()),
                dir: self.dir.clone(),
                process: None,
                started_at: 0,
            };
            self.write_config(&m)?;
            match m.spawn() {
                Ok(()) => return Ok(m),
                Err(e) if m.log().contains("Address already in use") => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("mosquitto did not start")))
    }

    fn write_config(&self, m: &Mosquitto) -> Result<()> {
        let dir = self.dir.display();
        let mut conf = format!(
            "# written by baetyl-testkit\nuser root\nlog_dest file {dir}/mosquitto.log\nlistener {} 127.0.0.1\n",
            m.port
        );
        if !self
            .extra
            .iter()
            .any(|l| l.starts_with("max_queued_messages"))
        {
            conf.push_str("max_queued_messages 100000\n");
        }
        if self.quiet {
            conf.push_str("log_type error\nlog_type warning\n");
        } else {
            conf.push_str("log_type all\n");
        }
        if self.persistence {
            conf.push_str(&format!("persistence true\npersistence_location {dir}/\n"));
        }
        if let (Some(t), Some(port)) = (&self.tls, m.tls_port) {
            conf.push_str(&format!(
                "listener {port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate {}\n",
                t.ca.display(),
                t.cert.display(),
                t.key.display(),
                t.require_client_cert
            ));
        }
        if self.users.is_empty() {
            conf.push_str("allow_anonymous true\n");
        } else {
            let file = self.dir.join("passwords");
            std::fs::write(&file, "")?;
            for (user, password) in &self.users {
                let out = Command::new("mosquitto_passwd")
                    .arg("-b")
                    .arg(&file)
                    .args([user, password])
                    .output()
                    .context("mosquitto_passwd (Debian package mosquitto)")?;
                if !out.status.success() {
                    bail!(
                        "mosquitto_passwd failed: {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
            }
            conf.push_str(&format!(
                "allow_anonymous false\npassword_file {}\n",
                file.display()
            ));
        }
        for line in &self.extra {
            conf.push_str(line);
            conf.push('\n');
        }
        std::fs::write(self.dir.join("mosquitto.conf"), conf)?;
        Ok(())
    }
}

/// A running mosquitto; the same ports across [`Mosquitto::stop`] and [`Mosquitto::restart`].
pub struct Mosquitto {
    /// The plain listener.
    pub port: u16,
    /// The TLS listener, when started with one.
    pub tls_port: Option<u16>,
    pub dir: PathBuf,
    process: Option<Process>,
    /// Lines in the log before the last start.
    started_at: usize,
}

impl Mosquitto {
    /// Options for a broker whose config, persistence and log live in `dir`.
    pub fn builder(dir: &Path) -> Builder {
        Builder {
            dir: dir.to_path_buf(),
            tls: None,
            users: Vec::new(),
            persistence: true,
            quiet: false,
            extra: Vec::new(),
        }
    }

    /// A broker with the defaults: anonymous access, persistence, full log.
    pub fn start(dir: &Path) -> Result<Mosquitto> {
        Self::builder(dir).start()
    }

    fn spawn(&mut self) -> Result<()> {
        self.started_at = self.log().lines().count();
        // Errors before mosquitto opens its log file (config, bind) go to stderr: into the same file.
        let log = self.dir.join("mosquitto.log");
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("opening {}", log.display()))?;
        let mut cmd = Command::new(mosquitto_bin());
        cmd.arg("-c")
            .arg(self.dir.join("mosquitto.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        let process = Process::spawn(&mut cmd, "mosquitto")?.with_log(&log);
        let process = self.process.insert(process);
        let addr = localhost(self.port);
        // Accepting, or exited (no point in waiting on): Some; still starting: None.
        let ready = poll(START, || match process.try_status() {
            Some(status) => Some(Err(format!("it exited with {status}"))),
            None => std::net::TcpStream::connect(addr).is_ok().then_some(Ok(())),
        })
        .unwrap_or_else(|_| Err(format!("not within {START:?}")));
        if let Err(why) = ready {
            if let Some(mut p) = self.process.take() {
                p.kill9();
            }
            bail!(
                "mosquitto did not accept connections on {addr}: {why}; its log:\n{}",
                self.log()
            );
        }
        Ok(())
    }

    /// SIGTERM and wait: mosquitto saves its persistence file and exits.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.terminate(START);
        }
    }

    /// Stops it (if running) and starts it again on the same ports with the same persistence.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        self.spawn()
    }

    /// `tcp://127.0.0.1:PORT` of the plain listener.
    pub fn address(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(Process::id)
    }

    /// Waits until the broker has granted a subscription to `filter` (a `<client> <qos> <filter>` line and then
    /// the SUBACK to that client in its full log) and answers the client's id. Counts subscriptions made since
    /// the last start.
    pub async fn wait_subscribed(&self, filter: &str, timeout: Duration) -> Result<String> {
        let start = self.started_at;
        let found = poll_async(timeout, || async move {
            let log = self.log();
            let lines: Vec<&str> = log.lines().skip(start).collect();
            lines.iter().enumerate().find_map(|(i, line)| {
                let rest = line.split_once(": ")?.1.strip_suffix(filter)?;
                let (client, qos) = rest.trim_end().rsplit_once(' ')?;
                qos.parse::<u8>().ok()?;
                let ack = format!("Sending SUBACK to {client}");
                lines[i..]
                    .iter()
                    .any(|l| l.ends_with(&ack))
                    .then(|| client.to_string())
            })
        })
        .await;
        found.map_err(|_| {
            anyhow::anyhow!(
                "mosquitto granted no subscription to {filter} within {timeout:?}; its log:\n{}",
                self.log()
            )
        })
    }

    /// The broker's log so far.
    pub fn log(&self) -> String {
        std::fs::read(self.dir.join("mosquitto.log"))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }
}
