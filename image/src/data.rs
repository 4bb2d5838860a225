//! The data partition's initial contents: the master's work dir with the application of `examples/image` (hub,
//! timer, SQL function; the hub's sessions on a volume), or the work-dir tree given with `--app`, validated with
//! the master's own loader first.

use baetyl_sdk::config::ConfigFile;
use std::path::Path;

use crate::error::{ImageError, Result};
use crate::fs::{tree, write};

/// Copies the tree `from` into `to` (regular files and directories; anything else is refused).
fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).map_err(|e| ImageError::io(to, e))?;
    for (rel, ty) in tree(from)? {
        let (src, dst) = (from.join(&rel), to.join(&rel));
        if ty.is_dir() {
            std::fs::create_dir_all(&dst).map_err(|e| ImageError::io(&dst, e))?;
        } else if ty.is_file() {
            std::fs::copy(&src, &dst).map_err(|e| ImageError::io(&src, e))?;
        } else {
            return Err(ImageError::Input(format!(
                "{}: --app may hold only files and directories (no links or devices)",
                src.display()
            )));
        }
    }
    Ok(())
}

/// An `--app` tree must hold a valid application (checked with the master's own loader).
pub fn check_app(app: &Path) -> Result<()> {
    let file = app.join("var/db/baetyl/application.yml");
    if !file.is_file() {
        return Err(ImageError::Input(format!(
            "--app {}: no var/db/baetyl/application.yml in it (the tree is copied as the master's work dir)",
            app.display()
        )));
    }
    baetyl_master::config::Application::load(&file)
        .map(|_| ())
        .map_err(|e| ImageError::Input(format!("--app: {e}")))
}

/// The data partition's initial contents: the master's work dir with `app` (a work-dir tree) or the image's
/// default application: with `python` (a containerd image, which carries the Python runtime image) the whole
/// example application of `examples/default`, else that of `examples/image` (no Python function).
pub fn stage_data(dir: &Path, app: Option<&Path>, python: bool) -> Result<()> {
    let _ = std::fs::remove_dir_all(dir);
    if let Some(app) = app {
        check_app(app)?;
        return copy_tree(app, dir);
    }
    if python {
        write(
            &dir.join("var/db/baetyl/application.yml"),
            include_str!("../../examples/default/application.yml"),
        )?;
        for (rel, content) in baetyl_master::default_app::FILES {
            write(&dir.join(rel), content)?;
        }
        return std::fs::create_dir_all(dir.join("var/db/baetyl/hub-data"))
            .map_err(|e| ImageError::io(dir, e));
    }
    write(
        &dir.join("var/db/baetyl/application.yml"),
        include_str!("../../examples/image/application.yml"),
    )?;
    write(
        &dir.join("var/db/baetyl/conf/function-manager/service.yml"),
        include_str!("../../examples/image/conf/function-manager/service.yml"),
    )?;
    for (rel, content) in baetyl_master::default_app::FILES {
        let used = ["conf/hub/", "conf/timer/", "conf/function-sql/"];
        if used.iter().any(|u| rel.contains(u)) {
            write(&dir.join(rel), content)?;
        }
    }
    std::fs::create_dir_all(dir.join("var/db/baetyl/hub-data"))
        .map_err(|e| ImageError::io(dir, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_partition_holds_the_image_application() {
        let d = tempfile::tempdir().unwrap();
        stage_data(d.path(), None, false).unwrap();
        let app = std::fs::read_to_string(d.path().join("var/db/baetyl/application.yml")).unwrap();
        assert!(app.contains("hub-data"));
        assert!(
            !app.contains("python"),
            "no Python interpreter in the image"
        );
        for f in ["hub", "timer", "function-sql", "function-manager"] {
            assert!(
                d.path()
                    .join(format!("var/db/baetyl/conf/{f}/service.yml"))
                    .is_file(),
                "{f}"
            );
        }
        assert!(!d.path().join("var/db/baetyl/conf/function-python").exists());
    }

    #[test]
    fn a_containerd_image_gets_the_example_with_its_python_function() {
        let d = tempfile::tempdir().unwrap();
        stage_data(d.path(), None, true).unwrap();
        let file = d.path().join("var/db/baetyl/application.yml");
        let app = baetyl_master::config::Application::load(&file).unwrap();
        assert!(app.services.contains_key("function-python"), "{app:?}");
        assert!(d.path().join("var/db/baetyl/code/index.py").is_file());
        let fm = std::fs::read_to_string(
            d.path()
                .join("var/db/baetyl/conf/function-manager/service.yml"),
        )
        .unwrap();
        assert!(fm.contains("sensor/python"), "{fm}");
        assert!(d.path().join("var/db/baetyl/hub-data").is_dir());
    }

    #[test]
    fn a_given_application_is_validated_and_copied() {
        let app = tempfile::tempdir().unwrap();
        let out = tempfile::tempdir().unwrap();
        let err = stage_data(out.path(), Some(app.path()), false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no var/db/baetyl/application.yml"), "{err}");

        let file = app.path().join("var/db/baetyl/application.yml");
        write(
            &file,
            "version: v1\nservices:\n  a: {image: baetyl-hub, depends_on: [b]}\n",
        )
        .unwrap();
        let err = stage_data(out.path(), Some(app.path()), false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("depends on `b`"), "{err}");

        write(
            &file,
            "version: v1\nservices:\n  hub: {image: baetyl-hub}\n",
        )
        .unwrap();
        write(
            &app.path().join("var/db/baetyl/conf/hub/service.yml"),
            "listen: [tcp://0.0.0.0:1883]\n",
        )
        .unwrap();
        stage_data(out.path(), Some(app.path()), false).unwrap();
        assert!(
            out.path()
                .join("var/db/baetyl/conf/hub/service.yml")
                .is_file()
        );
        assert!(
            !out.path().join("var/db/baetyl/conf/timer").exists(),
            "only the given tree"
        );
    }
}
