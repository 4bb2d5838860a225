//! What the agent asks of the master, behind a trait so that deployments and operations can be tested with a
//! fake and the load program can simulate thousands of devices.

use std::collections::BTreeMap;
use std::path::PathBuf;

use baetyl_sdk::client::MasterClient;
use serde_json::Value;

use crate::error::{AgentError, Result};

#[async_trait::async_trait]
pub trait Master: Send + Sync + 'static {
    /// `GET /v1/system/inspect`.
    async fn inspect(&self) -> Result<Value>;
    /// `PUT /v1/system/update` (type APP) with a path relative to the master's work dir.
    async fn update(&self, path: &str, trace: &str) -> Result<()>;
    /// `GET /v1/system/update/{trace}`: the OTA log's records of one update, oldest first.
    async fn update_records(&self, trace: &str) -> Result<Vec<Value>>;
    /// `GET /v1/system/application`: the running application's text (None before one is installed).
    async fn application(&self) -> Result<Option<String>>;
    /// Restarts every instance of a service.
    async fn restart(&self, service: &str) -> Result<()>;
    /// `PUT /v1/system/reboot` or `/v1/system/poweroff`.
    async fn system(&self, action: SystemAction) -> Result<()>;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SystemAction {
    Reboot,
    Poweroff,
}

impl SystemAction {
    fn path(self) -> &'static str {
        match self {
            SystemAction::Reboot => "/v1/system/reboot",
            SystemAction::Poweroff => "/v1/system/poweroff",
        }
    }
}

/// The real master, through its REST API.
pub struct ApiMaster {
    client: MasterClient,
}

impl ApiMaster {
    pub fn new(client: MasterClient) -> Self {
        ApiMaster { client }
    }

    /// The client from the env contract: its service token (the agent role when the master's conf.yml names
    /// the service in `server.agents`), or `token_file`'s operator token when one is given.
    pub fn from_env(token_file: Option<PathBuf>) -> Result<Self> {
        let client = MasterClient::from_env()?;
        let token = match token_file {
            Some(p) => Some(crate::files::read_secret(&p).map_err(|e| AgentError::io(&p, e))?),
            None => None,
        };
        Ok(ApiMaster::new(match token {
            Some(t) => client.with_credentials(OPERATOR, t),
            None => client,
        }))
    }

    async fn put(&self, path: &str, body: Option<Vec<u8>>) -> Result<()> {
        let (status, bytes) = self.client.call("PUT", path, body).await?;
        if (200..300).contains(&status) {
            Ok(())
        } else {
            Err(AgentError::Master(baetyl_sdk::ClientError::Status {
                method: "PUT".into(),
                path: path.into(),
                status,
                body: String::from_utf8_lossy(&bytes).trim().to_string(),
            }))
        }
    }
}

/// The master's operator user name (its API's `baetyl-operator`).
pub const OPERATOR: &str = "baetyl-operator";

#[async_trait::async_trait]
impl Master for ApiMaster {
    async fn inspect(&self) -> Result<Value> {
        Ok(self.client.inspect().await?)
    }

    async fn update(&self, path: &str, trace: &str) -> Result<()> {
        Ok(self.client.update_app(path, trace).await?)
    }

    async fn update_records(&self, trace: &str) -> Result<Vec<Value>> {
        Ok(self.client.update_records(trace).await?)
    }

    async fn application(&self) -> Result<Option<String>> {
        Ok(self.client.application().await?)
    }

    /// Through the instance stop/start routes (the master has no restart route yet): each instance the
    /// service has is stopped and started again.
    async fn restart(&self, service: &str) -> Result<()> {
        let inspect = self.inspect().await?;
        let instances: Vec<String> = inspect["services"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|s| s["name"] == service)
            .flat_map(|s| s["instances"].as_array().cloned().unwrap_or_default())
            .filter(|i| i["dynamic"] != Value::Bool(true))
            .filter_map(|i| i["name"].as_str().map(str::to_string))
            .collect();
        if instances.is_empty() {
            return Err(AgentError::Operation(format!(
                "service `{service}` is not running on this device"
            )));
        }
        for inst in instances {
            self.client.stop_instance(service, &inst).await?;
            self.client
                .start_instance(service, &inst, &BTreeMap::new())
                .await?;
        }
        Ok(())
    }

    async fn system(&self, action: SystemAction) -> Result<()> {
        self.put(action.path(), None).await
    }
}
