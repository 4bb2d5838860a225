//! The built-in example application, installed into a work dir that has none (the README's run command).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::error::{MasterError, Result};

const APPLICATION: &str = include_str!("../../../examples/default/application.yml");

/// (path under the packages dir, content, executable)
const FILES: &[(&str, &str, bool)] = &[
    (
        "sensor/package.yml",
        include_str!("../../../examples/default/packages/sensor/package.yml"),
        false,
    ),
    (
        "sensor/sensor.py",
        include_str!("../../../examples/default/packages/sensor/sensor.py"),
        true,
    ),
    (
        "reporter/package.yml",
        include_str!("../../../examples/default/packages/reporter/package.yml"),
        false,
    ),
    (
        "reporter/reporter.py",
        include_str!("../../../examples/default/packages/reporter/reporter.py"),
        true,
    ),
];

/// Writes the example application and its packages; existing package files are left alone.
pub fn install(app_file: &Path, packages_dir: &Path) -> Result<()> {
    if let Some(dir) = app_file.parent() {
        std::fs::create_dir_all(dir).map_err(|e| MasterError::io(dir, e))?;
    }
    std::fs::write(app_file, APPLICATION).map_err(|e| MasterError::io(app_file, e))?;
    for (rel, content, exec) in FILES {
        let path = packages_dir.join(rel);
        if path.exists() {
            continue;
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| MasterError::io(dir, e))?;
        }
        std::fs::write(&path, content).map_err(|e| MasterError::io(&path, e))?;
        if *exec {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                .map_err(|e| MasterError::io(&path, e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_application_is_valid() {
        let app =
            crate::config::Application::parse(APPLICATION, Path::new("default application.yml"))
                .unwrap();
        assert_eq!(app.start_order().unwrap(), vec!["sensor", "reporter"]);
    }
}
