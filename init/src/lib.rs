//! baetyl's PID 1: everything between the kernel starting `/init` and `baetyl master` running, and the orderly
//! way back to reboot(2).
//!
//! Boot, in order ([`boot::Init::boot`]): re-root out of the initramfs (so runc can pivot_root later), mount the API
//! filesystems (/proc, /sys, /dev, /dev/pts, /run, /tmp, cgroup2), load the image's kernel modules with finit_module in
//! the listed (dependency) order (with a `root` configured: /proc, /sys, /dev, the modules, then switch_root into the
//! read-only root partition instead of the re-root, then the other mounts), set the hostname, bring up loopback and a
//! static IPv4 interface, mount the data partition found by GPT name or ext4 label (growing partition and filesystem to
//! the end of a larger medium), then the datasets (read-only) and volumes (read-write) of the config. Then start
//! containerd when the master's conf.yml selects the containerd engine ([`containerd`]: waited for, restarted
//! with backoff), then `baetyl master`, restart it with backoff when it exits, and reap every orphan ([`master::Master::supervise`]). On
//! SIGTERM/SIGINT (reboot) or SIGPWR/SIGUSR2 (power off) it shuts down in order ([`boot::Init::shutdown`]): master
//! first (SIGTERM, grace, SIGKILL), then every other process, sync, unmount in reverse order, reboot(2).
//!
//! Layout: [`config`] (YAML file + `baetyl.*` kernel parameters), [`sys`] (the side effects behind the
//! [`sys::System`] trait: the kernel, a dry-run logger, a recorder in tests), [`mounts`] and [`modules`] (what to
//! mount and load), [`gpt`] (growing the data partition), [`net`] (loopback, static IPv4), [`process`] (signals,
//! reaping, backoff), [`boot`] (the boot and shutdown steps in order), [`master`] (the master's supervision:
//! start, restart with backoff, stop), [`log`] (console + /dev/kmsg).
//!
//! PID 1 must not die: nothing here unwraps, errors are logged and the boot goes on, and [`run_cli`] catches a
//! panic as a last resort. Outside a VM, `--dry` (log side effects, keep processes real) and `--root DIR` (real
//! mounts under DIR, as PID 1 of `unshare --pid --fork --mount-proc`) make the same code testable.

pub mod boot;
pub mod config;
pub mod containerd;
pub mod error;
pub mod fsck;
pub mod gpt;
pub mod log;
pub mod master;
pub mod modules;
pub mod mounts;
pub mod net;
pub mod process;
pub mod safe_mode;
pub mod sys;
pub mod trial;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use error::{InitError, SysError};
pub use sys::PowerAction;

use boot::{Init, Mode};
use log::{error, info, warning};
use master::Master;
use process::SignalWatch;
use sys::{DrySystem, LinuxSystem, System};

/// Exit status of a run that could not call reboot(2) (dry run) and wanted to power off.
pub const EXIT_POWEROFF: i32 = 0;
/// Exit status of a run that could not call reboot(2) (dry run) and wanted to reboot.
pub const EXIT_REBOOT: i32 = 3;
/// Exit status when init could not start (bad arguments, not PID 1 without --dry).
pub const EXIT_FAILED: i32 = 1;

/// Arguments of `baetyl init`. The kernel starts it with none.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct InitArgs {
    /// Config file; `baetyl.config=` on the kernel command line takes precedence.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Where to read the kernel command line (`baetyl.*` overrides) from.
    #[arg(long, value_name = "FILE", default_value = "/proc/cmdline")]
    pub cmdline: PathBuf,
    /// Log mounts, module loads, hostname and reboot instead of doing them; processes, signals and reaping stay
    /// real. Allowed when not PID 1 (init then becomes a child subreaper).
    #[arg(long)]
    pub dry: bool,
    /// Perform the mounts under DIR instead of / (tests, as PID 1 of a private mount and PID namespace).
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
}

/// Runs init to the end. As PID 1 this returns only if reboot(2) is impossible; otherwise the status to exit
/// with ([`EXIT_POWEROFF`], [`EXIT_REBOOT`], [`EXIT_FAILED`]). Never panics.
pub fn run_cli(args: InitArgs) -> i32 {
    let pid1 = nix::unistd::getpid().as_raw() == 1;
    let real = !args.dry;
    match std::panic::catch_unwind(move || run(args)) {
        Ok(Ok(code)) => code,
        Ok(Err(e)) => {
            error!("{e}");
            if pid1 && real {
                halt_forever()
            }
            EXIT_FAILED
        }
        Err(_) => {
            error!("internal error (panic); this is a bug");
            if pid1 && real {
                halt_forever()
            }
            EXIT_FAILED
        }
    }
}

/// PID 1 exiting panics the kernel; when even reboot(2) failed, stay alive and keep reaping.
fn halt_forever() -> ! {
    error!("halted: PID 1 stays alive and reaps; power the machine off");
    loop {
        let _ = process::reap_all();
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn run(args: InitArgs) -> Result<i32, InitError> {
    let pid = nix::unistd::getpid().as_raw();
    let pid1 = pid == 1;
    if !pid1 && !args.dry {
        return Err(InitError::NotPid1 { pid });
    }
    let root = args.root.clone().unwrap_or_else(|| PathBuf::from("/"));
    let real_root = root == Path::new("/");
    if !real_root && !root.is_dir() {
        return Err(InitError::BadRoot(root));
    }
    if !pid1 {
        // Orphans of our children come to us instead of the host's init, so reaping is testable without a
        // PID namespace.
        if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
            warning!("cannot become a child subreaper: {e}");
        }
    }
    // Signals first: a SIGTERM during boot is honoured once boot is done.
    let mut signals = SignalWatch::new().map_err(InitError::Signals)?;
    let vm = pid1 && !args.dry && real_root;
    if vm {
        // Ctrl-Alt-Del then sends SIGINT to PID 1 (a reboot) instead of rebooting at once.
        let _ = nix::sys::reboot::set_cad_enabled(false);
    }
    info!(
        "baetyl-init {} starting as pid {pid}{}{}",
        env!("CARGO_PKG_VERSION"),
        if args.dry { " (dry run)" } else { "" },
        if real_root {
            String::new()
        } else {
            format!(" (root {})", root.display())
        }
    );

    let cmdline = read_cmdline(&args.cmdline, vm);
    let params = config::baetyl_params(&cmdline);
    let config_path = config::config_path_override(&params)
        .or(args.config.clone())
        .unwrap_or_else(|| PathBuf::from(config::DEFAULT_CONFIG));
    let (cfg, problems) = config::load(&config_path, &params);
    for p in problems {
        warning!("{p}");
    }
    info!("config {}", config_path.display());

    let mode = Mode {
        pid1,
        may_reroot: !args.dry && real_root,
        may_kmsg: vm,
    };
    let action = if args.dry {
        run_with(DrySystem, cfg, mode, &mut signals)
    } else {
        run_with(LinuxSystem::new(root), cfg, mode, &mut signals)
    };
    if pid1 && !args.dry {
        // reboot(2) returned: it failed.
        halt_forever()
    }
    Ok(match action {
        PowerAction::PowerOff => EXIT_POWEROFF,
        PowerAction::Reboot => EXIT_REBOOT,
    })
}

fn run_with<S: System>(
    sys: S,
    cfg: config::InitConfig,
    mode: Mode,
    signals: &mut SignalWatch,
) -> PowerAction {
    let mut master = Master::new(&cfg);
    let master_cfg = cfg.master.clone();
    let trial_cfg = cfg.trial.clone();
    let nofile = cfg.master.nofile;
    let mut init = Init::new(sys, cfg, mode);
    init.boot();
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open").ok();
    match process::raise_nofile(nofile, nr_open.as_deref()) {
        Ok((n, false)) => {
            info!("descriptor limit (RLIMIT_NOFILE) {n} for the master and its services")
        }
        Ok((n, true)) => warning!(
            "descriptor limit (RLIMIT_NOFILE) {n} for the master and its services: the hard limit cannot be \
             raised to {nofile} here (no CAP_SYS_RESOURCE)"
        ),
        Err(e) => warning!(
            "cannot raise the descriptor limit to {nofile}: {e}; the master keeps the kernel's"
        ),
    }
    if init.safe_mode.is_some() {
        let marker = init.sys.host_path(Path::new(safe_mode::MARKER));
        master.add_env(baetyl_sdk::env::SAFE_MODE, &marker.to_string_lossy());
    }
    if mode.may_kmsg {
        reopen_console_if_closed();
    }
    // Once the root and data partitions are there: containerd before a master in containerd mode.
    let mut containerd = containerd::Containerd::for_master(&master_cfg);
    if let Some(c) = containerd.as_mut() {
        c.start(std::time::Instant::now());
        c.wait_ready(containerd::READY_TIMEOUT);
    }
    let mut trial = if mode.may_kmsg {
        trial::mount_efivarfs();
        trial::counted_entry(Path::new(trial::EFIVARS)).map(|entry| {
            info!(
                "booted entry {} on trial: the master must mark it good within {} (or it is rebooted)",
                entry.file_name(),
                trial_cfg.timeout
            );
            trial::Trial::new(
                entry,
                &trial_cfg,
                std::time::Instant::now(),
                PathBuf::from(baetyl_sdk::os::BLESSED_FILE),
            )
        })
    } else {
        None
    };
    info!("boot done; supervising");
    let action = master.supervise_with(signals, &mut |now, starts| {
        let watch = match trial.as_mut().map(|t| t.check(now, starts)) {
            Some(trial::Verdict::Wait(d)) => Some(d),
            Some(trial::Verdict::Good) => {
                info!("this boot was marked good");
                trial = None;
                None
            }
            Some(trial::Verdict::Reboot(why)) => {
                error!("{why}");
                trial = None;
                // Handled by the loop as any reboot request: the master and every process are stopped first.
                if let Err(e) = nix::sys::signal::raise(nix::sys::signal::Signal::SIGTERM) {
                    error!("cannot request the reboot: {e}");
                }
                Some(Duration::from_millis(10))
            }
            None => None,
        };
        let other = containerd.as_mut().and_then(|c| c.tick(now));
        match (watch, other) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    });
    init.shutdown(action, signals, &mut master);
    action
}

/// Reads the kernel command line. The kernel starts PID 1 before /proc exists, so on a real boot /proc is
/// mounted for the read and unmounted again (it is mounted for good after the re-root).
fn read_cmdline(path: &Path, vm: bool) -> String {
    if let Ok(text) = std::fs::read_to_string(path) {
        return text;
    }
    if vm && path == Path::new("/proc/cmdline") {
        let _ = std::fs::create_dir_all("/proc");
        if nix::mount::mount(
            Some("proc"),
            "/proc",
            Some("proc"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .is_ok()
        {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let _ = nix::mount::umount("/proc");
            return text;
        }
    }
    warning!(
        "cannot read {}; no kernel command-line overrides",
        path.display()
    );
    String::new()
}

/// The kernel gives PID 1 /dev/console as fds 0-2 only if the initramfs has that node; otherwise open it from
/// devtmpfs now so the master's output reaches the console.
fn reopen_console_if_closed() {
    // SAFETY: fcntl(F_GETFD) only queries the descriptor table.
    let closed = unsafe { libc::fcntl(2, libc::F_GETFD) } == -1;
    if !closed {
        return;
    }
    if let Ok(console) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/console")
    {
        use std::os::fd::AsRawFd;
        for fd in 0..3 {
            // SAFETY: dup2 onto 0-2, which are closed (checked above); `console` stays open for the call.
            unsafe { libc::dup2(console.as_raw_fd(), fd) };
        }
        info!("console reopened on /dev/console");
    }
}
