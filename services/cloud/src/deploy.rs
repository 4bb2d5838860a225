//! Desired state: what each device should run, from the operators' assignments. A device's own assignment wins
//! over its tags'; among its tags the most recent assignment wins. Each change issues, for every device it
//! touches, a desired-state document (one new revision per operator action) signed with the fleet key and
//! carrying the device's own secrets, then tells every cloud process to push it.

use std::collections::BTreeMap;

use baetyl_agent::crypto;
use baetyl_agent::proto::{Desired, Manifest, Signed};

use crate::api::App;
use crate::bus::Event;
use crate::error::{CloudError, Result};
use crate::store::{AppVersion, Assignment, DesiredRow, Device, now_ms};

/// Where an assignment applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Device(String),
    Tag(String),
}

impl Target {
    pub fn key(&self) -> String {
        match self {
            Target::Device(d) => format!("device:{d}"),
            Target::Tag(t) => format!("tag:{t}"),
        }
    }
}

/// The assignment that decides what `device` runs, if any.
pub fn effective<'a>(assignments: &'a [Assignment], device: &Device) -> Option<&'a Assignment> {
    let own = format!("device:{}", device.id);
    if let Some(a) = assignments.iter().find(|a| a.target == own) {
        return Some(a);
    }
    assignments
        .iter()
        .filter(|a| {
            a.target
                .strip_prefix("tag:")
                .is_some_and(|t| device.tags.iter().any(|dt| dt == t))
        })
        .max_by_key(|a| a.revision)
}

/// A new random secret value (what `${secret.NAME}` becomes on one device).
pub fn new_secret() -> String {
    crypto::random_token(16)
}

/// Builds and signs one device's desired state; secrets the manifest needs and the device lacks are made and
/// added to `new_secrets` (device, name, value) for the caller to store with the desired state.
fn issue(
    app: &App,
    device: &Device,
    version: &AppVersion,
    manifest: &Manifest,
    revision: i64,
    secrets: &BTreeMap<String, String>,
    new_secrets: &mut Vec<(String, String, String)>,
) -> Result<DesiredRow> {
    let mut wanted = BTreeMap::new();
    for name in &manifest.secrets {
        let value = match secrets.get(name) {
            Some(v) => v.clone(),
            None => {
                let v = new_secret();
                new_secrets.push((device.id.clone(), name.clone(), v.clone()));
                v
            }
        };
        wanted.insert(name.clone(), value);
    }
    let desired = Desired {
        device: device.id.clone(),
        name: device.name.clone(),
        revision: revision as u64,
        manifest: Signed {
            payload: version.manifest.clone(),
            signature: version.signature.clone(),
        },
        secrets: wanted,
        issued: baetyl_agent::proto::now(),
    };
    let signed = Signed::sign(&desired, &app.pki.signing).map_err(CloudError::Keys)?;
    Ok(DesiredRow {
        device_id: device.id.clone(),
        revision,
        app: version.app.clone(),
        version: version.version.clone(),
        payload: signed.payload,
        signature: signed.signature,
        blobs: manifest.blobs().iter().map(|b| b.sha256.clone()).collect(),
    })
}

/// Recomputes the desired state of `devices` (after an assignment, a tag change, a registration or a secret
/// rotation) with one new revision; devices whose effective assignment is unchanged are left alone unless
/// `force`. Answers the revision and how many devices got a new desired state.
pub async fn refresh(
    app: &App,
    devices: &[Device],
    force: bool,
    by: &str,
    revision: Option<i64>,
) -> Result<(i64, usize)> {
    let assignments = app.store.assignments().await?;
    let mut plans = Vec::new();
    for d in devices.iter().filter(|d| d.state == "active") {
        let Some(a) = effective(&assignments, d) else {
            continue;
        };
        if !force
            && let Some(cur) = app.store.desired(&d.id).await?
            && cur.app == a.app
            && cur.version == a.version
        {
            continue;
        }
        plans.push((d, a.app.clone(), a.version.clone()));
    }
    if plans.is_empty() {
        return Ok((revision.unwrap_or(0), 0));
    }
    let revision = match revision {
        Some(r) => r,
        None => app.store.next_revision().await?,
    };
    let mut versions: BTreeMap<(String, String), (AppVersion, Manifest)> = BTreeMap::new();
    let ids: Vec<String> = plans.iter().map(|(d, _, _)| d.id.clone()).collect();
    let secrets = app.store.secrets_of(&ids).await?;
    let none = BTreeMap::new();
    let mut new_secrets = Vec::new();
    let mut rows = Vec::with_capacity(plans.len());
    for (d, a, v) in plans {
        let key = (a.clone(), v.clone());
        if !versions.contains_key(&key) {
            let row = app.store.version(&a, &v).await?.ok_or_else(|| {
                CloudError::NotFound(format!("application {a} version {v} does not exist"))
            })?;
            let manifest: Manifest = serde_json::from_str(&row.manifest)
                .map_err(|e| CloudError::Database(format!("manifest of {a} {v}: {e}")))?;
            versions.insert(key.clone(), (row, manifest));
        }
        let (version, manifest) = &versions[&key];
        rows.push(issue(
            app,
            d,
            version,
            manifest,
            revision,
            secrets.get(&d.id).unwrap_or(&none),
            &mut new_secrets,
        )?);
    }
    app.store.set_desired(&rows, &new_secrets, by).await?;
    app.bus.publish(Event::Desired { revision }).await?;
    Ok((revision, rows.len()))
}

/// Assigns an application version to a device or a tag group; answers the revision and the devices reached.
pub async fn assign(
    app: &App,
    target: Target,
    app_name: &str,
    version: &str,
    by: &str,
) -> Result<(i64, usize)> {
    if app.store.version(app_name, version).await?.is_none() {
        return Err(CloudError::NotFound(format!(
            "application {app_name} version {version} does not exist; upload it first (baetyl ctl apps push)"
        )));
    }
    let devices = match &target {
        Target::Device(id) => {
            let d = app
                .store
                .device(id)
                .await?
                .ok_or_else(|| CloudError::NotFound(format!("device `{id}` does not exist")))?;
            if d.state == "revoked" {
                return Err(CloudError::Conflict(format!(
                    "device `{}` is revoked",
                    d.name
                )));
            }
            vec![d]
        }
        Target::Tag(t) => app.store.devices_with_tag(t).await?,
    };
    let revision = app.store.next_revision().await?;
    app.store
        .assign(&Assignment {
            target: target.key(),
            app: app_name.to_string(),
            version: version.to_string(),
            revision,
            created: now_ms(),
            created_by: by.to_string(),
        })
        .await?;
    refresh(app, &devices, true, by, Some(revision)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(target: &str, version: &str, revision: i64) -> Assignment {
        Assignment {
            target: target.into(),
            app: "app".into(),
            version: version.into(),
            revision,
            created: 0,
            created_by: "t".into(),
        }
    }

    #[test]
    fn device_assignment_wins_then_newest_tag() {
        let mut d = crate::api::device::new_device("n".into(), vec![], None);
        d.id = "d1".into();
        d.state = "active".into();
        d.tags = vec!["east".into(), "pumps".into()];
        let list = vec![
            a("tag:pumps", "1", 3),
            a("tag:east", "2", 5),
            a("tag:west", "9", 9),
        ];
        assert_eq!(effective(&list, &d).map(|x| x.version.as_str()), Some("2"));
        let mut with_own = list.clone();
        with_own.push(a("device:d1", "7", 1));
        assert_eq!(
            effective(&with_own, &d).map(|x| x.version.as_str()),
            Some("7")
        );
        d.tags.clear();
        assert!(effective(&list, &d).is_none());
    }
}
