//! A PostgreSQL cluster of our own for the cloud's tests and the end-to-end tests (feature `testing`; ports,
//! polls and processes come from baetyl-testkit).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A PostgreSQL cluster of our own (Debian's postgresql), initialised in a temporary directory and run as the
/// unprivileged `postgres` user, listening on 127.0.0.1 on a free port; stopped and removed on drop.
pub struct Postgres {
    pub url: String,
    dir: PathBuf,
    child: Child,
}

fn pg_bin(name: &str) -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    versions.sort();
    versions
        .last()
        .map(|v| v.join("bin").join(name))
        .filter(|p| p.exists())
        .unwrap_or_else(|| panic!("Debian's postgresql is not installed (no /usr/lib/postgresql/*/bin/{name}); run scripts/setup.sh"))
}

/// A command run as the `postgres` user when we are root (PostgreSQL refuses to run as root).
fn as_postgres(bin: &Path) -> Command {
    use std::os::unix::process::CommandExt;
    let mut c = Command::new(bin);
    if nix::unistd::getuid().is_root() {
        let user = nix::unistd::User::from_name("postgres")
            .ok()
            .flatten()
            .expect("the postgres user exists (Debian's postgresql package makes it)");
        c.uid(user.uid.as_raw()).gid(user.gid.as_raw());
    }
    c.stdin(Stdio::null());
    c
}

impl Postgres {
    pub fn start() -> Postgres {
        let dir = std::env::temp_dir().join(format!(
            "baetyl-pg-{}",
            baetyl_agent::crypto::random_token(6)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        if nix::unistd::getuid().is_root() {
            let user = nix::unistd::User::from_name("postgres")
                .ok()
                .flatten()
                .expect("the postgres user exists");
            nix::unistd::chown(&dir, Some(user.uid), Some(user.gid)).unwrap();
        }
        let data = dir.join("data");
        let out = as_postgres(&pg_bin("initdb"))
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
                "-D",
            ])
            .arg(&data)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = baetyl_testkit::free_port();
        let log = std::fs::File::create(dir.join("postgres.log")).unwrap();
        let child = as_postgres(&pg_bin("postgres"))
            .arg("-D")
            .arg(&data)
            .args([
                "-p",
                &port.to_string(),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
                "-c",
                "max_connections=200",
            ])
            .arg("-k")
            .arg(&dir)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let pg = Postgres {
            url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            dir,
            child,
        };
        let ready = baetyl_testkit::wait::poll(Duration::from_secs(30), || {
            as_postgres(&pg_bin("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &port.to_string()])
                .output()
                .is_ok_and(|o| o.status.success())
        });
        assert!(
            ready.is_ok(),
            "PostgreSQL did not start: {}",
            std::fs::read_to_string(pg.dir.join("postgres.log")).unwrap_or_default()
        );
        pg
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // SIGINT: PostgreSQL's fast shutdown.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
