//! Who may connect and what they may do: our own rmqtt hook handlers, so that no engine plugin holds or logs
//! the credentials.
//!
//! - `ClientAuthenticate`: a password principal must send its password (compared in constant time); a
//!   certificate principal is accepted only when the connection presented a client certificate that the TLS
//!   listener verified and whose common name is the principal's username. The plain TCP and WS listeners never
//!   collect certificates, so a certificate principal cannot be claimed there.
//! - `ClientSubscribeCheckAcl`: a subscription is granted when one `sub` permission covers the whole filter.
//! - `MessagePublishCheckAcl`: a topic with a wildcard or NUL, or a payload over `message.length.max`, closes
//!   the connection (MQTT says a malformed PUBLISH is a protocol error); a topic without `pub` permission is
//!   dropped (MQTT 5: reason code 0x87) and counted. Allowed messages are handed to the routing rules.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use rmqtt::codec::v5::SubscribeAckReason;
use rmqtt::context::ServerContext;
use rmqtt::hook::{Handler, HookResult, Parameter, ReturnType};
use rmqtt::types::{AuthResult, PublishAclResult, SubscribeAclResult};
use subtle::ConstantTimeEq;

use crate::config::{Action, HubConfig};
use crate::routing::Router;
use crate::topic;

/// The checks a principal passes and the filters it may use.
#[derive(Debug)]
struct Account {
    /// `None`: a certificate principal.
    password: Option<Vec<u8>>,
    publish: Vec<String>,
    subscribe: Vec<String>,
}

/// Counters reported to the master and exposed by [`crate::RunningHub::stats`].
#[derive(Debug, Default)]
pub struct Counters {
    pub auth_accepted: AtomicU64,
    pub auth_refused: AtomicU64,
    pub publish_denied: AtomicU64,
    pub publish_malformed: AtomicU64,
    pub subscribe_denied: AtomicU64,
    pub routed: AtomicU64,
}

impl Counters {
    pub fn to_json(&self) -> serde_json::Value {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        serde_json::json!({
            "auth_accepted": g(&self.auth_accepted),
            "auth_refused": g(&self.auth_refused),
            "publish_denied": g(&self.publish_denied),
            "publish_malformed": g(&self.publish_malformed),
            "subscribe_denied": g(&self.subscribe_denied),
            "routed": g(&self.routed),
        })
    }
}

/// Principals and permissions, built once from the config.
#[derive(Debug)]
pub struct Access {
    accounts: HashMap<String, Account>,
    max_payload: usize,
}

impl Access {
    pub fn new(cfg: &HubConfig) -> Self {
        let accounts = cfg
            .principals
            .iter()
            .map(|p| {
                let filters = |a: Action| -> Vec<String> {
                    p.permissions
                        .iter()
                        .filter(|perm| perm.action == a)
                        .flat_map(|perm| perm.permit.iter().cloned())
                        .collect()
                };
                (
                    p.username.clone(),
                    Account {
                        password: p.password.as_ref().map(|s| s.expose().as_bytes().to_vec()),
                        publish: filters(Action::Pub),
                        subscribe: filters(Action::Sub),
                    },
                )
            })
            .collect();
        Access {
            accounts,
            max_payload: usize::try_from(cfg.message.length.max.0).unwrap_or(usize::MAX),
        }
    }

    /// Decides a CONNECT. `cert_cn` is the common name of a verified client certificate, if any.
    pub fn authenticate(
        &self,
        username: Option<&str>,
        password: Option<&[u8]>,
        cert_cn: Option<&str>,
    ) -> bool {
        let Some(user) = username else { return false };
        let Some(account) = self.accounts.get(user) else {
            return false;
        };
        match &account.password {
            Some(expected) => {
                password.is_some_and(|given| bool::from(expected.as_slice().ct_eq(given)))
            }
            None => cert_cn == Some(user),
        }
    }

    pub fn may_publish(&self, username: Option<&str>, topic_name: &str) -> bool {
        self.account(username)
            .is_some_and(|a| a.publish.iter().any(|f| topic::matches(f, topic_name)))
    }

    pub fn may_subscribe(&self, username: Option<&str>, filter: &str) -> bool {
        self.account(username)
            .is_some_and(|a| a.subscribe.iter().any(|p| topic::covers(p, filter)))
    }

    fn account(&self, username: Option<&str>) -> Option<&Account> {
        username.and_then(|u| self.accounts.get(u))
    }
}

/// v1's client id rule: `^[0-9A-Za-z_-]{1,128}$`.
pub fn valid_client_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The hub's single hook handler; registered for every hook type it decides.
#[derive(Clone)]
pub struct HubHandler {
    pub access: Arc<Access>,
    pub counters: Arc<Counters>,
    pub router: Arc<Router>,
    pub scx: ServerContext,
}

#[async_trait]
impl Handler for HubHandler {
    async fn hook(&self, param: &Parameter, acc: Option<HookResult>) -> ReturnType {
        match param {
            Parameter::ClientAuthenticate(ci) => {
                // A client id outside v1's rule is refused here (CONNACK "not authorized"): the engine offers no
                // earlier hook that can refuse a connection; ids over 128 bytes get "identifier rejected" from it.
                let ok = valid_client_id(&ci.id().client_id)
                    && self.access.authenticate(
                        ci.username().map(|u| &**u),
                        ci.password().map(|p| &p[..]),
                        ci.cert().and_then(|c| c.common_name.as_deref()),
                    );
                let result = if ok {
                    self.counters.auth_accepted.fetch_add(1, Ordering::Relaxed);
                    AuthResult::Allow(false, None)
                } else {
                    self.counters.auth_refused.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(
                        client_id = %ci.id().client_id,
                        username = ci.username().map(|u| &**u).unwrap_or(""),
                        remote = ?ci.ipaddress(),
                        "connection refused: not authorized"
                    );
                    AuthResult::NotAuthorized
                };
                (false, Some(HookResult::AuthResult(result)))
            }
            Parameter::ClientSubscribeCheckAcl(s, sub) => {
                let filter: &str = &sub.topic_filter;
                let allowed = topic::validate_filter(filter).is_ok()
                    && self.access.may_subscribe(s.id.username.as_deref(), filter);
                let result = if allowed {
                    SubscribeAclResult::new_success(sub.opts.qos(), None)
                } else {
                    self.counters
                        .subscribe_denied
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(client_id = %s.id.client_id, filter, "subscribe denied");
                    SubscribeAclResult::new_failure(SubscribeAckReason::NotAuthorized)
                };
                (false, Some(HookResult::SubscribeAclResult(result)))
            }
            Parameter::MessagePublishCheckAcl(s, publish) => {
                let name: &str = &publish.topic;
                if let Err(e) = topic::validate_name(name) {
                    self.counters
                        .publish_malformed
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::info!(client_id = %s.id.client_id, "publish refused, closing the connection: {e}");
                    let r = PublishAclResult::rejected(true, Some(e.to_string().into()));
                    return (false, Some(HookResult::PublishAclResult(r)));
                }
                if publish.payload.len() > self.access.max_payload {
                    self.counters
                        .publish_malformed
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::info!(
                        client_id = %s.id.client_id,
                        size = publish.payload.len(),
                        "publish refused, closing the connection: payload over message.length.max"
                    );
                    let r = PublishAclResult::rejected(true, Some("payload too large".into()));
                    return (false, Some(HookResult::PublishAclResult(r)));
                }
                if !self.access.may_publish(s.id.username.as_deref(), name) {
                    self.counters.publish_denied.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(client_id = %s.id.client_id, topic = name, "publish denied");
                    let r = PublishAclResult::rejected(false, None);
                    return (false, Some(HookResult::PublishAclResult(r)));
                }
                if !self.router.is_empty() {
                    let routes = self
                        .router
                        .targets(name, crate::broker::qos_u8(publish.qos));
                    if !routes.is_empty() {
                        self.counters
                            .routed
                            .fetch_add(routes.len() as u64, Ordering::Relaxed);
                        let scx = self.scx.clone();
                        tokio::spawn(crate::broker::republish(scx, routes, (*publish).clone()));
                    }
                }
                (
                    false,
                    Some(HookResult::PublishAclResult(PublishAclResult::allow())),
                )
            }
            _ => (true, acc),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baetyl_sdk::config::ConfigFile;

    fn access(yaml: &str) -> Access {
        let cfg = HubConfig::parse(yaml, std::path::Path::new("t.yml")).unwrap();
        Access::new(&cfg)
    }

    #[test]
    fn passwords_and_certificates() {
        let a = access(
            "listen: [tcp://127.0.0.1:0, ssl://127.0.0.1:0]\n\
             certificate: {ca: ca.pem, cert: s.pem, key: s.key}\n\
             principals:\n\
             - {username: u, password: pw}\n\
             - {username: dev}\n",
        );
        assert!(a.authenticate(Some("u"), Some(b"pw"), None));
        assert!(!a.authenticate(Some("u"), Some(b"pW"), None));
        assert!(!a.authenticate(Some("u"), None, None));
        assert!(!a.authenticate(Some("u"), Some(b"pw2"), None));
        assert!(!a.authenticate(None, Some(b"pw"), None));
        assert!(!a.authenticate(Some("nobody"), Some(b"pw"), None));
        // A certificate principal needs the verified certificate's CN.
        assert!(a.authenticate(Some("dev"), None, Some("dev")));
        assert!(!a.authenticate(Some("dev"), None, None));
        assert!(!a.authenticate(Some("dev"), Some(b""), None));
        assert!(!a.authenticate(Some("dev"), None, Some("other")));
    }

    #[test]
    fn permissions() {
        let a = access(
            "principals:\n\
             - {username: u, password: pw, permissions: [{action: pub, permit: ['a/#', 'é/+']}, {action: sub, permit: ['t/#', '$SYS/#']}]}\n",
        );
        assert!(a.may_publish(Some("u"), "a/b"));
        assert!(a.may_publish(Some("u"), "é/x"));
        assert!(!a.may_publish(Some("u"), "b"));
        assert!(!a.may_publish(None, "a/b"));
        assert!(a.may_subscribe(Some("u"), "t/+"));
        assert!(a.may_subscribe(Some("u"), "$SYS/brokers/#"));
        assert!(!a.may_subscribe(Some("u"), "#"));
        assert!(!a.may_subscribe(Some("u"), "a/b"));
    }

    #[test]
    fn client_ids() {
        assert!(valid_client_id("abc_DEF-123"));
        assert!(!valid_client_id(""));
        assert!(!valid_client_id("a b"));
        assert!(!valid_client_id("é"));
        assert!(!valid_client_id(&"x".repeat(129)));
    }
}
