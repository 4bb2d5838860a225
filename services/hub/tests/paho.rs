//! A client library other than rumqttc end to end: Eclipse paho-mqtt (Python, from PyPI, pinned in
//! scripts/setup.sh into the project's `.venv`) exercises MQTT 3.1.1 and the MQTT 5 features through the hub:
//! request/response properties, user properties in order, message expiry, subscription options, subscription
//! identifiers, topic aliases, shared subscriptions, reason codes, session expiry, takeover (`paho_clients.py`).

mod mqtt_raw;

use std::path::Path;

use anyhow::{Context, Result, bail};
use mqtt_raw::*;

#[test]
fn paho_mqtt_v311_and_v5_end_to_end() -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = root.join("../../.venv/bin/python3");
    let ok = std::process::Command::new(&python)
        .args(["-c", "import paho.mqtt"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        bail!(
            "{} cannot import paho.mqtt: run scripts/setup.sh (it installs paho-mqtt into .venv)",
            python.display()
        );
    }
    block_on(async {
        let (hub, _h) = start_hub("").await?;
        let out = tokio::process::Command::new(&python)
            .arg(root.join("tests/paho_clients.py"))
            .arg(hub.addr.ip().to_string())
            .arg(hub.addr.port().to_string())
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(std::time::Duration::from_secs(120), out)
            .await
            .context("paho_clients.py did not finish in 2 minutes")??;
        let stdout = String::from_utf8_lossy(&out.stdout);
        print!("{stdout}");
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
        let passed = stdout.lines().filter(|l| l.starts_with("ok ")).count();
        if !out.status.success() || passed < 13 {
            bail!("paho-mqtt checks failed ({passed} passed):\n{stdout}");
        }
        Ok(())
    })
}
