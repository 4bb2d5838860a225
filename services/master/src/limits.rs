//! Descriptor limits: the master's own (raised to the hard limit at start, so it can supervise many
//! services and serve many API clients) and each service's (`ulimits.nofile`, or a default a busy service
//! such as the hub can rely on and size its connection cap below).

use std::io;

/// The default soft limit of a service never exceeds this (a service that wants more says so in
/// `ulimits.nofile`).
pub const DEFAULT_SERVICE_SOFT_CAP: u64 = 65536;

/// This process's (soft, hard) `RLIMIT_NOFILE`.
pub fn nofile() -> io::Result<(u64, u64)> {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we pass, which lives across the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((l.rlim_cur, l.rlim_max))
}

/// Raises this process's soft descriptor limit to its hard limit; answers the (soft, hard) it now has.
pub fn raise_nofile() -> io::Result<(u64, u64)> {
    let (soft, hard) = nofile()?;
    if soft < hard {
        let l = libc::rlimit {
            rlim_cur: hard,
            rlim_max: hard,
        };
        // SAFETY: setrlimit only reads the struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &l) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    nofile()
}

/// The (soft, hard) limit a service gets when its application does not set `ulimits.nofile`: the
/// master's hard limit as the hard limit, and as the soft one capped at [`DEFAULT_SERVICE_SOFT_CAP`].
pub fn default_service_nofile(master_hard: u64) -> (u64, u64) {
    (master_hard.min(DEFAULT_SERVICE_SOFT_CAP), master_hard)
}

/// The most descriptors the kernel lets any process have (`/proc/sys/fs/nr_open`), when it says.
pub fn nr_open() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The (soft, hard) descriptor limit an instance of `spec` gets, on either engine: its `ulimits.nofile`, or
/// [`default_service_nofile`] of the master's hard limit.
pub fn service_nofile(spec: &crate::config::ServiceSpec) -> (u64, u64) {
    match spec.ulimits.nofile {
        Some(l) => (l.soft, l.hard),
        None => {
            let master_hard = nofile().map(|(_, h)| h).unwrap_or(1024);
            default_service_nofile(master_hard)
        }
    }
}

/// Refuses a `ulimits.nofile` the system cannot give: above the kernel's maximum, or, when `master_sets_it`
/// (native: the master's child inherits and lowers its own limit), above the master's own hard limit when the
/// master cannot raise it (not root). containerd's runtime sets the limit as root, so there only the kernel's
/// maximum applies.
pub fn check_service_nofile(
    service: &str,
    spec: &crate::config::ServiceSpec,
    master_sets_it: bool,
) -> crate::error::Result<()> {
    use crate::error::MasterError;
    let Some(asked) = spec.ulimits.nofile else {
        return Ok(());
    };
    let too_high = |limit: u64, what: &str| MasterError::UlimitTooHigh {
        service: service.to_string(),
        hard: asked.hard,
        limit,
        what: what.to_string(),
    };
    if let Some(max) = nr_open()
        && asked.hard > max
    {
        return Err(too_high(max, "the kernel's maximum (/proc/sys/fs/nr_open)"));
    }
    if !master_sets_it {
        return Ok(());
    }
    let (_, master_hard) = nofile().map_err(|e| MasterError::io("getrlimit", e))?;
    if !nix::unistd::geteuid().is_root() && asked.hard > master_hard {
        return Err(too_high(
            master_hard,
            "the master's own hard limit (only a master running as root can raise it)",
        ));
    }
    Ok(())
}
