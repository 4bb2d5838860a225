//! The devices linked to this process, and the routing of commands and answers: an operator's command goes
//! straight to the device when this process holds its link, else through the bus to the process that does;
//! the answers come back the same way.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use baetyl_agent::proto::{Down, Op, Signed, Up};
use tokio::sync::{Notify, mpsc};

use crate::bus::{Bus, Event};
use crate::error::{CloudError, Result};
use crate::store::{DesiredRow, Store};

/// One device's link in this process.
#[derive(Clone)]
pub struct Handle {
    pub conn: u64,
    pub tx: mpsc::Sender<Down>,
    /// The newest revision sent on this link.
    pub sent: Arc<AtomicI64>,
    pub close: Arc<Notify>,
}

pub struct Links {
    pub me: String,
    store: Store,
    bus: Bus,
    links: Mutex<HashMap<String, Handle>>,
    /// Commands asked through this process: id -> where the device's answers go.
    waiters: Mutex<HashMap<String, mpsc::Sender<Up>>>,
    /// Commands this process passed to a device for another process: id -> that process.
    forwarded: Mutex<HashMap<String, String>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn is_final(msg: &Up) -> bool {
    matches!(msg, Up::Result { .. } | Up::LogEnd { .. })
}

impl Links {
    pub fn new(me: String, store: Store, bus: Bus) -> Self {
        Links {
            me,
            store,
            bus,
            links: Mutex::new(HashMap::new()),
            waiters: Mutex::new(HashMap::new()),
            forwarded: Mutex::new(HashMap::new()),
        }
    }

    /// Adds a link; an older link of the same device in this process is closed.
    pub fn register(&self, device: &str, handle: Handle) {
        if let Some(old) = lock(&self.links).insert(device.to_string(), handle) {
            old.close.notify_one();
        }
    }

    /// Removes the link `conn` of `device` (not a newer one that replaced it).
    pub fn unregister(&self, device: &str, conn: u64) -> bool {
        let mut links = lock(&self.links);
        if links.get(device).is_some_and(|h| h.conn == conn) {
            links.remove(device);
            true
        } else {
            false
        }
    }

    pub fn count(&self) -> usize {
        lock(&self.links).len()
    }

    pub fn local(&self, device: &str) -> Option<Handle> {
        lock(&self.links).get(device).cloned()
    }

    pub fn devices(&self) -> Vec<String> {
        lock(&self.links).keys().cloned().collect()
    }

    /// Sends a desired state on the device's link here, unless the link already had this or a newer one.
    pub fn push_desired(&self, row: &DesiredRow) {
        let Some(h) = self.local(&row.device_id) else {
            return;
        };
        if h.sent.fetch_max(row.revision, Ordering::SeqCst) >= row.revision {
            return;
        }
        let desired = Signed {
            payload: row.payload.clone(),
            signature: row.signature.clone(),
        };
        if h.tx.try_send(Down::Desired { desired }).is_err() {
            // The link's queue is full or closed: make it reconnect, which sends the desired state again.
            h.sent.store(0, Ordering::SeqCst);
            h.close.notify_one();
        }
    }

    /// Starts a command on a device; the device's answers arrive on the receiver (a `Result`, or `LogData`
    /// messages closed by `LogEnd`).
    pub async fn command(&self, device: &str, op: Op) -> Result<(String, mpsc::Receiver<Up>)> {
        let id = baetyl_agent::crypto::random_token(8);
        let (tx, rx) = mpsc::channel(256);
        lock(&self.waiters).insert(id.clone(), tx);
        if let Some(h) = self.local(device) {
            if h.tx
                .send(Down::Command { id: id.clone(), op })
                .await
                .is_err()
            {
                lock(&self.waiters).remove(&id);
                return Err(CloudError::Offline(device.to_string()));
            }
            return Ok((id, rx));
        }
        let linked = self
            .store
            .device(device)
            .await?
            .and_then(|d| d.link_owner)
            .is_some();
        if !linked {
            lock(&self.waiters).remove(&id);
            return Err(CloudError::Offline(device.to_string()));
        }
        self.bus
            .publish(Event::Command {
                device: device.to_string(),
                id: id.clone(),
                origin: self.me.clone(),
                op,
            })
            .await?;
        Ok((id, rx))
    }

    /// The operator went away: stop waiting, and stop the command on the device.
    pub async fn finish(&self, device: &str, id: &str, cancel: bool) {
        lock(&self.waiters).remove(id);
        if !cancel {
            return;
        }
        if let Some(h) = self.local(device) {
            let _ = h.tx.send(Down::Cancel { id: id.to_string() }).await;
        } else {
            let _ = self
                .bus
                .publish(Event::Cancel {
                    device: device.to_string(),
                    id: id.to_string(),
                })
                .await;
        }
    }

    /// A device's message answering command `id` (from one of this process's links).
    pub async fn answer(&self, id: &str, msg: Up) {
        let waiter = {
            let mut w = lock(&self.waiters);
            if is_final(&msg) {
                w.remove(id)
            } else {
                w.get(id).cloned()
            }
        };
        if let Some(tx) = waiter {
            let _ = tx.send(msg).await;
            return;
        }
        let origin = {
            let mut f = lock(&self.forwarded);
            if is_final(&msg) {
                f.remove(id)
            } else {
                f.get(id).cloned()
            }
        };
        if let Some(origin) = origin {
            let _ = self
                .bus
                .publish(Event::Answer {
                    origin,
                    id: id.to_string(),
                    msg,
                })
                .await;
        }
    }

    /// Handles the bus's events until it closes.
    pub async fn run_events(self: Arc<Self>, mut rx: tokio::sync::broadcast::Receiver<Event>) {
        loop {
            let event = match rx.recv().await {
                Ok(e) => e,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(
                        "{n} fleet events were dropped under load; resynchronising desired states"
                    );
                    Event::Resync
                }
                Err(_) => return,
            };
            if let Err(e) = self.on_event(event).await {
                tracing::warn!("fleet event: {e}");
            }
        }
    }

    async fn on_event(&self, event: Event) -> Result<()> {
        match event {
            Event::Desired { revision } => {
                for row in self.store.desired_at(revision).await? {
                    self.push_desired(&row);
                }
            }
            Event::Revoked { device } => {
                if let Some(h) = self.local(&device) {
                    tracing::warn!(%device, "device revoked: cutting its link");
                    h.close.notify_one();
                }
            }
            Event::Command {
                device,
                id,
                origin,
                op,
            } => {
                if origin != self.me
                    && let Some(h) = self.local(&device)
                {
                    lock(&self.forwarded).insert(id.clone(), origin);
                    let _ = h.tx.send(Down::Command { id, op }).await;
                }
            }
            Event::Cancel { device, id } => {
                if let Some(h) = self.local(&device) {
                    lock(&self.forwarded).remove(&id);
                    let _ = h.tx.send(Down::Cancel { id }).await;
                }
            }
            Event::Answer { origin, id, msg } => {
                if origin == self.me {
                    let waiter = {
                        let mut w = lock(&self.waiters);
                        if is_final(&msg) {
                            w.remove(&id)
                        } else {
                            w.get(&id).cloned()
                        }
                    };
                    if let Some(tx) = waiter {
                        let _ = tx.send(msg).await;
                    }
                }
            }
            Event::Resync => {
                for device in self.devices() {
                    if let Some(row) = self.store.desired(&device).await? {
                        self.push_desired(&row);
                    }
                }
            }
            Event::Relay { .. } => {}
        }
        Ok(())
    }
}
