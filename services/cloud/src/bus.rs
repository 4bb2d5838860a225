//! Events between cloud processes: new desired states, revocations, and commands and answers for devices linked
//! to another process. With SQLite (one process) they stay in the process; with PostgreSQL they travel as
//! `NOTIFY baetyl_fleet` (every process, this one included, receives them through `LISTEN`), and a message too
//! large for a notification goes through the `relay` table with only its id notified.

use std::time::Duration;

use baetyl_agent::proto::{Op, Up};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::error::Result;
use crate::store::{Backend, Store};

const CHANNEL: &str = "baetyl_fleet";
/// PostgreSQL refuses notification payloads of 8000 bytes or more.
const MAX_NOTIFY: usize = 7000;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Event {
    /// Desired states were issued with this revision: processes push them to the devices they hold.
    Desired {
        revision: i64,
    },
    /// Cut this device's link now.
    Revoked {
        device: String,
    },
    /// A command for a device, asked through process `origin`.
    Command {
        device: String,
        id: String,
        origin: String,
        op: Op,
    },
    Cancel {
        device: String,
        id: String,
    },
    /// A device's answer to command `id`, for process `origin`.
    Answer {
        origin: String,
        id: String,
        msg: Up,
    },
    /// A large event kept in the relay table, for process `origin` (or every process when empty).
    Relay {
        origin: String,
        key: String,
    },
    /// The listener reconnected: notifications may have been missed, resynchronise.
    Resync,
}

#[derive(Clone)]
pub struct Bus {
    tx: broadcast::Sender<Event>,
    store: Store,
    me: String,
}

impl Bus {
    /// Starts the bus; with PostgreSQL, a listener task that lives until `shutdown` flips.
    pub async fn start(
        store: Store,
        me: String,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Result<Bus> {
        let (tx, _) = broadcast::channel(4096);
        let bus = Bus {
            tx: tx.clone(),
            store: store.clone(),
            me: me.clone(),
        };
        if store.backend() == Backend::Postgres {
            let mut listener = sqlx::postgres::PgListener::connect(store.url())
                .await
                .map_err(|e| {
                    crate::error::CloudError::Database(format!("LISTEN connection: {e}"))
                })?;
            listener.listen(CHANNEL).await.map_err(|e| {
                crate::error::CloudError::Database(format!("LISTEN {CHANNEL}: {e}"))
            })?;
            let bus2 = bus.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        r = listener.try_recv() => match r {
                            Ok(Some(n)) => bus2.received(n.payload()).await,
                            Ok(None) => {
                                tracing::warn!("the PostgreSQL notification connection was lost; reconnecting");
                                let _ = tx.send(Event::Resync);
                            }
                            Err(e) => {
                                tracing::warn!("PostgreSQL notifications: {e}");
                                tokio::time::sleep(Duration::from_secs(1)).await;
                            }
                        },
                        _ = baetyl_agent::agent::stopped(&mut shutdown) => return,
                    }
                }
            });
        }
        Ok(bus)
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }

    async fn received(&self, payload: &str) {
        let event: Event = match serde_json::from_str(payload) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!("ignoring a fleet notification that is not understood: {e}");
                return;
            }
        };
        let event = match event {
            Event::Relay { origin, key } => {
                if !origin.is_empty() && origin != self.me {
                    return;
                }
                match self.store.relay_get(&key).await {
                    Ok(Some(text)) => match serde_json::from_str(&text) {
                        Ok(e) => e,
                        Err(e) => {
                            tracing::warn!("relayed event {key} is not understood: {e}");
                            return;
                        }
                    },
                    Ok(None) => return,
                    Err(e) => {
                        tracing::warn!("cannot read relayed event {key}: {e}");
                        return;
                    }
                }
            }
            e => e,
        };
        let _ = self.tx.send(event);
    }

    /// Sends an event to every process (this one included).
    pub async fn publish(&self, event: Event) -> Result<()> {
        if self.store.backend() == Backend::Sqlite {
            let _ = self.tx.send(event);
            return Ok(());
        }
        let text = serde_json::to_string(&event).unwrap_or_default();
        if text.len() <= MAX_NOTIFY {
            return self.store.notify(CHANNEL, &text).await;
        }
        // An answer matters to one process only; anything else to all.
        let origin = match &event {
            Event::Answer { origin, .. } => origin.clone(),
            _ => String::new(),
        };
        let key = baetyl_agent::crypto::random_token(12);
        self.store.relay_put(&key, &text).await?;
        let reference = serde_json::to_string(&Event::Relay { origin, key }).unwrap_or_default();
        self.store.notify(CHANNEL, &reference).await
    }
}
