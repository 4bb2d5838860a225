//! The HTTPS routes: operators' API under `/api/v1` ([`operator`]), devices' under `/device/v1` ([`device`]),
//! the dashboard at `/` ([`crate::web`]). Operators authenticate with `Authorization: Bearer <token>`; the token's
//! role (`admin` or `read-only`) decides what it may do, and every operator action goes to the audit log.

pub mod device;
pub mod operator;

use std::sync::Arc;

use axum::Router;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use baetyl_agent::crypto;
use tokio::sync::watch;

use crate::bus::Bus;
use crate::config::CloudConfig;
use crate::error::{CloudError, Result};
use crate::links::Links;
use crate::pki::Pki;
use crate::store::{AuditEntry, Store, now_ms};

/// What every handler shares.
pub struct App {
    pub cfg: CloudConfig,
    pub store: Store,
    pub pki: Pki,
    pub links: Arc<Links>,
    pub bus: Bus,
    pub public_url: String,
    /// Flips to true at shutdown (device links close on it).
    pub stop: watch::Receiver<bool>,
    /// Reports recorded by this process since it started (shown in the fleet view; the load program reads it).
    pub reports: std::sync::atomic::AtomicU64,
}

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .merge(operator::routes(app.cfg.limits.upload.0 as usize))
        .merge(device::routes())
        .merge(crate::web::routes())
        .with_state(app)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    ReadOnly,
    Admin,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "admin" => Some(Role::Admin),
            "read-only" | "readonly" | "read" => Some(Role::ReadOnly),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::ReadOnly => "read-only",
        }
    }
}

/// An authenticated operator.
#[derive(Debug, Clone)]
pub struct Operator {
    pub token: String,
    pub name: String,
    pub role: Role,
}

impl Operator {
    pub fn require_admin(&self, what: &str) -> Result<()> {
        if self.role == Role::Admin {
            Ok(())
        } else {
            Err(CloudError::Forbidden(format!(
                "{what} needs an admin token; token `{}` is {}",
                self.name,
                self.role.as_str()
            )))
        }
    }

    pub fn actor(&self) -> String {
        format!("{} ({})", self.name, self.token)
    }
}

impl FromRequestParts<Arc<App>> for Operator {
    type Rejection = CloudError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self> {
        let header = parts
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let none = || {
            CloudError::Unauthorized(
                "this needs an operator token: send `Authorization: Bearer <token>` (the first admin token is in admin.token in the cloud's data dir)".into(),
            )
        };
        let bad = || {
            CloudError::Unauthorized(
                "the operator token is not valid (unknown, revoked or mistyped)".into(),
            )
        };
        let token = header.strip_prefix("Bearer ").ok_or_else(none)?.trim();
        let rest = token.strip_prefix("bct_").ok_or_else(bad)?;
        let (id, secret) = rest.split_once('_').ok_or_else(bad)?;
        if id.len() > 64 || secret.len() > 256 {
            return Err(bad());
        }
        let row = app.store.token(id).await?.ok_or_else(bad)?;
        if row.revoked.is_some()
            || !crypto::same_secret(&crypto::sha256_hex(secret.as_bytes()), &row.hash)
        {
            return Err(bad());
        }
        let role = Role::parse(&row.role).ok_or_else(bad)?;
        Ok(Operator {
            token: row.id,
            name: row.name,
            role,
        })
    }
}

impl App {
    /// Writes one audit entry; a failure to write it is logged (the action itself already happened).
    pub async fn audit(
        &self,
        actor: &str,
        role: &str,
        action: &str,
        target: &str,
        detail: serde_json::Value,
        outcome: &str,
    ) {
        let entry = AuditEntry {
            id: format!("{:013}-{}", now_ms(), crypto::random_token(4)),
            time: now_ms(),
            actor: actor.to_string(),
            role: role.to_string(),
            action: action.to_string(),
            target: target.to_string(),
            detail: detail.to_string(),
            outcome: outcome.to_string(),
        };
        tracing::info!(actor, action, target, outcome, "audit");
        if let Err(e) = self.store.audit(&entry).await {
            tracing::error!("cannot write the audit log: {e}");
        }
    }

    /// Runs an operator's action and records it with its outcome.
    pub async fn audited<T>(
        &self,
        op: &Operator,
        action: &str,
        target: &str,
        detail: serde_json::Value,
        fut: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        let result = fut.await;
        let outcome = match &result {
            Ok(_) => "ok".to_string(),
            Err(e) => format!("error: {e}"),
        };
        self.audit(
            &op.actor(),
            op.role.as_str(),
            action,
            target,
            detail,
            &outcome,
        )
        .await;
        result
    }
}
