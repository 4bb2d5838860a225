//! Who may connect and what they may do: our own rmqtt hook handlers, so that no engine plugin holds or logs
//! the credentials.
//!
//! - `ClientAuthenticate`: a password principal must send its password (compared in constant time); a
//!   certificate principal is accepted only when the connection presented a client certificate that the TLS
//!   listener verified and whose common name is the principal's username. The plain TCP and WS listeners never
//!   collect certificates, so a certificate principal cannot be claimed there. The CONNECT's will must pass the
//!   principal's publish permissions (never `$SYS/...`), its client id the configured rule, and the principal
//!   must be under its connection quota; each refusal has its own CONNACK code. (That a client id's session
//!   belongs to the principal that made it is enforced by the engine under the client id's lock:
//!   `session_owner_check`.)
//! - `ClientConnected` / `ClientDisconnected`: connections per principal, for the quota.
//! - `ClientSubscribeCheckAcl`: a subscription is granted when one `sub` permission covers the whole filter;
//!   an invalid filter is refused as such (MQTT 5: 0x8F).
//! - `MessagePublishCheckAcl` (also for wills, when published): a payload over `message.length.max` is refused
//!   (3.1.1: the connection closes; MQTT 5: PUBACK 0x97), a topic without `pub` permission or under `$SYS/` is
//!   dropped (MQTT 5: 0x87) and counted, a retained message over the retained limits is delivered without being
//!   retained. Allowed messages are handed to the routing rules. Malformed topics never get here: the engine's
//!   codec closes the connection first.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use rmqtt::codec::v3::ConnectAckReason as AckV3;
use rmqtt::codec::v5::{ConnectAckReason as AckV5, PublishAckReason, SubscribeAckReason};
use rmqtt::context::ServerContext;
use rmqtt::hook::{Handler, HookResult, Parameter, ReturnType};
use rmqtt::types::{
    AuthResult, ConnectAckReason, ConnectInfo, LastWill, PublishAclResult, SubscribeAclResult,
};
use subtle::ConstantTimeEq;

use crate::config::{Action, ClientIdRule, HubConfig};
use crate::limits::{PrincipalConnections, RetainedBudget};
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
    /// CONNECTs refused for their will (topic not permitted, `$SYS/`, payload too large).
    pub will_refused: AtomicU64,
    /// CONNECTs refused because the principal had `limits.connections_per_principal` open.
    pub quota_refused: AtomicU64,
    /// CONNECTs refused for a client id outside `client_id: v1`.
    pub client_id_refused: AtomicU64,
    pub publish_denied: AtomicU64,
    pub publish_malformed: AtomicU64,
    pub subscribe_denied: AtomicU64,
    /// Retained PUBLISHes delivered without being retained: the retained limits were reached.
    pub retained_refused: AtomicU64,
    pub routed: AtomicU64,
}

impl Counters {
    pub fn to_json(&self) -> serde_json::Value {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        serde_json::json!({
            "auth_accepted": g(&self.auth_accepted),
            "auth_refused": g(&self.auth_refused),
            "will_refused": g(&self.will_refused),
            "quota_refused": g(&self.quota_refused),
            "client_id_refused": g(&self.client_id_refused),
            "publish_denied": g(&self.publish_denied),
            "publish_malformed": g(&self.publish_malformed),
            "subscribe_denied": g(&self.subscribe_denied),
            "retained_refused": g(&self.retained_refused),
            "routed": g(&self.routed),
        })
    }
}

/// Why a CONNECT is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Unknown principal, wrong password, certificate principal without its certificate.
    NotAuthorized,
    /// The client id breaks `client_id: v1`.
    ClientId,
    /// The will's topic is not one the principal may publish to (or is under `$SYS/`).
    WillNotAuthorized,
    /// The will's payload is over `message.length.max`.
    WillTooLarge,
    /// The principal has `limits.connections_per_principal` connections open.
    Quota,
}

impl Refusal {
    /// The CONNACK code for this refusal, in the client's protocol version.
    pub fn ack(self, v5: bool) -> ConnectAckReason {
        if v5 {
            ConnectAckReason::V5(match self {
                Refusal::NotAuthorized | Refusal::WillNotAuthorized => AckV5::NotAuthorized,
                Refusal::ClientId => AckV5::ClientIdentifierNotValid,
                Refusal::WillTooLarge => AckV5::PacketTooLarge,
                Refusal::Quota => AckV5::QuotaExceeded,
            })
        } else {
            ConnectAckReason::V3(match self {
                Refusal::NotAuthorized | Refusal::WillNotAuthorized | Refusal::WillTooLarge => {
                    AckV3::NotAuthorized
                }
                Refusal::ClientId => AckV3::IdentifierRejected,
                Refusal::Quota => AckV3::ServiceUnavailable,
            })
        }
    }

    fn reason(self) -> &'static str {
        match self {
            Refusal::NotAuthorized => "not authorized",
            Refusal::ClientId => "client id outside `client_id: v1`",
            Refusal::WillNotAuthorized => "will topic not permitted",
            Refusal::WillTooLarge => "will payload over message.length.max",
            Refusal::Quota => "limits.connections_per_principal reached",
        }
    }
}

/// What a CONNECT asks for, as the checks need it.
#[derive(Debug, Clone, Copy)]
pub struct ConnectRequest<'a> {
    pub username: Option<&'a str>,
    pub password: Option<&'a [u8]>,
    /// The common name of a verified client certificate.
    pub cert_cn: Option<&'a str>,
    pub client_id: &'a str,
    /// The will's topic and payload size.
    pub will: Option<(&'a str, usize)>,
}

/// Principals and permissions, built once from the config.
#[derive(Debug)]
pub struct Access {
    accounts: HashMap<String, Account>,
    max_payload: usize,
    client_id: ClientIdRule,
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
            client_id: cfg.client_id,
        }
    }

    /// Decides a CONNECT (everything but the connection quota and the session owner).
    pub fn check_connect(&self, c: &ConnectRequest<'_>) -> Result<(), Refusal> {
        if !self.authenticate(c.username, c.password, c.cert_cn) {
            return Err(Refusal::NotAuthorized);
        }
        if self.client_id == ClientIdRule::V1 && !valid_v1_client_id(c.client_id) {
            return Err(Refusal::ClientId);
        }
        if let Some((will_topic, size)) = c.will {
            if size > self.max_payload {
                return Err(Refusal::WillTooLarge);
            }
            if !self.may_publish(c.username, will_topic) {
                return Err(Refusal::WillNotAuthorized);
            }
        }
        Ok(())
    }

    /// Whether the credentials name a principal. `cert_cn` is the common name of a verified client certificate.
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

    /// Whether the principal may publish on `topic_name`. Nobody publishes under `$SYS/`: the hub's own.
    pub fn may_publish(&self, username: Option<&str>, topic_name: &str) -> bool {
        !topic_name.starts_with("$SYS/")
            && self
                .account(username)
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

/// v1's client id rule (`client_id: v1`): `^[0-9A-Za-z_-]{1,128}$`.
pub fn valid_v1_client_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn will_of(ci: &ConnectInfo) -> Option<(&str, usize)> {
    ci.last_will().map(|w| match w {
        LastWill::V3(w) => (&*w.topic, w.message.len()),
        LastWill::V5(w) => (&*w.topic, w.message.len()),
    })
}

/// The hub's single hook handler; registered for every hook type it decides.
#[derive(Clone)]
pub struct HubHandler {
    pub access: Arc<Access>,
    pub counters: Arc<Counters>,
    pub router: Arc<Router>,
    pub connections: Arc<PrincipalConnections>,
    pub retained: Arc<RetainedBudget>,
    /// How long routed copies may wait for subscribers (`limits.message_expiry`).
    pub message_expiry: Duration,
    pub scx: ServerContext,
}

impl HubHandler {
    fn authenticate(&self, ci: &ConnectInfo) -> AuthResult {
        let req = ConnectRequest {
            username: ci.username().map(|u| &**u),
            password: ci.password().map(|p| &p[..]),
            cert_cn: ci.cert().and_then(|c| c.common_name.as_deref()),
            client_id: &ci.id().client_id,
            will: will_of(ci),
        };
        let user = req.username.unwrap_or("");
        let decision = self.access.check_connect(&req).and_then(|()| {
            if self.connections.admits(user, req.client_id) {
                Ok(())
            } else {
                Err(Refusal::Quota)
            }
        });
        match decision {
            Ok(()) => {
                self.counters.auth_accepted.fetch_add(1, Ordering::Relaxed);
                AuthResult::Allow(false, None)
            }
            Err(refusal) => {
                let counter = match refusal {
                    Refusal::NotAuthorized => &self.counters.auth_refused,
                    Refusal::ClientId => &self.counters.client_id_refused,
                    Refusal::WillNotAuthorized | Refusal::WillTooLarge => {
                        &self.counters.will_refused
                    }
                    Refusal::Quota => &self.counters.quota_refused,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    client_id = %req.client_id,
                    username = user,
                    remote = ?ci.ipaddress(),
                    "connection refused: {}",
                    refusal.reason()
                );
                AuthResult::Refused(refusal.ack(ci.proto_ver() == 5))
            }
        }
    }
}

#[async_trait]
impl Handler for HubHandler {
    async fn hook(&self, param: &Parameter, acc: Option<HookResult>) -> ReturnType {
        match param {
            Parameter::ClientAuthenticate(ci) => {
                (false, Some(HookResult::AuthResult(self.authenticate(ci))))
            }
            Parameter::ClientConnected(s) => {
                if let Some(user) = s.id.username.as_deref() {
                    self.connections.connected(user, &s.id);
                }
                (true, acc)
            }
            Parameter::ClientDisconnected(s, _) => {
                if let Some(user) = s.id.username.as_deref() {
                    self.connections.disconnected(user, &s.id);
                }
                (true, acc)
            }
            Parameter::ClientSubscribeCheckAcl(s, sub) => {
                let filter: &str = &sub.topic_filter;
                let result = if topic::validate_filter(filter).is_err() {
                    SubscribeAclResult::new_failure(SubscribeAckReason::TopicFilterInvalid)
                } else if self.access.may_subscribe(s.id.username.as_deref(), filter) {
                    SubscribeAclResult::new_success(sub.opts.qos(), None)
                } else {
                    SubscribeAclResult::new_failure(SubscribeAckReason::NotAuthorized)
                };
                if result.failure() {
                    self.counters
                        .subscribe_denied
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(client_id = %s.id.client_id, filter, "subscribe denied");
                }
                (false, Some(HookResult::SubscribeAclResult(result)))
            }
            Parameter::MessagePublishCheckAcl(s, publish) => {
                let name: &str = &publish.topic;
                if publish.payload.len() > self.access.max_payload {
                    self.counters
                        .publish_malformed
                        .fetch_add(1, Ordering::Relaxed);
                    let v5 = publish.properties.is_some();
                    tracing::info!(
                        client_id = %s.id.client_id,
                        size = publish.payload.len(),
                        "publish refused{}: payload over message.length.max",
                        if v5 { "" } else { ", closing the connection" }
                    );
                    // MQTT 5 says why per message (PUBACK 0x97); 3.1.1 has no way to but closing.
                    let r = PublishAclResult::rejected_with(
                        PublishAckReason::QuotaExceeded,
                        !v5,
                        Some("payload over message.length.max".into()),
                    );
                    return (false, Some(HookResult::PublishAclResult(r)));
                }
                if !self.access.may_publish(s.id.username.as_deref(), name) {
                    self.counters.publish_denied.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(client_id = %s.id.client_id, topic = name, "publish denied");
                    let r = PublishAclResult::rejected(false, None);
                    return (false, Some(HookResult::PublishAclResult(r)));
                }
                let mut result = PublishAclResult::allow();
                if publish.retain {
                    let expiry = publish
                        .properties
                        .as_ref()
                        .and_then(|p| p.message_expiry_interval)
                        .map(|i| Duration::from_secs(u64::from(i.get())));
                    if !self
                        .retained
                        .admit(name, publish.payload.len() as u64, expiry)
                    {
                        let n = self
                            .counters
                            .retained_refused
                            .fetch_add(1, Ordering::Relaxed)
                            + 1;
                        if n == 1 || n.is_multiple_of(1000) {
                            tracing::warn!(
                                topic = name,
                                "retained message delivered but not retained: limits.retained reached ({n} so far)"
                            );
                        }
                        result = PublishAclResult::allow_unretained();
                    }
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
                        tokio::spawn(crate::broker::republish(
                            scx,
                            routes,
                            (*publish).clone(),
                            self.message_expiry,
                        ));
                    }
                }
                (false, Some(HookResult::PublishAclResult(result)))
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
    fn v1_client_ids() {
        assert!(valid_v1_client_id("abc_DEF-123"));
        assert!(!valid_v1_client_id(""));
        assert!(!valid_v1_client_id("a b"));
        assert!(!valid_v1_client_id("é"));
        assert!(!valid_v1_client_id(&"x".repeat(129)));
    }

    fn req<'a>(
        user: &'a str,
        client_id: &'a str,
        will: Option<(&'a str, usize)>,
    ) -> ConnectRequest<'a> {
        ConnectRequest {
            username: Some(user),
            password: Some(b"pw"),
            cert_cn: None,
            client_id,
            will,
        }
    }

    #[test]
    fn connect_checks() {
        let yaml = "principals:\n\
             - {username: u, password: pw, permissions: [{action: pub, permit: ['a/#', '$SYS/#']}]}\n\
             message: {length: {max: 10}}\n";
        let any = access(yaml);
        assert_eq!(any.check_connect(&req("u", "id with / : .", None)), Ok(()));
        assert_eq!(
            any.check_connect(&req("u", "x", Some(("a/will", 10)))),
            Ok(())
        );
        assert_eq!(
            any.check_connect(&req("u", "x", Some(("b/will", 1)))),
            Err(Refusal::WillNotAuthorized)
        );
        assert_eq!(
            any.check_connect(&req("u", "x", Some(("$SYS/x", 1)))),
            Err(Refusal::WillNotAuthorized),
            "`$SYS/` even with a `$SYS/#` permission"
        );
        assert_eq!(
            any.check_connect(&req("u", "x", Some(("a/will", 11)))),
            Err(Refusal::WillTooLarge)
        );
        assert_eq!(
            any.check_connect(&req("nobody", "x", None)),
            Err(Refusal::NotAuthorized)
        );
        let v1 = access(&format!("{yaml}client_id: v1\n"));
        assert_eq!(
            v1.check_connect(&req("u", "a b", None)),
            Err(Refusal::ClientId)
        );
        assert_eq!(v1.check_connect(&req("u", "ab_1-2", None)), Ok(()));
        // The codes each refusal gets.
        use rmqtt::codec::v3::ConnectAckReason as V3;
        use rmqtt::codec::v5::ConnectAckReason as V5;
        assert_eq!(
            Refusal::WillNotAuthorized.ack(false),
            ConnectAckReason::V3(V3::NotAuthorized)
        );
        assert_eq!(
            Refusal::WillNotAuthorized.ack(true),
            ConnectAckReason::V5(V5::NotAuthorized)
        );
        assert_eq!(
            Refusal::ClientId.ack(true),
            ConnectAckReason::V5(V5::ClientIdentifierNotValid)
        );
        assert_eq!(
            Refusal::Quota.ack(true),
            ConnectAckReason::V5(V5::QuotaExceeded)
        );
        assert_eq!(
            Refusal::Quota.ack(false),
            ConnectAckReason::V3(V3::ServiceUnavailable)
        );
    }
}
