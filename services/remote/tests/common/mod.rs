//! Fixtures: Debian's mosquitto on free ports (as the hub and as remotes), a test MQTT peer, a test PKI.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::{mpsc, watch};

/// Sends SIGTERM to a child process.
pub fn sigterm(pid: u32) -> Result<()> {
    let pid = i32::try_from(pid)?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )?;
    Ok(())
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

pub fn mosquitto_bin() -> PathBuf {
    for p in ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!("mosquitto is not installed: apt-get install mosquitto (then stop its daemon)");
}

/// TLS files for a broker listener.
pub struct ServerTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub require_client_cert: bool,
}

/// A mosquitto process with its own config, persistence dir and log, on a fixed port across restarts.
pub struct Broker {
    /// The plain listener.
    pub port: u16,
    /// The TLS listener, when the broker was started with one.
    pub tls_port: Option<u16>,
    pub dir: PathBuf,
    child: Option<Child>,
}

impl Broker {
    pub fn start(dir: &Path, tls: Option<&ServerTls>) -> Result<Broker> {
        std::fs::create_dir_all(dir)?;
        let port = free_port();
        let mut conf = format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {}/\n\
             max_queued_messages 100000\nuser root\nlog_dest file {}/mosquitto.log\nlog_type all\n",
            dir.display(),
            dir.display()
        );
        let mut tls_port = None;
        if let Some(t) = tls {
            let p = free_port();
            tls_port = Some(p);
            conf.push_str(&format!(
                "listener {p} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate {}\n",
                t.ca.display(),
                t.cert.display(),
                t.key.display(),
                t.require_client_cert
            ));
        }
        std::fs::write(dir.join("mosquitto.conf"), conf)?;
        let mut b = Broker {
            port,
            tls_port,
            dir: dir.to_path_buf(),
            child: None,
        };
        b.spawn()?;
        Ok(b)
    }

    fn spawn(&mut self) -> Result<()> {
        let child = Command::new(mosquitto_bin())
            .arg("-c")
            .arg(self.dir.join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("spawn mosquitto")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                bail!(
                    "mosquitto exited with {status}; log: {}",
                    std::fs::read_to_string(self.dir.join("mosquitto.log")).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("mosquitto did not listen on {}", self.port)
    }

    /// SIGTERM: mosquitto saves its persistence file and exits.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = sigterm(c.id());
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        self.spawn()
    }

    pub fn address(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.port)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A test MQTT client (rumqttc, automatic acks) that reconnects by itself.
pub struct Peer {
    pub client: AsyncClient,
    rx: mpsc::UnboundedReceiver<(String, Vec<u8>, QoS)>,
    acks: Arc<AtomicU64>,
    ready: watch::Receiver<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Peer {
    pub async fn connect(port: u16, id: &str, clean: bool, subs: &[(&str, QoS)]) -> Result<Peer> {
        let mut o = MqttOptions::new(id, "127.0.0.1", port);
        o.set_clean_session(clean);
        o.set_keep_alive(Duration::from_secs(5));
        o.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut ev) = AsyncClient::new(o, 10_000);
        let (tx, rx) = mpsc::unbounded_channel();
        let acks = Arc::new(AtomicU64::new(0));
        let (ready_tx, ready) = watch::channel(false);
        let a = acks.clone();
        let filters: Vec<rumqttc::SubscribeFilter> = subs
            .iter()
            .map(|(t, q)| rumqttc::SubscribeFilter::new(t.to_string(), *q))
            .collect();
        let c2 = client.clone();
        let task = tokio::spawn(async move {
            loop {
                match ev.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                        if ack.session_present || filters.is_empty() {
                            ready_tx.send_replace(true);
                        } else {
                            let _ = c2.try_subscribe_many(filters.clone());
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        ready_tx.send_replace(true);
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let _ = tx.send((p.topic.clone(), p.payload.to_vec(), p.qos));
                    }
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        a.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        let mut p = Peer {
            client,
            rx,
            acks,
            ready,
            task,
        };
        tokio::time::timeout(Duration::from_secs(10), p.ready.wait_for(|r| *r))
            .await
            .context("peer connect/subscribe timeout")??;
        Ok(p)
    }

    /// Publishes each payload in order and waits for the broker's PUBACKs.
    pub async fn publish_all(&self, topic: &str, payloads: &[Vec<u8>]) -> Result<()> {
        let before = self.acks.load(Ordering::SeqCst);
        for p in payloads {
            self.client
                .publish(topic, QoS::AtLeastOnce, false, p.clone())
                .await?;
        }
        let want = before + payloads.len() as u64;
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.acks.load(Ordering::SeqCst) < want {
            if Instant::now() > deadline {
                bail!("broker did not acknowledge all publishes");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    /// Receives `n` messages or fails after `timeout`.
    pub async fn recv_n(
        &mut self,
        n: usize,
        timeout: Duration,
    ) -> Result<Vec<(String, Vec<u8>, QoS)>> {
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + timeout;
        while out.len() < n {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(m)) => out.push(m),
                Ok(None) => bail!("peer closed"),
                Err(_) => bail!(
                    "received {} of {n} messages: {:?}",
                    out.len(),
                    summary(&out)
                ),
            }
        }
        Ok(out)
    }

    /// Whatever arrives until nothing came for `quiet`.
    pub async fn drain(&mut self, quiet: Duration) -> Vec<(String, Vec<u8>, QoS)> {
        let mut out = Vec::new();
        while let Ok(Some(m)) = tokio::time::timeout(quiet, self.rx.recv()).await {
            out.push(m);
        }
        out
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn summary(v: &[(String, Vec<u8>, QoS)]) -> Vec<String> {
    v.iter()
        .take(5)
        .map(|(t, p, _)| format!("{t}={}", String::from_utf8_lossy(p)))
        .collect()
}

pub fn numbered(prefix: &str, n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| format!("{prefix}-{i}").into_bytes())
        .collect()
}

/// A CA, a server certificate for 127.0.0.1/localhost and a client certificate, written into `dir`.
pub struct Pki {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

pub fn make_pki(dir: &Path) -> Result<Pki> {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair,
    };
    std::fs::create_dir_all(dir)?;
    let mut cp = CertificateParams::new(Vec::<String>::new())?;
    cp.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    cp.distinguished_name
        .push(DnType::CommonName, "bridge test ca");
    let ca = CertifiedIssuer::self_signed(cp, KeyPair::generate()?)?;
    let server_key = KeyPair::generate()?;
    let mut sp = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])?;
    sp.distinguished_name.push(DnType::CommonName, "remote");
    sp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server = sp.signed_by(&server_key, &ca)?;
    let client_key = KeyPair::generate()?;
    let mut clp = CertificateParams::new(Vec::<String>::new())?;
    clp.distinguished_name.push(DnType::CommonName, "edge-1");
    clp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client = clp.signed_by(&client_key, &ca)?;
    let pki = Pki {
        ca: dir.join("ca.pem"),
        server_cert: dir.join("server.pem"),
        server_key: dir.join("server.key"),
        client_cert: dir.join("client.pem"),
        client_key: dir.join("client.key"),
    };
    std::fs::write(&pki.ca, ca.pem())?;
    std::fs::write(&pki.server_cert, server.pem())?;
    std::fs::write(&pki.server_key, server_key.serialize_pem())?;
    std::fs::write(&pki.client_cert, client.pem())?;
    std::fs::write(&pki.client_key, client_key.serialize_pem())?;
    Ok(pki)
}

/// Polls `f` until it is true or `timeout` passes.
pub async fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    f()
}
