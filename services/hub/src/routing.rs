//! v1's `subscriptions:` routing rules: every message published on `source.topic` is republished on
//! `target.topic` at the lowest of the message's, the source's and the target's QoS.
//!
//! Rules chain (a routed message is routed again by the rules whose source matches its new topic); a rule set
//! that could loop is rejected when the config is loaded ([`find_loop`]), so chains are finite.

use crate::config::Route;
use crate::topic;

/// A rule in the form the broker uses.
#[derive(Debug, Clone)]
pub struct Rule {
    pub source: String,
    pub source_qos: u8,
    pub target: String,
    pub target_qos: u8,
}

/// The compiled rule set.
#[derive(Debug, Clone, Default)]
pub struct Router {
    rules: Vec<Rule>,
}

/// Rules longer than this cannot exist without a loop in any config we accept; kept as a second guard.
const MAX_HOPS: usize = 64;

impl Router {
    pub fn new(routes: &[Route]) -> Self {
        Router {
            rules: routes
                .iter()
                .map(|r| Rule {
                    source: r.source.topic.clone(),
                    source_qos: r.source.qos,
                    target: r.target.topic.clone(),
                    target_qos: r.target.qos,
                })
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Every (topic, qos) a message published on `topic` at `qos` must also be delivered on, chained rules
    /// included, in rule order.
    pub fn targets(&self, topic: &str, qos: u8) -> Vec<(String, u8)> {
        let mut out = Vec::new();
        let mut pending = vec![(topic.to_string(), qos, 0usize)];
        while let Some((t, q, hops)) = pending.pop() {
            if hops >= MAX_HOPS {
                continue;
            }
            for rule in self.rules.iter().rev() {
                if topic::matches(&rule.source, &t) {
                    let q2 = q.min(rule.source_qos).min(rule.target_qos);
                    pending.push((rule.target.clone(), q2, hops + 1));
                }
            }
            if hops > 0 {
                out.push((t, q));
            }
        }
        out
    }
}

/// Finds a cycle among the rules: rule `i` feeds rule `j` when `i`'s target topic matches `j`'s source filter.
/// Returns the rule indexes along the cycle.
pub fn find_loop(routes: &[Route]) -> Option<Vec<usize>> {
    let n = routes.len();
    let edges: Vec<Vec<usize>> = routes
        .iter()
        .map(|r| {
            (0..n)
                .filter(|&j| topic::matches(&routes[j].source.topic, &r.target.topic))
                .collect()
        })
        .collect();
    // 0 = unvisited, 1 = on the current path, 2 = done.
    let mut state = vec![0u8; n];
    let mut path = Vec::new();
    fn visit(
        i: usize,
        edges: &[Vec<usize>],
        state: &mut [u8],
        path: &mut Vec<usize>,
    ) -> Option<Vec<usize>> {
        state[i] = 1;
        path.push(i);
        for &j in &edges[i] {
            if state[j] == 1 {
                let start = path.iter().position(|&p| p == j).unwrap_or(0);
                return Some(path[start..].to_vec());
            }
            if state[j] == 0
                && let Some(c) = visit(j, edges, state, path)
            {
                return Some(c);
            }
        }
        path.pop();
        state[i] = 2;
        None
    }
    for i in 0..n {
        if state[i] == 0
            && let Some(c) = visit(i, &edges, &mut state, &mut path)
        {
            return Some(c);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RouteEnd;

    fn route(s: &str, sq: u8, t: &str, tq: u8) -> Route {
        Route {
            source: RouteEnd {
                topic: s.into(),
                qos: sq,
            },
            target: RouteEnd {
                topic: t.into(),
                qos: tq,
            },
        }
    }

    #[test]
    fn targets_chain_with_min_qos() {
        let r = Router::new(&[
            route("t", 1, "t/topic", 1),
            route("t/+", 2, "u", 0),
            route("x", 2, "y", 2),
        ]);
        assert_eq!(
            r.targets("t", 2),
            vec![("t/topic".to_string(), 1), ("u".to_string(), 0)]
        );
        assert_eq!(
            r.targets("t", 0),
            vec![("t/topic".to_string(), 0), ("u".to_string(), 0)]
        );
        assert!(r.targets("nothing", 1).is_empty());
        assert_eq!(r.targets("x", 2), vec![("y".to_string(), 2)]);
    }

    #[test]
    fn loops_are_found() {
        assert_eq!(
            find_loop(&[route("a", 0, "b", 0), route("b", 0, "a", 0)]),
            Some(vec![0, 1])
        );
        assert_eq!(find_loop(&[route("#", 0, "b", 0)]), Some(vec![0]));
        assert_eq!(
            find_loop(&[route("a", 0, "b", 0), route("b", 0, "c", 0)]),
            None
        );
        assert_eq!(find_loop(&[]), None);
    }
}
