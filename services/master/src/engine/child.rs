//! What the native engine does in a new child between fork and exec: join the instance's cgroup, take the
//! service's descriptor limit, drop to the service's user. Only async-signal-safe system calls run there;
//! everything they need is prepared before the fork.

use std::os::fd::RawFd;

/// The user and groups an instance runs as (per-service users).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (the API socket's group).
    pub groups: Vec<u32>,
    /// The group of its log files: the cloud agent's (it reports logs to the cloud) when the agent runs
    /// under a user of its own, else `gid`.
    pub log_gid: u32,
}

/// The setup of one child.
#[derive(Debug, Clone)]
pub struct ChildSetup {
    /// An open `cgroup.procs` of the instance's cgroup, to write the child into.
    pub cgroup_procs: Option<RawFd>,
    /// `RLIMIT_NOFILE` (soft, hard).
    pub nofile: (u64, u64),
    /// Who the child becomes; None keeps the master's user.
    pub credentials: Option<Credentials>,
}

impl ChildSetup {
    /// Installs the setup on `cmd`, to run in the child before exec.
    ///
    /// # Safety
    /// `cgroup_procs`, when set, must stay open until `cmd` has been spawned.
    pub unsafe fn install(self, cmd: &mut tokio::process::Command) {
        // SAFETY: the closure runs in the forked child and only makes async-signal-safe system calls
        // (write, setrlimit, setgroups, setgid, setuid, prctl) on data prepared before the fork; the
        // caller keeps the cgroup fd open until spawn returns.
        unsafe {
            cmd.pre_exec(move || self.apply());
        }
    }

    fn apply(&self) -> std::io::Result<()> {
        let check = |r: libc::c_int| {
            if r < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(())
            }
        };
        if let Some(fd) = self.cgroup_procs {
            // SAFETY: `fd` is open (the caller's promise); write(2) reads one byte of a static.
            let r = unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) };
            check(if r < 0 { -1 } else { 0 })?;
        }
        let limit = libc::rlimit {
            rlim_cur: self.nofile.0,
            rlim_max: self.nofile.1,
        };
        // SAFETY: setrlimit reads the struct, which lives across the call.
        check(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) })?;
        if let Some(c) = &self.credentials {
            // Groups first, then the group id, then the user id: after setuid nothing else may change.
            // SAFETY: the pointer and length describe `c.groups`, allocated before the fork.
            check(unsafe { libc::setgroups(c.groups.len(), c.groups.as_ptr()) })?;
            // SAFETY: plain system calls on integers.
            check(unsafe { libc::setgid(c.gid) })?;
            check(unsafe { libc::setuid(c.uid) })?;
            // A service cannot regain privileges through set-user-id programs.
            // SAFETY: prctl with integer arguments.
            check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) })?;
        }
        Ok(())
    }
}
