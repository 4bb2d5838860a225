//! A persistent QoS 1 subscriber that loses its connection and resumes its session, again and again, while a
//! publisher keeps sending: every message the hub acknowledged to the publisher must reach the subscriber
//! (duplicates allowed), whichever way the connection ended (closed without DISCONNECT, as by kill -9; taken
//! over by a new connection while the old one is still open) and however soon the client came back.
//!
//! The function manager does this when it is killed -9 and restarted (tests/function.rs
//! `no_qos1_message_is_lost_when_a_runtime_or_the_manager_is_killed`: 5 of 300 results missing in about 1 run
//! of 6). The engine dropped what was routed to the client id between the kick of the old session and the
//! registration of the new one (the storage plugin writes the session's record in between), what reached the
//! old session's channel behind the kick, and the message being written when the connection failed.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use common::*;
use rumqttc::QoS;

const ADMIN: (&str, &str) = ("admin", "admin-pw");
const TAKEOVERS: usize = 15;

/// The subscriber, as the function manager has it: a persistent session, QoS 1, each message acknowledged
/// only once it is recorded; it subscribes again on every connection.
async fn subscriber(addr: SocketAddr) -> Result<Client> {
    let mut o = options("resumer", addr, Some(ADMIN));
    o.set_clean_session(false);
    o.set_manual_acks(true);
    let mut c = Client::connect(o).await?;
    c.subscribe("seq/#", QoS::AtLeastOnce).await?;
    Ok(c)
}

/// Records what `sub` received within `wait` (acknowledging each message once recorded).
async fn receive(sub: &mut Client, seen: &mut BTreeSet<u64>, wait: Duration) -> Result<()> {
    let deadline = tokio::time::Instant::now() + wait;
    while tokio::time::Instant::now() < deadline {
        if let Some(p) = sub.recv(Duration::from_millis(2)).await? {
            seen.extend(String::from_utf8_lossy(&p.payload).parse::<u64>().ok());
            sub.inner().ack(&p).await?;
        }
    }
    Ok(())
}

#[test]
fn acknowledged_messages_reach_a_persistent_session_resumed_mid_stream() -> Result<()> {
    block_on(async {
        let hub = standard_hub().await?;
        let addr = hub.tcp();
        let mut sub = subscriber(addr).await?;

        // A steady stream: 10 QoS 1 messages every millisecond, numbered, until the takeovers are over.
        let stop = Arc::new(AtomicBool::new(false));
        let publisher = tokio::spawn({
            let stop = stop.clone();
            async move {
                let mut publisher = connect_ok("publisher", addr, ADMIN).await?;
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    for _ in 0..10 {
                        publisher
                            .send("seq/a", QoS::AtLeastOnce, false, n.to_string())
                            .await?;
                        n += 1;
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                publisher
                    .wait_acks()
                    .await
                    .context("the hub acknowledged every publish")?;
                anyhow::Ok(n)
            }
        });

        let mut seen = BTreeSet::new();
        for round in 0..TAKEOVERS {
            receive(
                &mut sub,
                &mut seen,
                Duration::from_millis(30 + 10 * (round as u64 % 4)),
            )
            .await?;
            sub = match round % 3 {
                // Closed without DISCONNECT (kill -9), back at once: the hub may see the new CONNECT first.
                0 => {
                    sub.kill();
                    subscriber(addr).await?
                }
                // Closed without DISCONNECT, back after a while (the master restarts the manager in 200 ms): the
                // session goes offline and queues in between.
                1 => {
                    sub.kill();
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    subscriber(addr).await?
                }
                // A new connection takes over while the old one is open: what the old one received counts.
                _ => {
                    let new = subscriber(addr).await?;
                    while let Ok(Some(p)) = sub.recv(Duration::from_millis(1)).await {
                        seen.extend(String::from_utf8_lossy(&p.payload).parse::<u64>().ok());
                    }
                    new
                }
            };
        }
        stop.store(true, Ordering::Relaxed);
        let total = publisher.await??;

        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while (seen.len() as u64) < total && tokio::time::Instant::now() < deadline {
            receive(&mut sub, &mut seen, Duration::from_millis(200)).await?;
        }
        let missing: Vec<u64> = (0..total).filter(|n| !seen.contains(n)).collect();
        assert!(
            missing.is_empty(),
            "{} of {total} acknowledged messages never reached the resumed session: {missing:?}",
            missing.len()
        );
        println!("{total} messages, {TAKEOVERS} takeovers, none lost");
        Ok(())
    })
}
