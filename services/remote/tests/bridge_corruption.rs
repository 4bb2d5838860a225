//! The bridge's buffer after a flipped byte on disk (issue 10): against Debian's mosquitto as hub and remote,
//! 2,500 buffered messages of which one record is damaged reach the remote as 2,499, in order, and the stats
//! count the lost one.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use baetyl_remote::{Bridge, BridgeConfig};
use baetyl_sdk::config::ConfigFile;
use baetyl_testkit::eventually_async;
use baetyl_testkit::mosquitto::Mosquitto as Broker;
use common::peer;
use rumqttc::QoS;

const LONG: Duration = Duration::from_secs(60);
const N: usize = 2500;

fn payload(i: usize) -> Vec<u8> {
    // About 4 KiB: 2,500 of them fill three segments of the buffer.
    let mut p = format!("m-{i}|").into_bytes();
    p.resize(4096, b'.');
    p
}

fn id_of(payload: &[u8]) -> Option<usize> {
    let s = std::str::from_utf8(payload).ok()?;
    s.strip_prefix("m-")?.split('|').next()?.parse().ok()
}

fn segments(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(".seg"))
        .collect();
    v.sort();
    Ok(v)
}

/// Flips the first byte of the length field of the `index`th frame of `segment`; answers the message id it
/// carried.
fn damage_frame(segment: &Path, index: usize) -> Result<usize> {
    let mut buf = std::fs::read(segment)?;
    let mut pos = 0usize;
    for _ in 0..index {
        let len = u32::from_le_bytes(buf[pos..pos + 4].try_into()?) as usize;
        pos += 8 + len;
    }
    let len = u32::from_le_bytes(buf[pos..pos + 4].try_into()?) as usize;
    let body = &buf[pos + 8..pos + 8 + len];
    let topic_len = u16::from_le_bytes(body[9..11].try_into()?) as usize;
    let id = id_of(&body[11 + topic_len..]).context("payload id")?;
    buf[pos] ^= 0x5a;
    std::fs::write(segment, buf)?;
    Ok(id)
}

fn stat(bridge: &Bridge, key: &str) -> u64 {
    bridge.stats()["remotes"]["cloud"][key]
        .as_u64()
        .unwrap_or(u64::MAX)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_flipped_byte_in_a_2500_message_buffer_loses_one_message() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let hub = Broker::start(&tmp.path().join("hub"))?;
    let mut cloud = Broker::start(&tmp.path().join("cloud"))?;
    let buffer = tmp.path().join("buffer");
    let path = tmp.path().join("service.yml");
    std::fs::write(
        &path,
        format!(
            "hub: {{address: '{}'}}\nremotes: [{{name: cloud, address: '{}'}}]\n\
             rules: [{{hub: {{subscriptions: [{{topic: 'up/#', qos: 1}}]}}, remote: {{name: cloud}}}}]\n\
             buffer: {{dir: '{}'}}\n",
            hub.address(),
            cloud.address(),
            buffer.display()
        ),
    )?;
    let cfg = BridgeConfig::load(&path)?;
    // A persistent subscriber on the remote, then the remote goes away: the bridge buffers.
    drop(
        peer(
            cloud.port,
            "cloud-sub",
            false,
            &[("up/#", QoS::AtLeastOnce)],
        )
        .await?,
    );
    cloud.stop();
    let bridge = Bridge::start(&cfg).await?;
    let mut hub_pub = peer(hub.port, "hub-pub", true, &[]).await?;
    // The hub subscription is in place once a first message is buffered.
    tokio::time::timeout(LONG, async {
        while stat(&bridge, "buffered") == 0 {
            hub_pub.publish_all("up/warmup", &[b"w".to_vec()]).await?;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        anyhow::Ok(())
    })
    .await??;
    let warmups = stat(&bridge, "buffered");
    let all: Vec<Vec<u8>> = (0..N).map(payload).collect();
    for chunk in all.chunks(250) {
        hub_pub.publish_all("up/data", chunk).await?;
    }
    eventually_async(LONG, "every message buffered", || async {
        (stat(&bridge, "buffered") == warmups + N as u64)
            .then_some(())
            .ok_or_else(|| bridge.stats().to_string())
    })
    .await;
    bridge.stop().await;

    // One flipped byte in the length field of a record in the middle of a segment that is not the last.
    let segs = segments(&buffer.join("cloud"))?;
    assert!(segs.len() >= 3, "{segs:?}");
    let lost = damage_frame(&segs[1], 100)?;

    cloud.restart()?;
    let mut sub = peer(
        cloud.port,
        "cloud-sub",
        false,
        &[("up/#", QoS::AtLeastOnce)],
    )
    .await?;
    let bridge = Bridge::start(&cfg).await?;
    let got = sub.recv_n(warmups as usize + N - 1, LONG).await?;
    let ids: Vec<usize> = got.iter().filter_map(|p| id_of(&p.payload)).collect();
    let want: Vec<usize> = (0..N).filter(|&i| i != lost).collect();
    assert_eq!(ids.len(), want.len(), "lost {lost}");
    assert!(ids == want, "in order, only message {lost} missing");
    assert!(
        sub.drain(Duration::from_millis(800)).await.is_empty(),
        "nothing more, no duplicates"
    );
    eventually_async(LONG, "the buffer emptied", || async {
        (stat(&bridge, "buffered") == 0)
            .then_some(())
            .ok_or_else(|| bridge.stats().to_string())
    })
    .await;
    let s = bridge.stats();
    assert_eq!(stat(&bridge, "corrupt"), 1, "{s}");
    assert_eq!(stat(&bridge, "dropped"), 0, "{s}");
    assert_eq!(stat(&bridge, "sent"), warmups + N as u64 - 1, "{s}");
    bridge.stop().await;
    Ok(())
}
