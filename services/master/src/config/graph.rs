//! The dependency graph of an application's services: the order to start them in (`depends_on`), and what
//! an update changes (which services keep running, restart, stop or start).

use std::collections::{BTreeMap, BTreeSet};

use super::Application;

/// Services that depend on each other in a circle: no order can start them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "services {} depend on each other in a cycle (key `depends_on`); remove one of the dependencies",
    .services.iter().map(|s| format!("`{s}`")).collect::<Vec<_>>().join(", ")
)]
pub struct Cycle {
    /// The services on the cycle and those waiting on them, by name.
    pub services: Vec<String>,
}

impl Application {
    /// Service names in an order where every service comes after what it depends on (ties by name).
    /// A cycle is an error naming the services on it.
    pub fn start_order(&self) -> Result<Vec<String>, Cycle> {
        let mut indegree: BTreeMap<&str, usize> =
            self.services.keys().map(|k| (k.as_str(), 0)).collect();
        for (name, svc) in &self.services {
            let deps: BTreeSet<&str> = svc.depends_on.iter().map(String::as_str).collect();
            if let Some(d) = indegree.get_mut(name.as_str()) {
                *d = deps
                    .iter()
                    .filter(|d| self.services.contains_key(**d))
                    .count();
            }
        }
        let mut ready: BTreeSet<&str> = indegree
            .iter()
            .filter(|(_, d)| **d == 0)
            .map(|(k, _)| *k)
            .collect();
        let mut order = Vec::with_capacity(self.services.len());
        while let Some(next) = ready.pop_first() {
            order.push(next.to_string());
            for (name, svc) in &self.services {
                if svc.depends_on.iter().any(|d| d == next)
                    && let Some(d) = indegree.get_mut(name.as_str())
                {
                    *d = d.saturating_sub(1);
                    if *d == 0 {
                        ready.insert(name.as_str());
                    }
                }
            }
        }
        if order.len() < self.services.len() {
            let services = indegree
                .keys()
                .filter(|k| !order.iter().any(|o| o == *k))
                .map(|k| k.to_string())
                .collect();
            return Err(Cycle { services });
        }
        Ok(order)
    }

    /// The order to stop services in: the reverse of the start order. Names in `running` that the
    /// application does not know (left from an earlier application) stop first.
    pub fn stop_order(&self, running: &[String]) -> Vec<String> {
        let mut order: Vec<String> = running
            .iter()
            .filter(|r| !self.services.contains_key(*r))
            .cloned()
            .collect();
        order.extend(self.start_order().unwrap_or_default().into_iter().rev());
        order
    }
}

/// What an app update does to each service.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct AppDiff {
    pub unchanged: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
    pub added: Vec<String>,
}

/// A service is unchanged only if its own config and every volume it uses are unchanged.
pub fn diff(old: &Application, new: &Application) -> AppDiff {
    let mut d = AppDiff::default();
    for (name, spec) in &old.services {
        match new.services.get(name) {
            None => d.removed.push(name.clone()),
            Some(n) if n == spec && new.volumes_of(name) == old.volumes_of(name) => {
                d.unchanged.push(name.clone())
            }
            Some(_) => d.changed.push(name.clone()),
        }
    }
    for name in new.services.keys() {
        if !old.services.contains_key(name) {
            d.added.push(name.clone());
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_app as app;

    #[test]
    fn cycle_names_the_services_on_it() {
        let e = app(
            "services:\n  a: {image: x, depends_on: [b]}\n  b: {image: x, depends_on: [c]}\n  c: {image: x, depends_on: [a]}\n  d: {image: x}\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("cycle"), "{e}");
        assert!(
            e.contains("`a`") && e.contains("`b`") && e.contains("`c`") && !e.contains("`d`"),
            "{e}"
        );
    }

    #[test]
    fn start_order_is_topological_then_by_name() {
        let a = app(
            "services:\n  web: {image: x, depends_on: [db, cache]}\n  db: {image: x}\n  cache: {image: x, depends_on: [db]}\n  aux: {image: x}\n",
        )
        .unwrap();
        assert_eq!(a.start_order().unwrap(), vec!["aux", "db", "cache", "web"]);
    }

    #[test]
    fn diff_keeps_services_whose_config_and_volumes_are_unchanged() {
        let old = app(
            "services:\n  a: {image: x}\n  b: {image: y, volumes: [v:/v]}\n  c: {image: z}\n  gone: {image: g}\nvolumes:\n  v: {path: p1}\n",
        )
        .unwrap();
        let new = app(
            "services:\n  a: {image: x}\n  b: {image: y, volumes: [v:/v]}\n  c: {image: z2}\n  fresh: {image: f}\nvolumes:\n  v: {path: p2}\n",
        )
        .unwrap();
        let d = diff(&old, &new);
        assert_eq!(d.unchanged, vec!["a"]);
        assert_eq!(d.changed, vec!["b", "c"]);
        assert_eq!(d.removed, vec!["gone"]);
        assert_eq!(d.added, vec!["fresh"]);
    }

    #[test]
    fn stop_order_is_the_reverse_and_strangers_go_first() {
        let a = app("services:\n  web: {image: x, depends_on: [db]}\n  db: {image: x}\n").unwrap();
        assert_eq!(
            a.stop_order(&["db".into(), "old".into(), "web".into()]),
            vec!["old", "web", "db"]
        );
    }
}
