//! `baetyl ctl`: the operator's command line for a fleet. Human tables by default, `--json` for scripts.
//!
//! The cloud's address, token and CA come from `--url`, `--token-file`/`BAETYL_CLOUD_TOKEN` and `--ca`
//! (or `BAETYL_CLOUD_URL`, `BAETYL_CLOUD_TOKEN_FILE`, `BAETYL_CLOUD_CA`); with `--data-dir` of a cloud on the
//! same host, its `admin.token` and `ca.crt` are used.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use baetyl_agent::bootstrap::FleetFile;
use baetyl_agent::crypto;
use baetyl_agent::https::{Client, Endpoint, client_config};
use baetyl_agent::proto::{BlobRef, FileRef};
use http_body_util::BodyExt;
use serde_json::{Value, json};

#[derive(Debug, clap::Args)]
pub struct CtlArgs {
    /// The cloud, e.g. https://cloud.example:9443.
    #[arg(
        long,
        env = "BAETYL_CLOUD_URL",
        default_value = "https://localhost:9443"
    )]
    pub url: String,
    /// A file holding an operator token.
    #[arg(long, env = "BAETYL_CLOUD_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// The cloud's CA certificate (PEM); default: the system's roots.
    #[arg(long, env = "BAETYL_CLOUD_CA")]
    pub ca: Option<PathBuf>,
    /// A local cloud's data dir: its admin.token and ca.crt.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Print the API's JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: CtlCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum CtlCommand {
    /// The fleet: its URL, signing key, devices and how many are online.
    Fleet,
    /// List devices, or act on one.
    Devices {
        #[command(subcommand)]
        command: Option<DevicesCommand>,
    },
    /// Make a device with a one-time registration token (prints the token).
    Provision {
        name: String,
        /// Tags of the new device (repeatable).
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// Write the token to this file (0600) instead of printing it.
        #[arg(long)]
        token_out: Option<PathBuf>,
        /// Write a fleet file with the token (0600) for `baetyl image build|configure --provisioning-key`.
        #[arg(long, value_name = "FILE", conflicts_with = "token_out")]
        fleet_file: Option<PathBuf>,
        /// The cloud's URL as the device reaches it, for --fleet-file (default: the cloud's public_url).
        #[arg(long, value_name = "URL", requires = "fleet_file")]
        device_url: Option<String>,
    },
    /// The fleet provisioning key that images carry (admin only; audited).
    ProvisioningKey {
        /// Make a new key (devices already registered are not affected).
        #[arg(long)]
        rotate: bool,
        /// Write the key to this file (0600) instead of printing it.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Write a fleet file (0600): the cloud's URL, its CA, the signing key and the provisioning key, what
        /// `baetyl image build|configure --provisioning-key` bakes into an image.
        #[arg(long, value_name = "FILE", conflicts_with = "out")]
        fleet_file: Option<PathBuf>,
        /// The cloud's URL as devices reach it, for --fleet-file (default: the cloud's public_url).
        #[arg(long, value_name = "URL", requires = "fleet_file")]
        device_url: Option<String>,
    },
    /// List application versions, or upload one.
    Apps {
        #[command(subcommand)]
        command: Option<AppsCommand>,
    },
    /// Assign an application version to a device or to every device with a tag.
    Deploy {
        app: String,
        version: String,
        #[arg(long, conflicts_with = "tag", required_unless_present = "tag")]
        device: Option<String>,
        #[arg(long)]
        tag: Option<String>,
    },
    /// A device's state from its last report: application, update, services.
    Status { device: String },
    /// Ask the device for a fresh inspect (the master's JSON).
    Inspect { device: String },
    /// A service's log on a device.
    Logs {
        device: String,
        service: String,
        #[arg(long)]
        instance: Option<String>,
        #[arg(long, default_value_t = 100)]
        tail: usize,
        /// Keep printing new lines until interrupted.
        #[arg(short, long)]
        follow: bool,
    },
    /// Restart a service on a device.
    Restart { device: String, service: String },
    /// Reboot a device.
    Reboot { device: String },
    /// Power a device off.
    Poweroff { device: String },
    /// A device's secrets (admin only; audited), or rotate them.
    Secrets {
        device: String,
        /// Give these secrets (or all) new values and redeploy.
        #[arg(long)]
        rotate: bool,
        names: Vec<String>,
    },
    /// Operator tokens.
    Tokens {
        #[command(subcommand)]
        command: Option<TokensCommand>,
    },
    /// The audit log, newest first.
    Audit {
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum DevicesCommand {
    List,
    Show {
        device: String,
    },
    /// Replace a device's tags.
    Tag {
        device: String,
        tags: Vec<String>,
    },
    /// Revoke a device: its link is cut and its certificate stops working.
    Revoke {
        device: String,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum AppsCommand {
    List,
    /// Upload an application directory: application.yml plus each volume's files at the volume's path below
    /// var/db/baetyl/ (the layout of examples/default), e.g. conf/hub/service.yml.
    Push {
        dir: PathBuf,
        /// Application name (default: the directory's name).
        #[arg(long)]
        name: Option<String>,
        /// Version (default: application.yml's app_version, which it must equal).
        #[arg(long)]
        version: Option<String>,
    },
    /// Show one version's manifest.
    Show {
        app: String,
        version: String,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum TokensCommand {
    List,
    Create {
        name: String,
        /// admin or read-only.
        #[arg(long, default_value = "read-only")]
        role: String,
    },
    Revoke {
        id: String,
    },
}

struct Ctl {
    client: Client,
    json: bool,
}

pub fn run_cli(args: CtlArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(run(args))
}

pub async fn run(args: CtlArgs) -> anyhow::Result<()> {
    let endpoint = Endpoint::parse(&args.url)?;
    let ca_path = args
        .ca
        .clone()
        .or_else(|| args.data_dir.as_ref().map(|d| d.join("ca.crt")));
    let ca = match &ca_path {
        Some(p) => {
            Some(std::fs::read(p).with_context(|| format!("cannot read the CA {}", p.display()))?)
        }
        None => None,
    };
    let token_path = args
        .token_file
        .clone()
        .or_else(|| args.data_dir.as_ref().map(|d| d.join("admin.token")));
    let token = match (std::env::var("BAETYL_CLOUD_TOKEN"), &token_path) {
        (Ok(t), _) if !t.trim().is_empty() => t.trim().to_string(),
        (_, Some(p)) => baetyl_agent::files::read_secret(p)
            .with_context(|| format!("cannot read the token {}", p.display()))?,
        _ => bail!(
            "no operator token: pass --token-file FILE, set BAETYL_CLOUD_TOKEN, or --data-dir of a local cloud"
        ),
    };
    let client = Client::new(endpoint, client_config(ca.as_deref(), None)?).with_bearer(token);
    let ctl = Ctl {
        client,
        json: args.json,
    };
    ctl.dispatch(args.command).await
}

/// `s` percent-encoded for a URL path segment or a query value.
fn enc(s: &str) -> String {
    baetyl_sdk::client::path_segment(s)
}

impl Ctl {
    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        Ok(self.client.json("GET", path, None).await?)
    }

    async fn send(&self, method: &str, path: &str, body: Value) -> anyhow::Result<Value> {
        Ok(self.client.json(method, path, Some(&body)).await?)
    }

    /// Writes a fleet file (0600) with the fleet's CA and signing key and one credential; answers its URL.
    async fn write_fleet_file(
        &self,
        path: &Path,
        device_url: Option<String>,
        provisioning_key: Option<String>,
        token: Option<String>,
    ) -> anyhow::Result<String> {
        let fleet = self.get("/api/v1/fleet").await?;
        let file = FleetFile {
            url: device_url.unwrap_or_else(|| s(&fleet["public_url"])),
            ca: s(&fleet["ca"]),
            signing_key: s(&fleet["signing_key"]),
            provisioning_key,
            token,
        };
        file.check().map_err(|e| {
            anyhow::anyhow!(
                "the fleet file would not work: {e} (give --device-url https://HOST:PORT)"
            )
        })?;
        baetyl_agent::files::replace(path, file.to_yaml().as_bytes(), 0o600)
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(file.url)
    }

    fn print(&self, v: &Value, human: impl FnOnce(&Value)) {
        if self.json {
            println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
        } else {
            human(v);
        }
    }

    async fn dispatch(&self, command: CtlCommand) -> anyhow::Result<()> {
        match command {
            CtlCommand::Fleet => {
                let v = self.get("/api/v1/fleet").await?;
                self.print(&v, |v| {
                    println!("url          {}", s(&v["public_url"]));
                    println!("signing key  {}", s(&v["signing_key"]));
                    println!("devices      {} ({} online)", v["devices"], v["online"]);
                    println!(
                        "processes    {} live; this one ({}) holds {} link(s)",
                        v["processes"],
                        s(&v["process"]),
                        v["links_here"]
                    );
                });
            }
            CtlCommand::Devices { command } => {
                self.devices(command.unwrap_or(DevicesCommand::List))
                    .await?
            }
            CtlCommand::Provision {
                name,
                tags,
                token_out,
                fleet_file,
                device_url,
            } => {
                let v = self
                    .send(
                        "POST",
                        "/api/v1/devices",
                        json!({"name": name, "tags": tags}),
                    )
                    .await?;
                let token = s(&v["token"]);
                if let Some(p) = fleet_file {
                    self.write_fleet_file(&p, device_url, None, Some(token))
                        .await?;
                    self.print(
                        &json!({"device": v["device"], "name": v["name"], "fleet_file": p}),
                        |_| {
                            println!(
                                "device {} ({}) made; its fleet file (with its one-time token) is {}",
                                s(&v["name"]),
                                s(&v["device"]),
                                p.display()
                            )
                        },
                    );
                    return Ok(());
                }
                match token_out {
                    Some(p) => {
                        baetyl_agent::files::create_private(&p, format!("{token}\n").as_bytes())
                            .with_context(|| format!("cannot write {}", p.display()))?;
                        self.print(
                            &json!({"device": v["device"], "name": v["name"], "token_file": p}),
                            |_| {
                                println!(
                                    "device {} ({}) made; its one-time token is in {}",
                                    s(&v["name"]),
                                    s(&v["device"]),
                                    p.display()
                                )
                            },
                        );
                    }
                    None => self.print(&v, |v| {
                        println!(
                            "device {} ({}) made; register it once with this token:",
                            s(&v["name"]),
                            s(&v["device"])
                        );
                        println!("{token}");
                    }),
                }
            }
            CtlCommand::ProvisioningKey {
                rotate,
                out,
                fleet_file,
                device_url,
            } => {
                let v = if rotate {
                    self.send("POST", "/api/v1/fleet/provisioning-key/rotate", json!({}))
                        .await?
                } else {
                    self.get("/api/v1/fleet/provisioning-key").await?
                };
                let key = s(&v["provisioning_key"]);
                if let Some(p) = fleet_file {
                    let url = self
                        .write_fleet_file(&p, device_url, Some(key), None)
                        .await?;
                    self.print(&json!({"fleet_file": p, "url": url}), |_| {
                        println!(
                            "fleet file for devices reaching {url} written to {}",
                            p.display()
                        )
                    });
                    return Ok(());
                }
                match out {
                    Some(p) => {
                        baetyl_agent::files::replace(&p, format!("{key}\n").as_bytes(), 0o600)
                            .with_context(|| format!("cannot write {}", p.display()))?;
                        println!("provisioning key written to {}", p.display());
                    }
                    None => self.print(&v, |_| println!("{key}")),
                }
            }
            CtlCommand::Apps { command } => self.apps(command.unwrap_or(AppsCommand::List)).await?,
            CtlCommand::Deploy {
                app,
                version,
                device,
                tag,
            } => {
                let v = self
                    .send(
                        "POST",
                        "/api/v1/deployments",
                        json!({"app": app, "version": version, "device": device, "tag": tag}),
                    )
                    .await?;
                self.print(&v, |v| {
                    println!(
                        "{} {} assigned to {}: revision {}, {} device(s) updated",
                        app,
                        version,
                        s(&v["target"]),
                        v["revision"],
                        v["devices"]
                    )
                });
            }
            CtlCommand::Status { device } => {
                let v = self
                    .get(&format!("/api/v1/devices/{}", enc(&device)))
                    .await?;
                self.print(&v, print_status);
            }
            CtlCommand::Inspect { device } => {
                let v = self
                    .send(
                        "POST",
                        &format!("/api/v1/devices/{}/inspect", enc(&device)),
                        json!({}),
                    )
                    .await?;
                self.print(&v, print_inspect);
            }
            CtlCommand::Logs {
                device,
                service,
                instance,
                tail,
                follow,
            } => {
                let mut path = format!(
                    "/api/v1/devices/{}/logs?service={}&tail={tail}&follow={follow}",
                    enc(&device),
                    enc(&service)
                );
                if let Some(i) = instance {
                    path.push_str(&format!("&instance={}", enc(&i)));
                }
                let resp = self.client.send("GET", &path, &[], Vec::new()).await?;
                let status = resp.status().as_u16();
                let mut body = resp.into_body();
                if !(200..300).contains(&status) {
                    let bytes = body
                        .collect()
                        .await
                        .map(|c| c.to_bytes().to_vec())
                        .unwrap_or_default();
                    bail!("the cloud answered {status}: {}", error_text(&bytes));
                }
                let mut out = std::io::stdout();
                while let Some(frame) = body.frame().await {
                    if let Some(d) = frame?.data_ref() {
                        out.write_all(d)?;
                        out.flush()?;
                    }
                }
            }
            CtlCommand::Restart { device, service } => {
                let v = self
                    .send(
                        "POST",
                        &format!(
                            "/api/v1/devices/{}/services/{}/restart",
                            enc(&device),
                            enc(&service)
                        ),
                        json!({}),
                    )
                    .await?;
                self.print(&v, |_| println!("{service} restarted on {device}"));
            }
            CtlCommand::Reboot { device } => {
                let v = self
                    .send(
                        "POST",
                        &format!("/api/v1/devices/{}/reboot", enc(&device)),
                        json!({}),
                    )
                    .await?;
                self.print(&v, |_| println!("{device} is rebooting"));
            }
            CtlCommand::Poweroff { device } => {
                let v = self
                    .send(
                        "POST",
                        &format!("/api/v1/devices/{}/poweroff", enc(&device)),
                        json!({}),
                    )
                    .await?;
                self.print(&v, |_| println!("{device} is powering off"));
            }
            CtlCommand::Secrets {
                device,
                rotate,
                names,
            } => {
                let v = if rotate {
                    self.send(
                        "POST",
                        &format!("/api/v1/devices/{}/secrets/rotate", enc(&device)),
                        json!({"names": names}),
                    )
                    .await?
                } else {
                    self.get(&format!("/api/v1/devices/{}/secrets", enc(&device)))
                        .await?
                };
                self.print(&v, |v| {
                    if rotate {
                        println!(
                            "rotated {} on {device}: revision {}",
                            v["rotated"], v["revision"]
                        );
                    } else {
                        table(
                            &["NAME", "VALUE"],
                            v.as_object()
                                .into_iter()
                                .flatten()
                                .map(|(k, x)| vec![k.clone(), s(x)])
                                .collect(),
                        );
                    }
                });
            }
            CtlCommand::Tokens { command } => match command.unwrap_or(TokensCommand::List) {
                TokensCommand::List => {
                    let v = self.get("/api/v1/tokens").await?;
                    self.print(&v, |v| {
                        table(
                            &["ID", "NAME", "ROLE", "CREATED", "REVOKED"],
                            rows(v)
                                .map(|t| {
                                    vec![
                                        s(&t["id"]),
                                        s(&t["name"]),
                                        s(&t["role"]),
                                        ago(&t["created"]),
                                        ago(&t["revoked"]),
                                    ]
                                })
                                .collect(),
                        )
                    });
                }
                TokensCommand::Create { name, role } => {
                    let v = self
                        .send(
                            "POST",
                            "/api/v1/tokens",
                            json!({"name": name, "role": role}),
                        )
                        .await?;
                    self.print(&v, |v| {
                        println!(
                            "token {} ({}, {}):",
                            s(&v["name"]),
                            s(&v["id"]),
                            s(&v["role"])
                        );
                        println!("{}", s(&v["token"]));
                    });
                }
                TokensCommand::Revoke { id } => {
                    let v = self
                        .send("DELETE", &format!("/api/v1/tokens/{}", enc(&id)), json!({}))
                        .await?;
                    self.print(&v, |_| println!("token {id} revoked"));
                }
            },
            CtlCommand::Audit { limit } => {
                let v = self.get(&format!("/api/v1/audit?limit={limit}")).await?;
                self.print(&v, |v| {
                    table(
                        &["WHEN", "ACTOR", "ACTION", "TARGET", "OUTCOME"],
                        rows(v)
                            .map(|e| {
                                vec![
                                    ago(&e["time"]),
                                    s(&e["actor"]),
                                    s(&e["action"]),
                                    s(&e["target"]),
                                    s(&e["outcome"]),
                                ]
                            })
                            .collect(),
                    )
                });
            }
        }
        Ok(())
    }

    async fn devices(&self, command: DevicesCommand) -> anyhow::Result<()> {
        match command {
            DevicesCommand::List => {
                let v = self.get("/api/v1/devices").await?;
                self.print(&v, |v| {
                    table(
                        &[
                            "NAME",
                            "ID",
                            "STATE",
                            "ONLINE",
                            "APP",
                            "REV",
                            "UPDATE",
                            "CPU",
                            "MEMORY",
                            "LAST REPORT",
                        ],
                        rows(v)
                            .map(|d| {
                                vec![
                                    s(&d["name"]),
                                    s(&d["id"]),
                                    s(&d["state"]),
                                    if d["online"] == true {
                                        "yes".into()
                                    } else {
                                        "no".into()
                                    },
                                    s(&d["app_version"]),
                                    d["applied_revision"].to_string(),
                                    s(&d["update_state"]),
                                    d["cpu_percent"]
                                        .as_f64()
                                        .map(|c| format!("{c:.0}%"))
                                        .unwrap_or_else(|| "-".into()),
                                    memory(&d["mem_used"], &d["mem_total"]),
                                    ago(&d["report_time"]),
                                ]
                            })
                            .collect(),
                    )
                });
            }
            DevicesCommand::Show { device } => {
                let v = self
                    .get(&format!("/api/v1/devices/{}", enc(&device)))
                    .await?;
                self.print(&v, print_status);
            }
            DevicesCommand::Tag { device, tags } => {
                let v = self
                    .send(
                        "PUT",
                        &format!("/api/v1/devices/{}/tags", enc(&device)),
                        json!({"tags": tags}),
                    )
                    .await?;
                self.print(&v, |v| {
                    println!(
                        "{device} tagged {}; {} redeployed",
                        v["tags"], v["redeployed"]
                    )
                });
            }
            DevicesCommand::Revoke { device } => {
                let v = self
                    .send(
                        "POST",
                        &format!("/api/v1/devices/{}/revoke", enc(&device)),
                        json!({}),
                    )
                    .await?;
                self.print(&v, |_| {
                    println!("{device} revoked: its link is cut and its certificate refused")
                });
            }
        }
        Ok(())
    }

    async fn apps(&self, command: AppsCommand) -> anyhow::Result<()> {
        match command {
            AppsCommand::List => {
                let v = self.get("/api/v1/apps").await?;
                self.print(&v, |v| {
                    table(
                        &["APP", "VERSION", "SIZE", "SECRETS", "UPLOADED", "BY"],
                        rows(v)
                            .map(|a| {
                                vec![
                                    s(&a["app"]),
                                    s(&a["version"]),
                                    baetyl_sdk::config::human_bytes(
                                        a["size"].as_u64().unwrap_or(0),
                                    ),
                                    a["secrets"]
                                        .as_array()
                                        .map(|x| x.iter().map(s).collect::<Vec<_>>().join(","))
                                        .unwrap_or_default(),
                                    ago(&a["created"]),
                                    s(&a["created_by"]),
                                ]
                            })
                            .collect(),
                    )
                });
            }
            AppsCommand::Show { app, version } => {
                let v = self
                    .get(&format!(
                        "/api/v1/apps/{}/versions/{}",
                        enc(&app),
                        enc(&version)
                    ))
                    .await?;
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            }
            AppsCommand::Push { dir, name, version } => {
                let name = match name {
                    Some(n) => n,
                    None => dir
                        .canonicalize()
                        .ok()
                        .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
                        .context("give the application a name with --name")?,
                };
                let bundle = read_app_dir(&dir)?;
                let mut uploaded = 0;
                for (sha, data) in &bundle.blobs {
                    let head = self
                        .client
                        .send("HEAD", &format!("/api/v1/blobs/{sha}"), &[], Vec::new())
                        .await?;
                    if head.status().as_u16() == 200 {
                        continue;
                    }
                    self.client
                        .call(
                            "PUT",
                            &format!("/api/v1/blobs/{sha}"),
                            &[("content-type", "application/octet-stream")],
                            data.clone(),
                            1 << 20,
                        )
                        .await
                        .with_context(|| format!("uploading blob {sha}"))?;
                    uploaded += 1;
                }
                let body = json!({"version": version, "application": bundle.application, "volumes": bundle.volumes});
                let v = self
                    .send(
                        "POST",
                        &format!("/api/v1/apps/{}/versions", enc(&name)),
                        body,
                    )
                    .await?;
                self.print(&v, |v| {
                    println!(
                        "{} {} uploaded ({} file(s), {uploaded} new) and signed; secrets: {}",
                        s(&v["app"]),
                        s(&v["version"]),
                        bundle.blobs.len(),
                        v["secrets"]
                    )
                });
            }
        }
        Ok(())
    }
}

/// An application directory read for upload.
pub struct Bundle {
    pub application: BlobRef,
    pub volumes: BTreeMap<String, Vec<FileRef>>,
    /// Content by digest (each once).
    pub blobs: BTreeMap<String, Vec<u8>>,
}

/// Reads `dir/application.yml` and the files of every volume whose directory exists below `dir` (a volume's
/// `path` relative to `var/db/baetyl/`; default `volumes/<name>`). Symbolic links are refused.
pub fn read_app_dir(dir: &Path) -> anyhow::Result<Bundle> {
    let app_path = dir.join("application.yml");
    let text = std::fs::read_to_string(&app_path)
        .with_context(|| format!("cannot read {}", app_path.display()))?;
    let parsed: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text)
        .with_context(|| format!("{} is not YAML", app_path.display()))?;
    let mut blobs = BTreeMap::new();
    let mut add = |data: Vec<u8>| {
        let sha = crypto::sha256_hex(&data);
        let r = BlobRef {
            sha256: sha.clone(),
            size: data.len() as u64,
        };
        blobs.insert(sha, data);
        r
    };
    let application = add(text.clone().into_bytes());
    let mut volumes = BTreeMap::new();
    if let Some(vols) = parsed.get("volumes").and_then(|v| v.as_mapping()) {
        for (k, spec) in vols {
            let Some(name) = k.as_str() else { continue };
            let path = spec
                .get("path")
                .and_then(|p| p.as_str())
                .map(str::to_string)
                .unwrap_or_else(|| format!("var/db/baetyl/volumes/{name}"));
            let Some(rel) = path.trim_start_matches("./").strip_prefix("var/db/baetyl/") else {
                continue;
            };
            let src = dir.join(rel);
            if !src.is_dir() {
                continue;
            }
            let mut files = Vec::new();
            walk(&src, &src, &mut |p, rel| {
                use std::os::unix::fs::PermissionsExt;
                let data =
                    std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?;
                let exec = std::fs::metadata(p)?.permissions().mode() & 0o111 != 0;
                files.push(FileRef {
                    path: rel,
                    blob: add(data),
                    mode: if exec { 0o755 } else { 0o644 },
                });
                Ok(())
            })?;
            files.sort_by(|a, b| a.path.cmp(&b.path));
            volumes.insert(name.to_string(), files);
        }
    }
    Ok(Bundle {
        application,
        volumes,
        blobs,
    })
}

fn walk(
    root: &Path,
    dir: &Path,
    f: &mut dyn FnMut(&Path, String) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let p = e.path();
        let t = e.file_type()?;
        if t.is_symlink() {
            bail!(
                "{} is a symbolic link: an application ships plain files only",
                p.display()
            );
        } else if t.is_dir() {
            walk(root, &p, f)?;
        } else if t.is_file() {
            let rel = p
                .strip_prefix(root)
                .map(|r| r.to_string_lossy().into_owned())
                .unwrap_or_default();
            f(&p, rel)?;
        }
    }
    Ok(())
}

fn rows(v: &Value) -> impl Iterator<Item = &Value> {
    v.as_array().into_iter().flatten()
}

fn s(v: &Value) -> String {
    match v {
        Value::String(x) => x.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn error_text(bytes: &[u8]) -> String {
    serde_json::from_slice::<Value>(bytes)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(bytes).trim().to_string())
}

/// `12s ago`, `5m ago`, `3h ago`, `2d ago` from unix milliseconds.
fn ago(v: &Value) -> String {
    let Some(ms) = v.as_i64() else {
        return "-".into();
    };
    let secs = (crate::store::now_ms() - ms).max(0) / 1000;
    match secs {
        0..=59 => format!("{secs}s ago"),
        60..=3599 => format!("{}m ago", secs / 60),
        3600..=86_399 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86_400),
    }
}

fn memory(used: &Value, total: &Value) -> String {
    match (used.as_u64(), total.as_u64()) {
        (Some(u), Some(t)) => format!(
            "{}/{}",
            baetyl_sdk::config::human_bytes(u),
            baetyl_sdk::config::human_bytes(t)
        ),
        _ => "-".into(),
    }
}

fn table(head: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = head.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let parts: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(head.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r);
    }
}

fn print_status(d: &Value) {
    println!(
        "device       {} ({}), {}",
        s(&d["name"]),
        s(&d["id"]),
        s(&d["state"])
    );
    println!(
        "online       {}",
        if d["online"] == true { "yes" } else { "no" }
    );
    println!(
        "tags         {}",
        d["tags"]
            .as_array()
            .map(|t| t.iter().map(s).collect::<Vec<_>>().join(", "))
            .unwrap_or_default()
    );
    println!(
        "application  {} (revision {})",
        s(&d["app_version"]),
        d["applied_revision"]
    );
    if d["desired"].is_object() {
        println!(
            "desired      {} {} (revision {})",
            s(&d["desired"]["app"]),
            s(&d["desired"]["version"]),
            d["desired"]["revision"]
        );
    }
    println!(
        "update       {}{}",
        s(&d["update_state"]),
        d["update_error"]
            .as_str()
            .map(|e| format!(": {e}"))
            .unwrap_or_default()
    );
    println!("last report  {}", ago(&d["report_time"]));
    if d["report"]["inspect"].is_object() {
        print_inspect(&d["report"]["inspect"]);
    }
    if let Some(deps) = d["deployments"].as_array().filter(|a| !a.is_empty()) {
        println!();
        table(
            &["REVISION", "APP", "VERSION", "STATE", "WHEN", "ERROR"],
            deps.iter()
                .map(|x| {
                    vec![
                        x["revision"].to_string(),
                        s(&x["app"]),
                        s(&x["version"]),
                        s(&x["state"]),
                        ago(&x["updated"]),
                        x["error"].as_str().unwrap_or("").to_string(),
                    ]
                })
                .collect(),
        );
    }
}

fn print_inspect(v: &Value) {
    if let Some(e) = v["error"].as_str().filter(|e| !e.is_empty()) {
        println!("error        {e}");
    }
    let mut list = Vec::new();
    for svc in rows(&v["services"]) {
        for i in rows(&svc["instances"]) {
            list.push(vec![
                format!("{}/{}", s(&svc["name"]), s(&i["name"])),
                s(&i["status"]),
                i["process"]["pid"]
                    .as_u64()
                    .map(|p| p.to_string())
                    .unwrap_or_else(|| "-".into()),
                i["restarts"].as_u64().unwrap_or(0).to_string(),
                i["cpu_stats"]["used_percent"]
                    .as_f64()
                    .map(|c| format!("{c:.1}"))
                    .unwrap_or_else(|| "-".into()),
                i["mem_stats"]["rss"]
                    .as_u64()
                    .map(baetyl_sdk::config::human_bytes)
                    .unwrap_or_else(|| "-".into()),
            ]);
        }
    }
    println!();
    table(
        &["INSTANCE", "STATUS", "PID", "RESTARTS", "CPU%", "RSS"],
        list,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_dirs_ship_volume_files_by_path() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("application.yml"),
            "version: v1\napp_version: a1\nservices: {}\nvolumes:\n  conf: {path: var/db/baetyl/conf/x}\n  data: {path: var/db/baetyl/data}\n  dflt: {}\n",
        )
        .unwrap();
        std::fs::create_dir_all(dir.path().join("conf/x/sub")).unwrap();
        std::fs::write(dir.path().join("conf/x/service.yml"), "a: 1\n").unwrap();
        std::fs::write(dir.path().join("conf/x/sub/run.sh"), "echo\n").unwrap();
        std::fs::create_dir_all(dir.path().join("volumes/dflt")).unwrap();
        std::fs::write(dir.path().join("volumes/dflt/f"), "x").unwrap();
        let b = read_app_dir(dir.path()).unwrap();
        let names: Vec<_> = b.volumes["conf"].iter().map(|f| f.path.as_str()).collect();
        assert_eq!(names, ["service.yml", "sub/run.sh"]);
        assert_eq!(b.volumes["dflt"].len(), 1);
        assert!(
            !b.volumes.contains_key("data"),
            "a volume without a directory ships nothing"
        );
        assert_eq!(b.blobs.len(), 4);
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("conf/x/link")).unwrap();
        assert!(read_app_dir(dir.path()).is_err());
        assert_eq!(enc("a b/c"), "a%20b%2Fc");
    }
}
