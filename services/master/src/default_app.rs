//! The built-in example application (examples/default), installed into a work dir that has none: the hub, a
//! timer, and an SQL and a Python function wired by rules. It is what `scripts/run.sh` runs.

use std::path::Path;

use crate::error::{MasterError, Result};

const APPLICATION: &str = include_str!("../../../examples/default/application.yml");

/// (path under the work dir, content): the volumes' files.
pub const FILES: &[(&str, &str)] = &[
    (
        "var/db/baetyl/conf/hub/service.yml",
        include_str!("../../../examples/default/conf/hub/service.yml"),
    ),
    (
        "var/db/baetyl/conf/timer/service.yml",
        include_str!("../../../examples/default/conf/timer/service.yml"),
    ),
    (
        "var/db/baetyl/conf/function-manager/service.yml",
        include_str!("../../../examples/default/conf/function-manager/service.yml"),
    ),
    (
        "var/db/baetyl/conf/function-sql/service.yml",
        include_str!("../../../examples/default/conf/function-sql/service.yml"),
    ),
    (
        "var/db/baetyl/conf/function-python/service.yml",
        include_str!("../../../examples/default/conf/function-python/service.yml"),
    ),
    (
        "var/db/baetyl/code/index.py",
        include_str!("../../../examples/default/code/index.py"),
    ),
];

/// Writes the example application and its volumes' files; files already there are left alone.
pub fn install(workdir: &Path, app_file: &Path) -> Result<()> {
    if let Some(dir) = app_file.parent() {
        std::fs::create_dir_all(dir).map_err(|e| MasterError::io(dir, e))?;
    }
    crate::ota::write_app_file(app_file, APPLICATION.as_bytes(), None)
        .map_err(|e| MasterError::io(app_file, e))?;
    for (rel, content) in FILES {
        let path = workdir.join(rel);
        if path.exists() {
            continue;
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| MasterError::io(dir, e))?;
        }
        std::fs::write(&path, content).map_err(|e| MasterError::io(&path, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use baetyl_sdk::config::ConfigFile;

    #[test]
    fn embedded_application_is_valid_and_its_volumes_hold_the_files() {
        let app =
            crate::config::Application::parse(APPLICATION, Path::new("default application.yml"))
                .unwrap();
        let order = app.start_order().unwrap();
        assert_eq!(order.first().map(String::as_str), Some("function-python"));
        assert!(order.iter().position(|s| s == "hub") < order.iter().position(|s| s == "timer"));
        for (rel, _) in FILES {
            assert!(
                app.volumes
                    .values()
                    .any(|v| v.path.as_deref().is_some_and(|p| rel.starts_with(p))),
                "{rel} is in no volume"
            );
        }
    }
}
