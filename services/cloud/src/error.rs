//! Errors of the fleet server, and the one place they become HTTP answers.

use std::path::PathBuf;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

#[derive(Debug, thiserror::Error)]
pub enum CloudError {
    #[error(transparent)]
    ConfigFile(#[from] baetyl_sdk::ConfigError),
    #[error("config: {0}")]
    Config(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot listen on {address}: {source}")]
    Bind {
        address: String,
        source: std::io::Error,
    },
    #[error("database: {0}")]
    Database(String),
    #[error("the fleet keys: {0}")]
    Keys(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("certificate: {0}")]
    Certificate(String),
    /// The caller has no or a bad credential (401).
    #[error("{0}")]
    Unauthorized(String),
    /// The caller's role does not allow this (403).
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    /// The request is malformed or names something invalid (400).
    #[error("{0}")]
    BadRequest(String),
    /// It exists already / it is in a state that does not allow this (409).
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    TooLarge(String),
    /// The device is not connected to any cloud process (409).
    #[error("device `{0}` is offline: it has no link to the cloud right now")]
    Offline(String),
    /// The device did not answer in time (504).
    #[error("device `{0}` did not answer within {1:?}")]
    DeviceTimeout(String, std::time::Duration),
    /// The device answered with an error (502).
    #[error("the device answered: {0}")]
    Device(String),
    #[error(transparent)]
    Service(#[from] baetyl_sdk::service::ServiceError),
}

impl CloudError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        CloudError::Io {
            path: path.into(),
            source,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            CloudError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            CloudError::Forbidden(_) => StatusCode::FORBIDDEN,
            CloudError::NotFound(_) => StatusCode::NOT_FOUND,
            CloudError::BadRequest(_) | CloudError::Certificate(_) => StatusCode::BAD_REQUEST,
            CloudError::Conflict(_) | CloudError::Offline(_) => StatusCode::CONFLICT,
            CloudError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            CloudError::DeviceTimeout(..) => StatusCode::GATEWAY_TIMEOUT,
            CloudError::Device(_) => StatusCode::BAD_GATEWAY,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for CloudError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!("{self}");
        }
        (
            status,
            axum::Json(serde_json::json!({"error": self.to_string()})),
        )
            .into_response()
    }
}

pub type Result<T, E = CloudError> = std::result::Result<T, E>;
