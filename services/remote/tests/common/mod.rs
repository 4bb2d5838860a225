//! Fixtures: test clients of the test kit's mosquitto (as the hub and as remotes), numbered payloads.
#![allow(dead_code)]

use anyhow::Result;
use baetyl_testkit::mqtt::{Client, options};
use rumqttc::QoS;

/// A client of the broker on `port` (`clean` = clean session), subscribed to `subs` (SUBACK received).
pub async fn peer(port: u16, id: &str, clean: bool, subs: &[(&str, QoS)]) -> Result<Client> {
    let mut o = options(id, port);
    o.set_clean_session(clean);
    let mut c = Client::connect(o).await?;
    if !subs.is_empty() {
        c.subscribe_many(subs).await?;
    }
    Ok(c)
}

pub fn numbered(prefix: &str, n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| format!("{prefix}-{i}").into_bytes())
        .collect()
}
