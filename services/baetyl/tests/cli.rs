//! The `baetyl` binary's command line: `check` names the file and the key of a config error, `master` refuses a
//! bad conf.yml, `version` and `--help`. (The master at work is tested end to end in the top-level `tests/`.)

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use baetyl_testkit::test_dir;

const BIN: &str = env!("CARGO_BIN_EXE_baetyl");

/// A valid application of three services.
const GOOD: &str = "app_version: v1\nservices:\n  a: {image: svc}\n  b: {image: svc, depends_on: [a]}\n  c: {image: svc}\n";

/// Runs `baetyl ARGS... [PATH]` and answers its output.
fn baetyl(args: &[&str], path: Option<&Path>) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    if let Some(p) = path {
        cmd.arg(p);
    }
    cmd.output()
        .unwrap_or_else(|e| panic!("running baetyl {args:?}: {e}"))
}

fn write(dir: &Path, rel: &str, text: &str) -> PathBuf {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
    std::fs::write(&p, text).expect("write");
    p
}

#[test]
fn config_errors_name_file_and_key() {
    let w = test_dir("baetyl-cli-");
    let bad = write(
        w.path(),
        "bad/application.yml",
        "services:\n  hub:\n    image: x\n    restart: {policy: sometimes}\n",
    );
    let out = baetyl(&["check"], Some(&bad));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad/application.yml")
            && err.contains("services.hub.restart.policy")
            && err.contains("on-failure"),
        "{err}"
    );

    let cyc = write(
        w.path(),
        "cyc/application.yml",
        "services:\n  x: {image: a, depends_on: [y]}\n  y: {image: a, depends_on: [x]}\n",
    );
    let out = baetyl(&["check"], Some(&cyc));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("cycle")
            && err.contains("`x`")
            && err.contains("`y`"),
        "{err}"
    );

    let good = write(w.path(), "good/application.yml", GOOD);
    let out = baetyl(&["check"], Some(&good));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("ok (application v1 with 3 service(s), read in the compose form)"),
        "{said}"
    );

    // The master refuses a bad conf.yml at start, naming the key.
    write(
        w.path(),
        "etc/baetyl/conf.yml",
        "grace: 2s\nlogger: {levle: debug}\n",
    );
    let out = baetyl(&["master", "-w"], Some(w.path()));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("conf.yml") && err.contains("logger") && err.contains("levle"),
        "{err}"
    );
    let out = baetyl(
        &["check", "--kind", "master"],
        Some(&w.path().join("etc/baetyl/conf.yml")),
    );
    assert!(!out.status.success());
}

#[test]
fn version_and_help_list_working_subcommands() {
    let out = baetyl(&["version"], None);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("git revision:") && text.contains("build target: x86_64")
            || text.contains("build target: aarch64"),
        "{text}"
    );
    let out = baetyl(&["--help"], None);
    let text = String::from_utf8_lossy(&out.stdout);
    for sub in ["master", "check", "inspect", "version"] {
        assert!(text.contains(sub), "{text}");
    }
}
