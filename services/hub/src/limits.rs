//! Bounds on what clients can make the hub hold, beyond what the engine's listener settings cover: connections
//! per principal, retained messages (count and bytes), and the process's file descriptors.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rmqtt::types::Id;

/// Open connections per principal (user name), from the `ClientConnected` to the `ClientDisconnected` hook.
#[derive(Debug)]
pub struct PrincipalConnections {
    max: usize,
    open: Mutex<HashMap<String, HashSet<Id>>>,
}

impl PrincipalConnections {
    pub fn new(max: usize) -> Self {
        PrincipalConnections {
            max,
            open: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `user` may open one more connection with `client_id`. A connection with the same client id is not
    /// counted: the new one takes its session over and it closes.
    pub fn admits(&self, user: &str, client_id: &str) -> bool {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.get(user).is_none_or(|ids| {
            ids.iter().filter(|id| &*id.client_id != client_id).count() < self.max
        })
    }

    pub fn connected(&self, user: &str, id: &Id) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.entry(user.to_string()).or_default().insert(id.clone());
    }

    pub fn disconnected(&self, user: &str, id: &Id) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(ids) = open.get_mut(user) {
            ids.remove(id);
            if ids.is_empty() {
                open.remove(user);
            }
        }
    }

    /// Open connections of `user`.
    pub fn count(&self, user: &str) -> usize {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.get(user).map_or(0, HashSet::len)
    }
}

/// The retained messages the hub holds, as sizes: a new retained message is admitted only while the count and
/// the total payload bytes stay within the limits. Replacing or clearing a retained message always works (as
/// long as a replacement fits the byte budget).
#[derive(Debug)]
pub struct RetainedBudget {
    max_messages: usize,
    max_bytes: u64,
    state: Mutex<Retained>,
}

#[derive(Debug, Default)]
struct Retained {
    /// topic -> (payload bytes, expiry of messages with a Message Expiry Interval)
    topics: HashMap<String, (u64, Option<Instant>)>,
    bytes: u64,
}

impl Retained {
    fn remove(&mut self, topic: &str) {
        if let Some((size, _)) = self.topics.remove(topic) {
            self.bytes -= size;
        }
    }

    /// Forgets retained messages whose expiry has passed (the store drops them at that time too).
    fn purge_expired(&mut self, now: Instant) {
        let expired: Vec<String> = self
            .topics
            .iter()
            .filter(|(_, (_, exp))| exp.is_some_and(|e| e <= now))
            .map(|(t, _)| t.clone())
            .collect();
        for t in expired {
            self.remove(&t);
        }
    }

    fn fits(&self, topic: &str, size: u64, max_messages: usize, max_bytes: u64) -> bool {
        let old = self.topics.get(topic).map(|(s, _)| *s);
        let count = self.topics.len() + usize::from(old.is_none());
        let bytes = self.bytes - old.unwrap_or(0) + size;
        count <= max_messages && bytes <= max_bytes
    }
}

impl RetainedBudget {
    pub fn new(max_messages: usize, max_bytes: u64) -> Self {
        RetainedBudget {
            max_messages,
            max_bytes,
            state: Mutex::new(Retained::default()),
        }
    }

    /// Decides a retained PUBLISH on `topic` with `size` payload bytes, expiring after `expiry` when set.
    /// `true`: retain it (it is now counted); `false`: the limits are reached, deliver it without retaining.
    /// An empty payload clears the topic and is always admitted.
    pub fn admit(&self, topic: &str, size: u64, expiry: Option<Duration>) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if size == 0 {
            s.remove(topic);
            return true;
        }
        let now = Instant::now();
        if !s.fits(topic, size, self.max_messages, self.max_bytes) {
            s.purge_expired(now);
            if !s.fits(topic, size, self.max_messages, self.max_bytes) {
                return false;
            }
        }
        s.remove(topic);
        s.bytes += size;
        s.topics
            .insert(topic.to_string(), (size, expiry.map(|e| now + e)));
        true
    }

    /// Counts a retained message found in the store at start, whatever the limits (they may have been
    /// lowered since): new ones wait until the total is back under them.
    pub fn count_stored(&self, topic: &str, size: u64, expiry: Option<Duration>) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.remove(topic);
        s.bytes += size;
        s.topics.insert(
            topic.to_string(),
            (size, expiry.map(|e| Instant::now() + e)),
        );
    }

    /// (retained messages, their payload bytes)
    pub fn usage(&self) -> (usize, u64) {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        (s.topics.len(), s.bytes)
    }
}

/// The process's open-file limit after trying to raise the soft limit to the hard one: (soft, hard).
pub fn raise_nofile_limit() -> std::io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we pass, which lives for the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        }
    }
    Ok((lim.rlim_cur, lim.rlim_max))
}

/// Descriptors kept for everything but client connections: listeners, the stores' files, logs, the master
/// API, and some slack.
pub const RESERVED_DESCRIPTORS: u64 = 64;

/// The connection cap that fits the descriptor limit: the configured one, or fewer when the process may not
/// open that many files.
pub fn connection_cap(configured: usize, nofile_soft: u64) -> usize {
    let fit = nofile_soft.saturating_sub(RESERVED_DESCRIPTORS).max(1);
    configured.min(usize::try_from(fit).unwrap_or(usize::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(client: &str, user: &str) -> Id {
        Id::new(1, 1, None, None, client.into(), Some(user.into()))
    }

    #[test]
    fn connections_per_principal() {
        let c = PrincipalConnections::new(2);
        assert!(c.admits("u", "a"));
        let (a, b) = (id("a", "u"), id("b", "u"));
        c.connected("u", &a);
        c.connected("u", &b);
        assert!(!c.admits("u", "c"), "a third client id is over the quota");
        assert!(
            c.admits("u", "a"),
            "a reconnect with an open client id takes it over"
        );
        assert!(c.admits("other", "c"), "quotas are per principal");
        c.disconnected("u", &a);
        assert!(c.admits("u", "c"));
        assert_eq!(c.count("u"), 1);
        c.disconnected("u", &b);
        assert_eq!(c.count("u"), 0);
    }

    #[test]
    fn retained_budget() {
        let r = RetainedBudget::new(2, 10);
        assert!(r.admit("a", 4, None));
        assert!(r.admit("b", 4, None));
        assert!(!r.admit("c", 1, None), "a third topic is over the count");
        assert!(r.admit("a", 6, None), "replacing stays within 10 bytes");
        assert!(!r.admit("b", 5, None), "6 + 5 bytes is over the byte limit");
        assert_eq!(r.usage(), (2, 10));
        assert!(r.admit("a", 0, None), "clearing always works");
        assert!(r.admit("c", 1, None));
        assert_eq!(r.usage(), (2, 5));
        // An expired retained message frees its place.
        let r = RetainedBudget::new(1, 100);
        assert!(r.admit("x", 1, Some(Duration::ZERO)));
        assert!(r.admit("y", 1, None));
        assert_eq!(r.usage(), (1, 1));
    }

    #[test]
    fn connection_cap_fits_descriptors() {
        assert_eq!(
            connection_cap(10_000, 1024),
            1024 - RESERVED_DESCRIPTORS as usize
        );
        assert_eq!(connection_cap(100, 1024), 100);
        assert_eq!(connection_cap(100, 10), 1);
    }

    #[test]
    fn nofile_is_raised_to_the_hard_limit() {
        let (soft, hard) = raise_nofile_limit().unwrap();
        assert_eq!(soft, hard);
    }
}
