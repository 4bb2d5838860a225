//! Shared subscriptions (`$share/<group>/<filter>`, on MQTT 5 and, as mosquitto does, on 3.1.1): each message
//! goes to one member of the group, in turn, preferring members that are connected.

use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use rmqtt::context::ServerContext;
use rmqtt::subscribe::SharedSubscription;
use rmqtt::types::{
    ClientId, Id, IsOnline, NodeId, SharedGroup, SubscriptionIdentifier, SubscriptionOptions,
    TopicName,
};

/// Round robin over a group's members. (The engine's default picks nobody: it leaves the choice to a plugin.)
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl RoundRobin {
    /// The member to deliver to: the next one in turn that is connected, or the next one in turn when none is
    /// (its session queues the message).
    fn pick(&self, n: usize, online: impl Fn(usize) -> bool) -> Option<(usize, bool)> {
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        (0..n)
            .map(|k| (start + k) % n)
            .find(|&i| online(i))
            .map(|i| (i, true))
            .or(Some((start, false)))
    }
}

type Member = (
    NodeId,
    ClientId,
    SubscriptionOptions,
    Option<Vec<SubscriptionIdentifier>>,
    Option<IsOnline>,
);

#[async_trait]
impl SharedSubscription for RoundRobin {
    fn is_supported(&self) -> bool {
        true
    }

    async fn choice(
        &self,
        _scx: &ServerContext,
        _group: &SharedGroup,
        _publisher_id: &Id,
        _topic: &TopicName,
        members: &[Member],
    ) -> Option<(usize, IsOnline)> {
        self.pick(members.len(), |i| members[i].4.unwrap_or(true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turns_prefer_connected_members() {
        let rr = RoundRobin::default();
        let picks: Vec<usize> = (0..6)
            .filter_map(|_| rr.pick(3, |_| true).map(|(i, _)| i))
            .collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        let rr = RoundRobin::default();
        for _ in 0..3 {
            assert_eq!(rr.pick(3, |i| i == 1), Some((1, true)));
        }
        assert!(matches!(rr.pick(2, |_| false), Some((_, false))));
        assert_eq!(rr.pick(0, |_| true), None);
    }
}
