//! `baetyl inspect`: asks the master of a work dir for its state (the API's inspect JSON) with the operator
//! token it wrote, and prints it raw or as a summary table.

use std::path::PathBuf;

use anyhow::Context;
use baetyl_sdk::client::MasterClient;
use baetyl_sdk::config::human_bytes;

use super::load_config;
use crate::api::OPERATOR;
use crate::server::operator_token_path;

#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// The master's work dir.
    #[arg(short = 'w', long, default_value = ".")]
    pub workdir: PathBuf,
    /// Print the raw inspect JSON instead of a summary.
    #[arg(long)]
    pub json: bool,
}

/// `baetyl inspect`: asks the master of a work dir for its state, with the operator token it wrote.
pub fn run_inspect(args: InspectArgs) -> anyhow::Result<()> {
    let workdir = args
        .workdir
        .canonicalize()
        .with_context(|| format!("work dir {} does not exist", args.workdir.display()))?;
    let cfg = load_config(&workdir.join("etc/baetyl/conf.yml"))?;
    let address = cfg.server.address.under(&workdir);
    let token_path = operator_token_path(&workdir);
    let token = std::fs::read_to_string(&token_path).with_context(|| {
        format!(
            "cannot read {} (is a master running in {}?)",
            token_path.display(),
            workdir.display()
        )
    })?;
    let client = MasterClient::new(address).with_credentials(OPERATOR, token.trim());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let v = rt.block_on(client.inspect())?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let sw = &v["software"];
    println!(
        "baetyl {} ({}) mode {} in {}; application {}",
        sw["bin_version"].as_str().unwrap_or("?"),
        sw["git_revision"].as_str().unwrap_or("?"),
        sw["mode"].as_str().unwrap_or("?"),
        sw["pwd"].as_str().unwrap_or("?"),
        sw["conf_version"].as_str().unwrap_or("?")
    );
    if let Some(e) = v["error"].as_str().filter(|e| !e.is_empty()) {
        println!("error: {e}");
    }
    println!(
        "{:<36} {:<10} {:>8} {:>8} {:>7} {:>10}",
        "INSTANCE", "STATUS", "PID", "RESTARTS", "CPU%", "RSS"
    );
    for svc in v["services"].as_array().into_iter().flatten() {
        for inst in svc["instances"].as_array().into_iter().flatten() {
            let name = format!(
                "{}/{}",
                svc["name"].as_str().unwrap_or("?"),
                inst["name"].as_str().unwrap_or("?")
            );
            println!(
                "{:<36} {:<10} {:>8} {:>8} {:>7} {:>10}",
                name,
                inst["status"].as_str().unwrap_or("?"),
                inst["process"]["pid"]
                    .as_u64()
                    .map(|p| p.to_string())
                    .unwrap_or_else(|| "-".into()),
                inst["restarts"].as_u64().unwrap_or(0),
                inst["cpu_stats"]["used_percent"]
                    .as_f64()
                    .map(|c| format!("{c:.1}"))
                    .unwrap_or_else(|| "-".into()),
                inst["mem_stats"]["rss"]
                    .as_u64()
                    .map(human_bytes)
                    .unwrap_or_else(|| "-".into()),
            );
        }
    }
    let mem = &v["hardware"]["mem_stats"];
    println!(
        "host: cpu {}%, memory {} used of {}, disk {}% used",
        v["hardware"]["cpu_stats"]["used_percent"],
        human_bytes(mem["used"].as_u64().unwrap_or(0)),
        human_bytes(mem["total"].as_u64().unwrap_or(0)),
        v["hardware"]["disk_stats"]["used_percent"]
    );
    Ok(())
}
