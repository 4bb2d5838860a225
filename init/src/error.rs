//! Errors of the init crate. PID 1 logs them and carries on; only argument errors end `run_cli`.

use std::path::PathBuf;

use nix::errno::Errno;

/// A side effect (syscall) that failed; the variant names what was attempted and on which path.
#[derive(Debug, thiserror::Error)]
pub enum SysError {
    #[error("mount {fstype} {device} on {target}: {errno}")]
    Mount {
        device: String,
        target: PathBuf,
        fstype: String,
        errno: Errno,
    },
    #[error("unmount {target}: {errno}")]
    Unmount { target: PathBuf, errno: Errno },
    #[error("create directory {path}: {source}")]
    MakeDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("open module {path}: {source}")]
    ModuleOpen {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("load module {path}: {errno}")]
    ModuleLoad { path: PathBuf, errno: Errno },
    #[error("set hostname `{name}`: {errno}")]
    Hostname { name: String, errno: Errno },
    #[error("re-root onto {newroot}: {step}: {errno}")]
    Reroot {
        newroot: PathBuf,
        step: &'static str,
        errno: Errno,
    },
    #[error("switch root to {newroot}: {step}: {errno}")]
    SwitchRoot {
        newroot: PathBuf,
        step: String,
        errno: Errno,
    },
    #[error("reboot(2) {action}: {errno}")]
    Reboot { action: String, errno: Errno },
    #[error("run {program}: {source}")]
    Spawn {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("write {path}: {source}")]
    WriteFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {errno}")]
    Other { what: String, errno: Errno },
}

/// Failures that stop `run_cli` before the main loop (bad arguments, wrong environment).
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error(
        "baetyl-init is not PID 1 (pid {pid}): it would mount and power off the host; run it as PID 1 \
         (the kernel's init or `unshare --pid --fork --mount-proc`) or pass --dry"
    )]
    NotPid1 { pid: i32 },
    #[error(
        "--root {0} is only allowed with a private mount namespace as PID 1; it must be an existing directory"
    )]
    BadRoot(PathBuf),
    #[error("signal setup: {0}")]
    Signals(#[source] std::io::Error),
    #[error(transparent)]
    Config(#[from] baetyl_sdk::ConfigError),
}
