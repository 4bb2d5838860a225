//! Safe mode, as `baetyl init` asks for it when the device's data partition cannot be used (missing, failing its
//! check, refusing to mount): init starts the master on a tmpfs work dir with `BAETYL_SAFE_MODE` naming a JSON
//! file that says why (`reason`, `device`, `label`, `detail`, `remedy`).
//!
//! In safe mode the master runs no application: an empty work dir would otherwise get the built-in example,
//! whose hub serves a well-known password on 0.0.0.0:1883. It serves its API, shows the file's contents as
//! `safe_mode` in inspect (and the reason as inspect's `error`), and refuses application updates, which would
//! run services without their data. OS updates stay possible: a new OS is one way out.

use std::sync::OnceLock;

use serde_json::{Value, json};

/// The safe-mode record of this master, read once at start ([`init`]); None when the device is healthy.
static STATE: OnceLock<Option<Value>> = OnceLock::new();

/// Reads `BAETYL_SAFE_MODE` (and the file it names) once; the record, if the master runs in safe mode.
pub fn init() -> Option<Value> {
    STATE
        .get_or_init(|| {
            let path = std::env::var_os(baetyl_sdk::env::SAFE_MODE)?;
            Some(read(std::path::Path::new(&path)))
        })
        .clone()
}

/// The record in `path`; a marker that cannot be read still means safe mode (init asked for it).
pub fn read(path: &std::path::Path) -> Value {
    match std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
    {
        Some(v) if v.is_object() => v,
        _ => json!({
            "reason": format!("init started the master in safe mode; its reason file {} cannot be read", path.display()),
        }),
    }
}

/// The record for inspect (`null` when not in safe mode).
pub fn inspect() -> Value {
    STATE.get().cloned().flatten().unwrap_or(Value::Null)
}

/// Whether the master runs in safe mode.
pub fn active() -> bool {
    STATE.get().is_some_and(Option::is_some)
}

/// In safe mode, the answer to an update request that is not an OS update (409, with the reason).
pub fn refuse_update(body: &[u8]) -> Option<axum::response::Response> {
    use axum::response::IntoResponse;
    if !active() {
        return None;
    }
    let kind = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["type"].as_str().map(str::to_ascii_uppercase));
    if kind.as_deref() == Some("OS") {
        return None;
    }
    let text = format!("{}: application updates are refused\n", message(&inspect()));
    Some((axum::http::StatusCode::CONFLICT, text).into_response())
}

/// The error inspect shows in safe mode.
pub fn message(record: &Value) -> String {
    format!(
        "safe mode: {}; no application runs until the data partition is repaired ({})",
        record["reason"]
            .as_str()
            .unwrap_or("the data partition cannot be used"),
        record["remedy"]
            .as_str()
            .unwrap_or("see safe_mode in inspect"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_marker_is_read_and_an_unreadable_one_still_means_safe_mode() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("safe-mode.json");
        std::fs::write(
            &f,
            r#"{"reason": "the data partition failed its check", "remedy": "reflash"}"#,
        )
        .unwrap();
        let v = read(&f);
        assert_eq!(v["reason"], "the data partition failed its check");
        assert_eq!(
            message(&v),
            "safe mode: the data partition failed its check; no application runs until the data partition is \
             repaired (reflash)"
        );
        let v = read(&dir.path().join("missing.json"));
        assert!(
            v["reason"].as_str().unwrap().contains("cannot be read"),
            "{v}"
        );
    }
}
