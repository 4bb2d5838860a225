//! Per-service users: on a device every service runs under a uid/gid of its own, so one service cannot read
//! another's token (`/proc/<pid>/environ`), the operator token, or files it was not given.
//!
//! When it is on (conf.yml `users.mode`: `auto` = when the master runs as root under `baetyl init`), a
//! service gets the ids conf.yml `users.services` fixes for it, or ids allocated once from `users.ids`
//! (uid = gid, skipping ids the host's user and group databases already use) and remembered in
//! `var/db/baetyl/users.json`, so its files keep their owner across restarts and updates. The first id of the
//! range is the group of the API socket: every service gets it as a supplementary group. A service runs as
//! root only when its application asks (`user: root`) and conf.yml `users.root` lists it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::config::{ServiceSpec, UsersConfig, UsersMode};
use crate::engine::child::Credentials;
use crate::error::{MasterError, Result};

/// Where allocated ids are remembered, in a work dir.
pub fn users_file(workdir: &Path) -> PathBuf {
    workdir.join("var/db/baetyl/users.json")
}

/// Whether `mode` turns per-service users on for a master with effective uid `euid` and `BAETYL_INIT_PID`
/// set or not.
pub fn enabled(mode: UsersMode, euid_is_root: bool, under_init: bool) -> bool {
    match mode {
        UsersMode::On => true,
        UsersMode::Off => false,
        UsersMode::Auto => euid_is_root && under_init,
    }
}

/// Whether `mode` turns per-service users on for this process (its effective uid, `BAETYL_INIT_PID`).
pub fn enabled_here(mode: UsersMode) -> bool {
    enabled(
        mode,
        nix::unistd::geteuid().is_root(),
        std::env::var_os(baetyl_sdk::env::INIT_PID).is_some(),
    )
}

/// The directories of a work dir that services must be able to pass through (to reach their instance
/// dirs, volumes, packages and the API socket), relative to it.
pub const TRAVERSED: &[&str] = &[
    "",
    "var",
    "var/run",
    "var/run/baetyl",
    "var/run/baetyl/services",
    "var/log",
    "var/log/baetyl",
    "var/log/baetyl/services",
    "var/db",
    "var/db/baetyl",
    "var/db/baetyl/volumes",
    "lib",
    "lib/baetyl",
    "lib/baetyl/packages",
];

/// Makes the directories of [`TRAVERSED`] (when missing) and lets every user pass through them (`o+x`;
/// nothing is made readable). A directory another user owns is left alone.
pub fn open_workdir_for_services(workdir: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    let me = nix::unistd::geteuid().as_raw();
    for rel in TRAVERSED {
        let dir = workdir.join(rel);
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .mode(0o755)
                .create(&dir)
                .map_err(|e| MasterError::io(&dir, e))?;
        }
        let md = std::fs::symlink_metadata(&dir).map_err(|e| MasterError::io(&dir, e))?;
        if md.is_dir() && md.uid() == me && md.mode() & 0o001 == 0 {
            let mode = (md.mode() & 0o7777) | 0o001;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode))
                .map_err(|e| MasterError::io(&dir, e))?;
        }
    }
    Ok(())
}

pub struct Users {
    on: bool,
    cfg: UsersConfig,
    /// The services with the agent role (conf.yml `server.agents`): the first one's group may read what the
    /// master keeps for agents.
    agents: Vec<String>,
    file: PathBuf,
    allocated: Mutex<BTreeMap<String, u32>>,
}

impl Users {
    /// The users of a master in `workdir`; `on` as [`enabled`] decided. Allocations made earlier are read
    /// from the work dir (an unreadable file is reported and allocation starts over, skipping nothing that
    /// exists on disk: ids of files already owned stay as they are).
    pub fn new(workdir: &Path, cfg: &UsersConfig, agents: &[String], on: bool) -> Users {
        let file = users_file(workdir);
        let allocated = match std::fs::read(&file) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::error!(file = %file.display(), "unreadable ({e}); services get newly allocated ids");
                BTreeMap::new()
            }),
            Err(_) => BTreeMap::new(),
        };
        Users {
            on,
            cfg: cfg.clone(),
            agents: agents.to_vec(),
            file,
            allocated: Mutex::new(allocated),
        }
    }

    pub fn on(&self) -> bool {
        self.on
    }

    /// The group of the API socket (every service's supplementary group).
    pub fn api_gid(&self) -> u32 {
        self.cfg.ids.first
    }

    /// The group that may read what the master writes for the cloud agent and no service may: the running
    /// application (application.yml and its `.old`: every service's environment, secrets included), the OTA
    /// log and the instance logs. It is the group of the first service conf.yml `server.agents` names, so
    /// the agent can run under a user of its own. None when users are off (everything runs as the master's
    /// user) or no agent is named: those files are then the master's alone.
    pub fn agent_gid(&self) -> Option<u32> {
        if !self.on {
            return None;
        }
        let agent = self.agents.first()?;
        match self.cfg.services.get(agent) {
            Some(fixed) => Some(fixed.gid),
            None => self
                .allocate(agent)
                .inspect_err(|e| tracing::warn!("no group for the agent's files: {e}"))
                .ok(),
        }
    }

    /// Whether `service` has the agent role.
    pub fn is_agent(&self, service: &str) -> bool {
        self.agents.iter().any(|a| a == service)
    }

    /// What the policy says about `service`: refused when its application asks for root and conf.yml does
    /// not allow it. Allocates its ids when it has none yet.
    pub fn check(&self, service: &str, spec: &ServiceSpec) -> Result<()> {
        self.credentials(service, spec).map(|_| ())
    }

    /// The user `service`'s instances run as: None when per-service users are off, or for a service allowed
    /// to run as root.
    pub fn credentials(&self, service: &str, spec: &ServiceSpec) -> Result<Option<Credentials>> {
        if !self.on {
            return Ok(None);
        }
        if spec.wants_root() {
            if self.cfg.root.iter().any(|s| s == service) {
                return Ok(None);
            }
            return Err(MasterError::RootNotAllowed {
                service: service.to_string(),
            });
        }
        let (uid, gid) = match self.cfg.services.get(service) {
            Some(fixed) => (fixed.uid, fixed.gid),
            None => {
                let id = self.allocate(service)?;
                (id, id)
            }
        };
        Ok(Some(Credentials {
            uid,
            gid,
            groups: vec![self.api_gid()],
            log_gid: self.agent_gid().unwrap_or(gid),
        }))
    }

    fn allocate(&self, service: &str) -> Result<u32> {
        let mut allocated = self.allocated.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(id) = allocated.get(service) {
            return Ok(*id);
        }
        let range = self.cfg.ids;
        let taken = |id: u32| {
            allocated.values().any(|&a| a == id)
                || self
                    .cfg
                    .services
                    .values()
                    .any(|f| f.uid == id || f.gid == id)
                || host_uses(id)
        };
        let id = (range.first + 1..=range.last)
            .find(|&id| !taken(id))
            .ok_or_else(|| MasterError::NoFreeId {
                service: service.to_string(),
                range: String::from(range),
            })?;
        allocated.insert(service.to_string(), id);
        let text = serde_json::to_vec_pretty(&*allocated).unwrap_or_default();
        if let Some(dir) = self.file.parent() {
            std::fs::create_dir_all(dir).map_err(|e| MasterError::io(dir, e))?;
        }
        baetyl_sdk::fs::write_atomic(&self.file, &text, 0o600)
            .map_err(|e| MasterError::io(&self.file, e))?;
        tracing::info!(service, uid = id, gid = id, "allocated the service's user");
        Ok(id)
    }
}

/// Whether the host's user or group database already has `id` (a system account of a development host).
fn host_uses(id: u32) -> bool {
    use nix::unistd::{Gid, Group, Uid, User};
    matches!(User::from_uid(Uid::from_raw(id)), Ok(Some(_)))
        || matches!(Group::from_gid(Gid::from_raw(id)), Ok(Some(_)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_rig::Rig;

    #[test]
    fn auto_is_on_for_root_under_init_only() {
        assert!(enabled(UsersMode::Auto, true, true));
        assert!(!enabled(UsersMode::Auto, true, false));
        assert!(!enabled(UsersMode::Auto, false, true));
        assert!(enabled(UsersMode::On, false, false));
        assert!(!enabled(UsersMode::Off, true, true));
    }

    fn uid_of(r: &Rig, service: &str) -> Option<(u32, u32, Vec<u32>)> {
        r.fake
            .spec_of(service, service)
            .and_then(|s| s.user)
            .map(|c| (c.uid, c.gid, c.groups))
    }

    #[tokio::test(start_paused = true)]
    async fn each_service_gets_its_own_ids_which_it_keeps() {
        let conf =
            "users: {mode: on, ids: 30000-30100, services: {fixed: {uid: 4000, gid: 4001}}}\n";
        let app = "services:\n  a: {image: svc}\n  b: {image: svc}\n  fixed: {image: svc}\n";
        let r = Rig::new(conf);
        r.run(app).await;
        let (a, b) = (uid_of(&r, "a").expect("a"), uid_of(&r, "b").expect("b"));
        assert_eq!(a, (30001, 30001, vec![30000]));
        assert_eq!(b, (30002, 30002, vec![30000]));
        assert_eq!(uid_of(&r, "fixed"), Some((4000, 4001, vec![30000])));
        r.sup.stop_all().await;
        // Another master on the same work dir, with a service added before them: the old ones keep theirs.
        let again = Rig::in_dir(conf, r.dir);
        again
            .run("services:\n  0new: {image: svc}\n  a: {image: svc}\n  b: {image: svc}\n")
            .await;
        assert_eq!(uid_of(&again, "a"), Some(a));
        assert_eq!(uid_of(&again, "b"), Some(b));
        assert_eq!(uid_of(&again, "0new").map(|c| c.0), Some(30003));
    }

    #[tokio::test(start_paused = true)]
    async fn ids_the_host_uses_are_skipped_and_a_full_range_is_an_error() {
        // 65534 is `nobody` (and `nogroup`) on Debian: the range leaves one free id after the API group.
        let r = Rig::new("users: {mode: on, ids: 65533-65535}\n");
        r.run("services:\n  a: {image: svc}\n  b: {image: svc}\n")
            .await;
        assert_eq!(uid_of(&r, "a").map(|c| c.0), Some(65535));
        assert_eq!(r.fake.spec_of("b", "b").map(|s| s.service), None);
        let e = r.sup.error();
        assert!(e.contains("`b`") && e.contains("users.ids"), "{e}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_writable_volume_inside_another_services_is_refused_unless_an_agents() {
        let app = "services:\n  outer: {image: svc, volumes: ['all:/all']}\n  inner: {image: svc, volumes: ['part:/p']}\nvolumes:\n  all: {path: var/db/all}\n  part: {path: var/db/all/part}\n";
        let r = Rig::new("users: {mode: on}\n");
        r.run(app).await;
        let e = r.sup.error();
        assert!(e.contains("overlaps") && e.contains("one writer"), "{e}");
        // The agent's staging area holds the volumes it staged: it is trusted with them.
        let r = Rig::new("users: {mode: on}\nserver: {agents: [outer]}\n");
        r.run(app).await;
        assert!(
            r.fake.spec_of("inner", "inner").is_some(),
            "{}",
            r.sup.error()
        );
        assert!(r.fake.spec_of("outer", "outer").is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn root_needs_both_the_application_and_the_master_config() {
        let app =
            "services:\n  admin: {image: svc, user: root}\n  other: {image: svc, user: root}\n";
        let r = Rig::new("users: {mode: on, root: [admin]}\n");
        r.run(app).await;
        let admin = r.fake.spec_of("admin", "admin").expect("admin runs");
        assert_eq!(admin.user, None, "as the master's user: root");
        assert!(r.fake.spec_of("other", "other").is_none());
        let e = r.sup.error();
        assert!(e.contains("`other`") && e.contains("users.root"), "{e}");
        // Off (a development host): everything runs as the master's user, whatever the application says.
        let r = Rig::new("users: {mode: off}\n");
        r.run(app).await;
        assert_eq!(r.fake.spec_of("other", "other").map(|s| s.user), Some(None));
    }
}
