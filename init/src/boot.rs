//! Boot and shutdown: the ordered steps of PID 1 over a [`System`] (re-root or switch_root, API filesystems,
//! modules, hostname, network, data partition, datasets and volumes), and in reverse at the end (the master,
//! every other process, sync, unmounts, reboot(2)). What runs in between, the master's supervision, is
//! [`crate::master`].

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::mount::MsFlags;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::config::{CheckMode, DataConfig, InitConfig, RerootMode};
use crate::error::SysError;
use crate::fsck;
use crate::log::{error, info, warning};
use crate::master::Master;
use crate::modules;
use crate::mounts;
use crate::process::{SignalWatch, after, descendants, describe, reap_all};
use crate::safe_mode::{self, SafeMode};
use crate::sys::{ModuleLoad, MountSpec, PowerAction, System};

/// Where the initramfs root is bind-mounted before it is moved over `/`.
pub const NEWROOT: &str = "/.baetyl-root";

/// Where the configured root filesystem is mounted (read-only) in the initramfs before it becomes `/`.
pub const SWITCH_ROOT: &str = "/.baetyl-newroot";

/// Mounted before a switch_root: what loading modules and finding the root device need.
const BEFORE_SWITCH: [&str; 3] = ["/proc", "/sys", "/dev"];

/// API filesystems moved into the new root when mounted (their submounts, e.g. /dev/pts, move with them).
const MOVED_ON_SWITCH: [&str; 4] = ["/dev", "/proc", "/sys", "/run"];

/// What boot is allowed to do beyond the [`System`] calls.
#[derive(Debug, Clone, Copy)]
pub struct Mode {
    /// We are PID 1: `kill(-1)` reaches exactly our processes.
    pub pid1: bool,
    /// Re-rooting is possible (the real `/`, not a test root or dry run).
    pub may_reroot: bool,
    /// /dev/kmsg is ours to write (not a test root or dry run).
    pub may_kmsg: bool,
}

pub struct Init<S: System> {
    pub sys: S,
    pub cfg: InitConfig,
    mode: Mode,
    /// Device paths we mounted, in mount order; unmounted in reverse at shutdown.
    mounted: Vec<PathBuf>,
    /// Set when the data partition could not be used (see [`crate::safe_mode`]).
    pub safe_mode: Option<SafeMode>,
}

impl<S: System> Init<S> {
    pub fn new(sys: S, cfg: InitConfig, mode: Mode) -> Self {
        Init {
            sys,
            cfg,
            mode,
            mounted: Vec::new(),
            safe_mode: None,
        }
    }

    pub fn mounted(&self) -> &[PathBuf] {
        &self.mounted
    }

    /// Re-roots out of an initramfs (when configured and possible). Runs first, or after a failed switch_root
    /// (the bind of `/` is recursive, so /proc, /sys and /dev mounted by then come along).
    pub fn reroot(&mut self) {
        let wanted = match self.cfg.reroot {
            RerootMode::Never => false,
            RerootMode::Always => true,
            RerootMode::Auto => mounts::root_is_initramfs(),
        };
        if !wanted {
            return;
        }
        if !self.mode.may_reroot {
            info!("re-root skipped (test root or dry run)");
            return;
        }
        match self.sys.reroot(Path::new(NEWROOT)) {
            Ok(()) => info!("re-rooted: / is now a mount (runc can pivot_root)"),
            Err(e) => error!("{e}; continuing on the initramfs root"),
        }
    }

    fn mount_tracked(&mut self, spec: &MountSpec) -> bool {
        if let Err(e) = self.sys.make_dir(&spec.target) {
            log_make_dir_error(&e, &format!("{} not mounted", spec.target.display()));
            return false;
        }
        match self.sys.mount(spec) {
            Ok(()) => {
                self.mounted.push(spec.target.clone());
                true
            }
            Err(e) => {
                error!("{e}");
                false
            }
        }
    }

    /// /proc, /sys, /dev, /dev/pts, /run, /tmp, cgroup2: each skipped if already a mount point.
    pub fn mount_base(&mut self) {
        self.mount_base_where(|_| true);
    }

    /// The base mounts whose target is `wanted`; ours already (mounted before a switch_root) are skipped quietly.
    fn mount_base_where(&mut self, wanted: impl Fn(&Path) -> bool) {
        for spec in mounts::base_mounts() {
            if !wanted(&spec.target) || self.mounted.contains(&spec.target) {
                continue;
            }
            if self.sys.is_mounted(&spec.target) {
                info!("{} is already mounted", spec.target.display());
                continue;
            }
            if self.mount_tracked(&spec) {
                info!("mounted {} on {}", spec.fstype, spec.target.display());
            }
            if spec.target == Path::new("/dev") && self.mode.may_kmsg && self.cfg.kmsg {
                crate::log::enable_kmsg(Path::new("/dev/kmsg"));
            }
        }
    }

    pub fn load_modules(&mut self) {
        if self.cfg.modules.load.is_empty() {
            return;
        }
        let dir = self
            .cfg
            .modules
            .dir
            .clone()
            .unwrap_or_else(modules::default_dir);
        let host_dir = self.sys.host_path(&dir);
        let (mut loaded, mut present, mut failed) = (0, 0, 0);
        for entry in self.cfg.modules.load.clone() {
            let Some(path) = modules::resolve(&host_dir, &entry) else {
                error!("module {entry}: no {entry}.ko under {}", dir.display());
                failed += 1;
                continue;
            };
            match self.sys.load_module(&path) {
                Ok(ModuleLoad::Loaded) => {
                    info!("module {entry} loaded");
                    loaded += 1;
                }
                Ok(ModuleLoad::AlreadyLoaded) => {
                    info!("module {entry} already loaded");
                    present += 1;
                }
                Err(e) => {
                    error!("{e}");
                    failed += 1;
                }
            }
        }
        info!("modules: {loaded} loaded, {present} already present, {failed} failed");
    }

    pub fn set_hostname(&mut self) {
        if let Some(name) = self.cfg.hostname.clone() {
            match self.sys.set_hostname(&name) {
                Ok(()) => info!("hostname {name}"),
                Err(e) => error!("{e}"),
            }
        }
    }

    /// The block device whose GPT partition name or filesystem label is `label`, waiting up to `wait` for it.
    fn wait_for_label(&self, label: &str, wait: Duration) -> Option<PathBuf> {
        let sys_block = self.sys.host_path(Path::new("/sys/class/block"));
        let dev = self.sys.host_path(Path::new("/dev"));
        wait_for(wait, || mounts::find_by_label(&sys_block, &dev, label))
    }

    /// Switches from the initramfs into the configured read-only root filesystem: find the device (waiting up to
    /// `root.wait`), mount it read-only on [`SWITCH_ROOT`], move the mounted API filesystems into it, make it `/`
    /// and free the initramfs. True when `/` is now that filesystem; false (logged) when no root is configured
    /// or it cannot be used, and the boot goes on from the initramfs.
    pub fn switch_root(&mut self) -> bool {
        let Some(root) = self.cfg.root.clone() else {
            return false;
        };
        let wait = root.wait.get();
        let device = match (&root.device, &root.label) {
            (Some(d), _) if d.to_str().is_some_and(|d| d.starts_with("PARTUUID=")) => {
                let partuuid = d.to_string_lossy()["PARTUUID=".len()..].to_string();
                let sys_block = self.sys.host_path(Path::new("/sys/class/block"));
                let dev = self.sys.host_path(Path::new("/dev"));
                wait_for(wait, || {
                    mounts::find_by_partuuid(&sys_block, &dev, &partuuid)
                })
            }
            (Some(d), _) => {
                let host = self.sys.host_path(d);
                wait_for(wait, || host.exists().then(|| host.clone()))
            }
            (None, Some(label)) => self.wait_for_label(label, wait),
            (None, None) => None,
        };
        let Some(device) = device else {
            let check = match &root.device {
                Some(_) => {
                    "check the device path (or the MBR disk signature and partition number of \
                            PARTUUID=SSSSSSSS-PP)"
                        .to_string()
                }
                None => format!(
                    "check that the disk has a GPT partition named `{}` (or a filesystem with that label)",
                    root.label.as_deref().unwrap_or_default()
                ),
            };
            error!(
                "root {}: no such device after {}; {check} and that modules.load has the disk driver \
                 (e.g. virtio_blk); booting on from the initramfs",
                root.describe(),
                root.wait
            );
            return false;
        };
        let newroot = PathBuf::from(SWITCH_ROOT);
        if let Err(e) = self.sys.make_dir(&newroot) {
            error!("root: {e}; booting on from the initramfs");
            return false;
        }
        let spec = MountSpec::new(
            &device.to_string_lossy(),
            &newroot,
            &root.fstype,
            MsFlags::MS_RDONLY,
            "",
        );
        if let Err(e) = self.sys.mount(&spec) {
            error!(
                "root {}: {e}; check that it holds a {} filesystem and that the {} module is in modules.load \
                 (or built into the kernel); booting on from the initramfs",
                device.display(),
                root.fstype,
                root.fstype
            );
            return false;
        }
        let moves: Vec<PathBuf> = MOVED_ON_SWITCH
            .iter()
            .map(PathBuf::from)
            .filter(|p| self.mounted.contains(p) || self.sys.is_mounted(p))
            .collect();
        match self.sys.switch_root(&newroot, &moves) {
            Ok(freed) => {
                let freed = match freed {
                    Some(f) => {
                        let mut t = format!("initramfs freed: {} files", f.files);
                        if f.errors > 0 {
                            t.push_str(&format!(", {} not removable", f.errors));
                        }
                        if f.mounts_kept > 0 {
                            t.push_str(&format!(", {} mount(s) left alone", f.mounts_kept));
                        }
                        t
                    }
                    None => "the old root is not an initramfs: nothing freed".into(),
                };
                let label = root
                    .label
                    .as_ref()
                    .filter(|_| root.device.is_none())
                    .map(|l| format!("{l}, "))
                    .unwrap_or_default();
                info!(
                    "root {} ({label}{}, read-only) is now / ({freed})",
                    device.display(),
                    root.fstype
                );
                true
            }
            Err(e) => {
                error!(
                    "root {}: {e}; booting on from the initramfs",
                    device.display()
                );
                if let Err(e) = self.sys.unmount(&newroot) {
                    warning!("{e}");
                }
                false
            }
        }
    }

    /// The data partition (checked, then mounted), then datasets (read-only) and volumes (read-write) on it. When
    /// a configured data partition cannot be used, the device goes into safe mode ([`crate::safe_mode`]): a
    /// tmpfs on the mount point, no dataset or volume, and the reason in [`Init::safe_mode`].
    pub fn mount_data(&mut self) {
        let mountpoint = match self.cfg.data.clone() {
            Some(data) => {
                if let Err(safe) = self.data_partition(&data) {
                    self.enter_safe_mode(*safe, &data.mountpoint);
                    return;
                }
                data.mountpoint
            }
            None => {
                let mp = PathBuf::from("/var/lib/baetyl");
                if !self.cfg.volumes.is_empty() {
                    self.data_on_tmpfs(&mp);
                }
                mp
            }
        };
        for ds in self.cfg.datasets.clone() {
            let src = mounts::bind_source(&mountpoint, "datasets", &ds);
            if !self.sys.host_path(&src).exists() {
                error!(
                    "dataset {}: {} does not exist; not mounted",
                    ds.name,
                    src.display()
                );
                continue;
            }
            let spec = MountSpec::new(&src.to_string_lossy(), &ds.target, "", MsFlags::MS_BIND, "");
            if self.mount_tracked(&spec) {
                match self.sys.remount_readonly(&ds.target) {
                    Ok(()) => info!("dataset {} (read-only) on {}", ds.name, ds.target.display()),
                    Err(e) => error!("dataset {}: {e}; it is mounted read-write", ds.name),
                }
            }
        }
        for vol in self.cfg.volumes.clone() {
            let src = mounts::bind_source(&mountpoint, "volumes", &vol);
            if let Err(e) = self.sys.make_dir(&src) {
                log_make_dir_error(&e, &format!("volume {} not mounted", vol.name));
                continue;
            }
            let spec = MountSpec::new(
                &src.to_string_lossy(),
                &vol.target,
                "",
                MsFlags::MS_BIND,
                "",
            );
            if self.mount_tracked(&spec) {
                info!(
                    "volume {} (read-write) on {}",
                    vol.name,
                    vol.target.display()
                );
            }
        }
    }

    /// Finds, checks, mounts and grows the data partition; the safe-mode reason when it cannot be used.
    fn data_partition(&mut self, data: &DataConfig) -> Result<(), Box<SafeMode>> {
        let safe = |reason: String, device: Option<&Path>, detail: String| {
            Box::new(SafeMode::new(reason, device, &data.label, detail))
        };
        let device = match &data.device {
            Some(d) => {
                let host = self.sys.host_path(d);
                wait_for(data.wait.get(), || host.exists().then(|| host.clone()))
            }
            None => self.wait_for_label(&data.label, data.wait.get()),
        };
        let Some(device) = device else {
            let what = match &data.device {
                Some(d) => format!("no device {}", d.display()),
                None => format!("no partition or filesystem labelled `{}`", data.label),
            };
            return Err(safe(
                format!("{what} after {}: the data partition is missing", data.wait),
                None,
                String::new(),
            ));
        };
        self.check_data(data, &device)?;
        let spec = MountSpec::new(
            &device.to_string_lossy(),
            &data.mountpoint,
            &data.fstype,
            MsFlags::MS_NOATIME | MsFlags::MS_NODEV | MsFlags::MS_NOSUID,
            "",
        );
        if let Err(e) = self.sys.make_dir(&spec.target) {
            log_make_dir_error(&e, "the data partition is not mounted");
            return Err(safe(
                format!("the data partition's mount point cannot be made: {e}"),
                Some(&device),
                String::new(),
            ));
        }
        if let Err(e) = self.sys.mount(&spec) {
            return Err(safe(
                format!(
                    "the data partition {} ({}) cannot be mounted: {e}",
                    device.display(),
                    data.label
                ),
                Some(&device),
                String::new(),
            ));
        }
        self.mounted.push(spec.target.clone());
        info!(
            "data partition {} ({}) on {}",
            device.display(),
            data.label,
            data.mountpoint.display()
        );
        if data.grow && data.fstype == "ext4" {
            match self.sys.grow_filesystem(&device, &data.mountpoint) {
                Ok(Some((old, new))) => info!(
                    "data filesystem grown from {} MiB to {} MiB to fill {}",
                    old >> 20,
                    new >> 20,
                    device.display()
                ),
                Ok(None) => {}
                Err(e) => warning!("{e}; the data filesystem keeps its size"),
            }
        }
        Ok(())
    }

    /// Runs the checker on the (unmounted) data partition; the safe-mode reason when it must not be used.
    fn check_data(&mut self, data: &DataConfig, device: &Path) -> Result<(), Box<SafeMode>> {
        let Some(args) = fsck::arguments(data.check, &data.fstype, device) else {
            if data.check != CheckMode::Off {
                info!(
                    "data partition {}: no checker for {}; mounting it unchecked",
                    device.display(),
                    data.fstype
                );
            }
            return Ok(());
        };
        // A second pass only for exit status 2 (see `fsck`): at most two runs.
        for pass in 1..=2 {
            info!(
                "checking the data partition {}: {} {}",
                device.display(),
                data.checker.display(),
                args.join(" ")
            );
            let run = match self.sys.run_checker(&data.checker, &args) {
                Ok(run) => run,
                Err(e) => {
                    // An image without its checker is a broken build, not a broken medium: the kernel's journal
                    // replay still protects the filesystem, so it is mounted (as before checks existed).
                    error!(
                        "{e}; the image lacks its filesystem checker: mounting the data partition unchecked"
                    );
                    return Ok(());
                }
            };
            for line in run.output.lines().filter(|l| !l.trim().is_empty()) {
                info!("e2fsck: {line}");
            }
            match fsck::verdict(&run.exit) {
                fsck::Verdict::Clean => {
                    info!("data partition {} is clean", device.display());
                    return Ok(());
                }
                fsck::Verdict::Repaired => {
                    warning!(
                        "data partition {}: e2fsck repaired errors (exit status 1); mounting it",
                        device.display()
                    );
                    return Ok(());
                }
                fsck::Verdict::RepairedRebootWanted if pass == 1 => warning!(
                    "data partition {}: e2fsck repaired errors and asks for a reboot (exit status 2), which \
                     matters for a mounted filesystem; this one was not mounted: checking it once more",
                    device.display()
                ),
                fsck::Verdict::RepairedRebootWanted => {
                    return Err(Box::new(SafeMode::new(
                        format!(
                            "the data partition {} ({}) still needs repairs after two checks",
                            device.display(),
                            data.label
                        ),
                        Some(device),
                        &data.label,
                        run.output,
                    )));
                }
                fsck::Verdict::Failed(why) => {
                    return Err(Box::new(SafeMode::new(
                        format!(
                            "the data partition {} ({}) failed its check: {why}",
                            device.display(),
                            data.label
                        ),
                        Some(device),
                        &data.label,
                        run.output,
                    )));
                }
            }
        }
        Ok(())
    }

    /// Safe mode: a tmpfs work dir for the master, no datasets or volumes, the reason on the console and in
    /// [`safe_mode::MARKER`].
    fn enter_safe_mode(&mut self, safe: SafeMode, mountpoint: &Path) {
        safe.announce();
        let spec = MountSpec::new(
            "tmpfs",
            mountpoint,
            "tmpfs",
            MsFlags::MS_NODEV | MsFlags::MS_NOSUID,
            "mode=0755",
        );
        if self.mount_tracked(&spec) {
            info!(
                "safe mode: the master's work dir is a tmpfs on {}",
                mountpoint.display()
            );
        }
        if let Err(e) = self
            .sys
            .write_file(Path::new(safe_mode::MARKER), safe.to_json().as_bytes())
        {
            error!("{e}; the master learns of safe mode from its environment only");
        }
        self.safe_mode = Some(safe);
    }

    fn data_on_tmpfs(&mut self, mountpoint: &Path) {
        warning!(
            "volumes are on a tmpfs at {}: they will not survive a reboot",
            mountpoint.display()
        );
        let spec = MountSpec::new(
            "tmpfs",
            mountpoint,
            "tmpfs",
            MsFlags::MS_NODEV | MsFlags::MS_NOSUID,
            "mode=0755",
        );
        self.mount_tracked(&spec);
    }

    /// Loopback up; the configured (or first) interface with its static address and default route.
    pub fn network(&mut self) {
        if let Err(e) = self.sys.configure_interface("lo", None, None) {
            error!("{e}");
        }
        let net = self.cfg.network.clone();
        let Some(address) = net.address else {
            return;
        };
        let iface = match net.interface {
            Some(i) => Some(i),
            None => {
                // The NIC appears asynchronously after its driver module is loaded.
                let sys_net = self.sys.host_path(Path::new("/sys/class/net"));
                let deadline = Instant::now() + Duration::from_secs(5);
                loop {
                    if let Some(i) = crate::net::first_interface(&sys_net) {
                        break Some(i);
                    }
                    if Instant::now() >= deadline {
                        break None;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        };
        let Some(iface) = iface else {
            error!("network: no interface besides lo; {address} not configured");
            return;
        };
        match self
            .sys
            .configure_interface(&iface, Some(address), net.gateway)
        {
            Ok(()) => info!(
                "network: {iface} {address}{}",
                net.gateway.map(|g| format!(" via {g}")).unwrap_or_default()
            ),
            Err(e) => error!("network: {e}"),
        }
    }

    /// Every boot step in order. With a `root`, /proc, /sys and /dev come first, then the modules (the disk
    /// driver and the root's filesystem), then the switch_root (or, failing that, the re-root of the initramfs),
    /// then the other base mounts on whichever root it is.
    pub fn boot(&mut self) {
        if self.cfg.root.is_some() {
            self.mount_base_where(|t| BEFORE_SWITCH.iter().any(|b| Path::new(b) == t));
            self.load_modules();
            if !self.switch_root() {
                self.reroot();
            }
            self.mount_base();
        } else {
            self.reroot();
            self.mount_base();
            self.load_modules();
        }
        self.set_hostname();
        self.network();
        self.mount_data();
    }

    /// Stops everything in order: the master (SIGTERM, grace, SIGKILL), then every other process (SIGTERM,
    /// grace, SIGKILL), then sync, unmount in reverse order, reboot(2). Returns only when reboot(2) is not
    /// possible (dry run).
    pub fn shutdown(
        &mut self,
        action: PowerAction,
        signals: &mut SignalWatch,
        master: &mut Master,
    ) {
        info!("shutdown 1/5: stopping the master");
        master.stop(signals);
        let grace = self.cfg.shutdown.grace.get();
        info!(
            "shutdown 2/5: terminating remaining processes (grace {})",
            self.cfg.shutdown.grace
        );
        self.signal_rest(Signal::SIGTERM);
        if !wait_for_children(signals, grace) {
            warning!(
                "processes left after {}: killing them",
                self.cfg.shutdown.grace
            );
            self.signal_rest(Signal::SIGKILL);
            wait_for_children(signals, Duration::from_secs(5));
        }
        self.finish(action);
    }

    fn signal_rest(&mut self, sig: Signal) {
        let me = nix::unistd::getpid();
        let pids = descendants(me);
        info!("sending {sig} to {} remaining process(es)", pids.len());
        if self.mode.pid1 {
            // kill(-1) from PID 1 reaches every process of its namespace but itself, including ones forked
            // after the /proc scan.
            let _ = kill(Pid::from_raw(-1), sig);
        } else {
            for pid in pids {
                let _ = kill(pid, sig);
            }
        }
    }

    /// sync, unmount in reverse mount order, reboot(2).
    pub fn finish(&mut self, action: PowerAction) {
        info!("shutdown 3/5: sync");
        self.sys.sync();
        info!(
            "shutdown 4/5: unmounting {} filesystem(s)",
            self.mounted.len()
        );
        crate::log::disable_kmsg();
        while let Some(target) = self.mounted.pop() {
            match self.sys.unmount(&target) {
                Ok(()) => info!("unmounted {}", target.display()),
                Err(e) => warning!("{e}"),
            }
        }
        info!("shutdown 5/5: {action}");
        if let Err(e) = self.sys.reboot(action) {
            info!("{e}");
        }
    }
}

/// Polls `find` until it finds something or `wait` passes (devices appear asynchronously after their driver).
fn wait_for(wait: Duration, mut find: impl FnMut() -> Option<PathBuf>) -> Option<PathBuf> {
    let deadline = after(Instant::now(), wait);
    loop {
        if let Some(found) = find() {
            return Some(found);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A mount point that cannot be created; on a read-only root that means the image lacks the directory.
fn log_make_dir_error(e: &SysError, consequence: &str) {
    match e {
        SysError::MakeDir { path, source } if source.raw_os_error() == Some(libc::EROFS) => error!(
            "{} does not exist and cannot be created: the root filesystem is read-only, so the image must \
             contain this directory; {consequence}",
            path.display()
        ),
        _ => error!("{e}; {consequence}"),
    }
}

/// Reaps until no child is left or `timeout` passes; true if none is left.
fn wait_for_children(signals: &mut SignalWatch, timeout: Duration) -> bool {
    let deadline = after(Instant::now(), timeout);
    loop {
        let reaped = reap_all();
        for (pid, status) in &reaped.exited {
            info!("reaped pid={pid} ({})", describe(status));
        }
        if !reaped.children_left {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        signals.wait(Some(deadline - now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::SysError;

    /// Records every side effect as a line, in order.
    #[derive(Default)]
    struct Recorder {
        calls: Vec<String>,
        /// switch_root fails (as when the image lacks a mount point).
        fail_switch: bool,
        /// Directories that do not exist on a read-only root: make_dir fails with EROFS.
        missing_on_ro_root: Vec<PathBuf>,
        /// A fake /sys and /dev (for finding the data partition by name); None: the host's.
        fake_root: Option<PathBuf>,
        /// Exit statuses of successive checker runs (0 once they run out); None: the checker is missing.
        checker_exits: Option<Vec<i32>>,
        /// Mount targets whose mount fails.
        fail_mount: Vec<PathBuf>,
    }

    impl System for Recorder {
        fn host_path(&self, path: &Path) -> PathBuf {
            match &self.fake_root {
                Some(root) if path.starts_with("/sys") || path.starts_with("/dev") => {
                    root.join(path.strip_prefix("/").unwrap_or(path))
                }
                _ => path.to_path_buf(),
            }
        }
        fn is_mounted(&self, _: &Path) -> bool {
            false
        }
        fn make_dir(&mut self, path: &Path) -> Result<(), SysError> {
            if self.missing_on_ro_root.iter().any(|p| p == path) {
                return Err(SysError::MakeDir {
                    path: path.to_path_buf(),
                    source: std::io::Error::from_raw_os_error(libc::EROFS),
                });
            }
            Ok(())
        }
        fn mount(&mut self, spec: &MountSpec) -> Result<(), SysError> {
            let ro = if spec.flags.contains(MsFlags::MS_RDONLY) {
                " ro"
            } else {
                ""
            };
            self.calls.push(format!(
                "mount {} {}{ro}",
                spec.fstype,
                spec.target.display()
            ));
            if self.fail_mount.contains(&spec.target) {
                return Err(SysError::Mount {
                    device: spec.source.clone(),
                    target: spec.target.clone(),
                    fstype: spec.fstype.clone(),
                    errno: nix::errno::Errno::EUCLEAN,
                });
            }
            Ok(())
        }
        fn remount_readonly(&mut self, target: &Path) -> Result<(), SysError> {
            self.calls.push(format!("ro {}", target.display()));
            Ok(())
        }
        fn unmount(&mut self, target: &Path) -> Result<(), SysError> {
            self.calls.push(format!("umount {}", target.display()));
            Ok(())
        }
        fn load_module(&mut self, path: &Path) -> Result<ModuleLoad, SysError> {
            self.calls.push(format!("module {}", path.display()));
            Ok(ModuleLoad::AlreadyLoaded)
        }
        fn set_hostname(&mut self, name: &str) -> Result<(), SysError> {
            self.calls.push(format!("hostname {name}"));
            Ok(())
        }
        fn reroot(&mut self, _: &Path) -> Result<(), SysError> {
            self.calls.push("reroot".into());
            Ok(())
        }
        fn switch_root(
            &mut self,
            newroot: &Path,
            moves: &[PathBuf],
        ) -> Result<Option<crate::sys::Freed>, SysError> {
            let moves: Vec<String> = moves.iter().map(|m| m.display().to_string()).collect();
            self.calls.push(format!(
                "switch_root {} {}",
                newroot.display(),
                moves.join(",")
            ));
            if self.fail_switch {
                return Err(SysError::SwitchRoot {
                    newroot: newroot.to_path_buf(),
                    step: "/proc is not a directory in the new root".into(),
                    errno: nix::errno::Errno::ENOENT,
                });
            }
            Ok(Some(crate::sys::Freed {
                files: 3,
                ..Default::default()
            }))
        }
        fn grow_filesystem(
            &mut self,
            device: &Path,
            _: &Path,
        ) -> Result<Option<(u64, u64)>, SysError> {
            self.calls.push(format!("grow {}", device.display()));
            Ok(None)
        }
        fn configure_interface(
            &mut self,
            iface: &str,
            address: Option<crate::net::Ipv4Cidr>,
            _: Option<std::net::Ipv4Addr>,
        ) -> Result<(), SysError> {
            self.calls.push(format!("net {iface} {address:?}"));
            Ok(())
        }
        fn run_checker(
            &mut self,
            program: &Path,
            args: &[String],
        ) -> Result<crate::fsck::CheckerRun, SysError> {
            self.calls
                .push(format!("check {} {}", program.display(), args.join(" ")));
            let Some(exits) = self.checker_exits.as_mut() else {
                return Err(SysError::Spawn {
                    program: program.to_path_buf(),
                    source: std::io::Error::from_raw_os_error(libc::ENOENT),
                });
            };
            let code = if exits.is_empty() { 0 } else { exits.remove(0) };
            Ok(crate::fsck::CheckerRun {
                exit: crate::fsck::Exit::Code(code),
                output: format!("baetyl-data: pass output (exit {code})\n"),
            })
        }
        fn write_file(&mut self, path: &Path, contents: &[u8]) -> Result<(), SysError> {
            let text = String::from_utf8_lossy(contents);
            let reason = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v["reason"].as_str().map(str::to_string))
                .unwrap_or_default();
            self.calls
                .push(format!("write {} reason={reason}", path.display()));
            Ok(())
        }
        fn sync(&mut self) {
            self.calls.push("sync".into());
        }
        fn reboot(&mut self, action: PowerAction) -> Result<(), SysError> {
            self.calls.push(format!("reboot {action}"));
            Ok(())
        }
    }

    fn mode() -> Mode {
        Mode {
            pid1: false,
            may_reroot: true,
            may_kmsg: false,
        }
    }

    #[test]
    fn boot_then_finish_unmounts_in_reverse_after_sync_and_reboots_last() {
        let dir = tempfile::tempdir().unwrap();
        let mods = dir.path().join("kernel");
        std::fs::create_dir_all(&mods).unwrap();
        std::fs::write(mods.join("virtio.ko"), b"x").unwrap();
        std::fs::write(mods.join("virtio_ring.ko"), b"x").unwrap();
        let datasets = dir.path().join("models");
        std::fs::create_dir_all(&datasets).unwrap();
        let yaml = format!(
            "hostname: edge\nreroot: always\nmodules:\n  dir: {}\n  load: [virtio_ring, virtio]\ndata: null\n\
             datasets:\n  - name: models\n    source: {}\n    target: /opt/models\n\
             volumes:\n  - name: hub\n    target: /var/lib/hub\n",
            dir.path().display(),
            datasets.display()
        );
        let cfg: InitConfig = baetyl_sdk::config::parse_yaml(&yaml, Path::new("t.yml")).unwrap();
        let mut init = Init::new(Recorder::default(), cfg, mode());
        init.boot();
        init.finish(PowerAction::PowerOff);
        let calls = &init.sys.calls;
        let expected_boot = [
            "reroot".to_string(),
            "mount proc /proc".into(),
            "mount sysfs /sys".into(),
            "mount devtmpfs /dev".into(),
            "mount devpts /dev/pts".into(),
            "mount tmpfs /run".into(),
            "mount tmpfs /tmp".into(),
            "mount cgroup2 /sys/fs/cgroup".into(),
            format!("module {}", mods.join("virtio_ring.ko").display()),
            format!("module {}", mods.join("virtio.ko").display()),
            "hostname edge".into(),
            "net lo None".into(),
            "mount tmpfs /var/lib/baetyl".into(),
            "mount  /opt/models".into(),
            "ro /opt/models".into(),
            "mount  /var/lib/hub".into(),
        ];
        let boot: Vec<String> = calls.iter().take_while(|c| *c != "sync").cloned().collect();
        assert_eq!(boot, expected_boot);
        let mut expected_tail = vec!["sync".to_string()];
        expected_tail.extend(
            boot.iter()
                .filter_map(|c| c.strip_prefix("mount "))
                .rev()
                .map(|c| format!("umount {}", c.rsplit(' ').next().unwrap_or_default())),
        );
        expected_tail.push("reboot power off".into());
        assert_eq!(calls[boot.len()..].to_vec(), expected_tail);
        assert!(init.mounted().is_empty());
    }

    fn root_config(dir: &Path, root: &str, extra: &str) -> InitConfig {
        let mods = dir.join("kernel");
        std::fs::create_dir_all(&mods).unwrap();
        std::fs::write(mods.join("virtio_blk.ko"), b"x").unwrap();
        std::fs::write(mods.join("squashfs.ko"), b"x").unwrap();
        let yaml = format!(
            "hostname: edge\nmodules:\n  dir: {}\n  load: [virtio_blk, squashfs]\ndata: null\n{root}\n{extra}",
            dir.display()
        );
        baetyl_sdk::config::parse_yaml(&yaml, Path::new("t.yml")).unwrap()
    }

    fn modules_of(dir: &Path) -> [String; 2] {
        [
            format!("module {}", dir.join("kernel/virtio_blk.ko").display()),
            format!("module {}", dir.join("kernel/squashfs.ko").display()),
        ]
    }

    #[test]
    fn switch_root_comes_after_proc_sys_dev_and_modules_and_skips_the_reroot() {
        let dir = tempfile::tempdir().unwrap();
        let device = dir.path().join("loop3");
        std::fs::write(&device, b"").unwrap();
        let cfg = root_config(
            dir.path(),
            &format!("root: {{device: {}, wait: 0s}}", device.display()),
            "volumes:\n  - name: hub\n    target: /var/lib/hub\n",
        );
        let mut init = Init::new(Recorder::default(), cfg, mode());
        init.boot();
        init.finish(PowerAction::Reboot);
        let [m1, m2] = modules_of(dir.path());
        let expected = vec![
            "mount proc /proc".to_string(),
            "mount sysfs /sys".into(),
            "mount devtmpfs /dev".into(),
            m1,
            m2,
            "mount squashfs /.baetyl-newroot ro".into(),
            "switch_root /.baetyl-newroot /dev,/proc,/sys".into(),
            // No reroot: the new root is a real mount. The rest of the base mounts follow on the new root.
            "mount devpts /dev/pts".into(),
            "mount tmpfs /run".into(),
            "mount tmpfs /tmp".into(),
            "mount cgroup2 /sys/fs/cgroup".into(),
            "hostname edge".into(),
            "net lo None".into(),
            "mount tmpfs /var/lib/baetyl".into(),
            "mount  /var/lib/hub".into(),
            "sync".into(),
            // Reverse mount order; the root itself (never tracked) is not unmounted.
            "umount /var/lib/hub".into(),
            "umount /var/lib/baetyl".into(),
            "umount /sys/fs/cgroup".into(),
            "umount /tmp".into(),
            "umount /run".into(),
            "umount /dev/pts".into(),
            "umount /dev".into(),
            "umount /sys".into(),
            "umount /proc".into(),
            "reboot reboot".into(),
        ];
        assert_eq!(init.sys.calls, expected);
    }

    #[test]
    fn root_not_found_boots_on_from_the_initramfs_with_the_reroot() {
        let dir = tempfile::tempdir().unwrap();
        // A label no device has (the recorder's host_path is the identity, so this scans the host's sysfs).
        let cfg = root_config(
            dir.path(),
            "root: {label: baetyl-no-such-root-partition, wait: 0s}\nreroot: always",
            "",
        );
        let mut init = Init::new(Recorder::default(), cfg, mode());
        init.boot();
        let [m1, m2] = modules_of(dir.path());
        let calls = &init.sys.calls;
        assert_eq!(
            calls[..7].to_vec(),
            vec![
                "mount proc /proc".to_string(),
                "mount sysfs /sys".into(),
                "mount devtmpfs /dev".into(),
                m1,
                m2,
                "reroot".into(),
                "mount devpts /dev/pts".into(),
            ]
        );
        assert!(!calls.iter().any(|c| c.contains("newroot")), "{calls:?}");
        assert_eq!(init.mounted().len(), 7, "{:?}", init.mounted());
    }

    #[test]
    fn failed_switch_unmounts_the_new_root_and_boots_on() {
        let dir = tempfile::tempdir().unwrap();
        let device = dir.path().join("loop3");
        std::fs::write(&device, b"").unwrap();
        let cfg = root_config(
            dir.path(),
            &format!("root: {{device: {}}}\nreroot: always", device.display()),
            "",
        );
        let rec = Recorder {
            fail_switch: true,
            ..Default::default()
        };
        let mut init = Init::new(rec, cfg, mode());
        init.boot();
        let calls = &init.sys.calls;
        let at = calls
            .iter()
            .position(|c| c.starts_with("switch_root"))
            .unwrap();
        assert_eq!(
            calls[at + 1..at + 4].to_vec(),
            vec![
                "umount /.baetyl-newroot".to_string(),
                "reroot".into(),
                "mount devpts /dev/pts".into(),
            ]
        );
        // The new root was never tracked, so shutdown does not unmount it again.
        assert!(!init.mounted().iter().any(|m| m == Path::new(SWITCH_ROOT)));
    }

    #[test]
    fn missing_mount_point_on_a_read_only_root_is_logged_and_boot_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let device = dir.path().join("loop3");
        std::fs::write(&device, b"").unwrap();
        let cfg = root_config(
            dir.path(),
            &format!("root: {{device: {}}}", device.display()),
            "volumes:\n  - name: a\n    target: /opt/a\n  - name: b\n    target: /opt/b\n",
        );
        let rec = Recorder {
            missing_on_ro_root: vec![PathBuf::from("/tmp"), PathBuf::from("/opt/a")],
            ..Default::default()
        };
        let mut init = Init::new(rec, cfg, mode());
        init.boot();
        let calls = &init.sys.calls;
        assert!(!calls.iter().any(|c| c.ends_with(" /tmp")), "{calls:?}");
        assert!(!calls.iter().any(|c| c.ends_with(" /opt/a")), "{calls:?}");
        assert!(
            calls.iter().any(|c| c == "mount cgroup2 /sys/fs/cgroup"),
            "{calls:?}"
        );
        assert!(calls.iter().any(|c| c == "mount  /opt/b"), "{calls:?}");
    }

    /// A fake sysfs with the data partition `vda4` named `baetyl-data`, and a config that mounts it and a volume.
    fn data_setup(dir: &Path, extra: &str) -> InitConfig {
        let block = dir.join("sys/class/block/vda4");
        std::fs::create_dir_all(&block).unwrap();
        std::fs::write(
            block.join("uevent"),
            "DEVNAME=vda4\nDEVTYPE=partition\nPARTNAME=baetyl-data\n",
        )
        .unwrap();
        let yaml = format!(
            "hostname: null\ndata: {{label: baetyl-data, wait: 0s, grow: false{extra}}}\n\
             volumes:\n  - name: hub\n    target: /var/lib/hub\n\
             datasets:\n  - name: models\n    source: /\n    target: /opt/models\n"
        );
        baetyl_sdk::config::parse_yaml(&yaml, Path::new("t.yml")).unwrap()
    }

    fn data_calls(rec: Recorder, cfg: InitConfig) -> (Vec<String>, Option<SafeMode>) {
        let mut init = Init::new(rec, cfg, mode());
        init.mount_data();
        (init.sys.calls, init.safe_mode)
    }

    fn recorder(dir: &Path, exits: Option<Vec<i32>>) -> Recorder {
        Recorder {
            fake_root: Some(dir.to_path_buf()),
            checker_exits: exits,
            ..Default::default()
        }
    }

    #[test]
    fn data_partition_is_checked_in_preen_mode_before_it_is_mounted() {
        let dir = tempfile::tempdir().unwrap();
        let dev = dir.path().join("dev/vda4");
        for code in [0, 1] {
            let cfg = data_setup(dir.path(), "");
            let (calls, safe) = data_calls(recorder(dir.path(), Some(vec![code])), cfg);
            assert_eq!(safe, None);
            assert_eq!(
                calls,
                vec![
                    format!("check /sbin/e2fsck -p {}", dev.display()),
                    "mount ext4 /var/lib/baetyl".into(),
                    "mount  /opt/models".into(),
                    "ro /opt/models".into(),
                    "mount  /var/lib/hub".into(),
                ],
                "exit {code}"
            );
        }
        // `yes` repairs everything; `off` does not check.
        let cfg = data_setup(dir.path(), ", check: yes, checker: /usr/sbin/e2fsck");
        let (calls, _) = data_calls(recorder(dir.path(), Some(vec![1])), cfg);
        assert_eq!(
            calls[0],
            format!("check /usr/sbin/e2fsck -y {}", dev.display())
        );
        let cfg = data_setup(dir.path(), ", check: off");
        let (calls, _) = data_calls(recorder(dir.path(), Some(vec![8])), cfg);
        assert_eq!(calls[0], "mount ext4 /var/lib/baetyl");
    }

    #[test]
    fn uncorrected_errors_leave_the_device_in_safe_mode_with_no_volume() {
        let dir = tempfile::tempdir().unwrap();
        for code in [4, 8, 12] {
            let cfg = data_setup(dir.path(), "");
            let (calls, safe) = data_calls(recorder(dir.path(), Some(vec![code])), cfg);
            let safe = safe.unwrap_or_else(|| panic!("exit {code}: no safe mode: {calls:?}"));
            assert!(safe.reason.contains("failed its check"), "{}", safe.reason);
            assert!(
                safe.reason.contains(&format!("exit status {code}")),
                "{}",
                safe.reason
            );
            assert!(safe.detail.contains("pass output"), "{}", safe.detail);
            assert_eq!(safe.device, Some(dir.path().join("dev/vda4")));
            assert_eq!(calls.len(), 3, "{calls:?}");
            assert!(calls[0].starts_with("check "), "{calls:?}");
            // A tmpfs for the master's work dir; nothing of the partition, no dataset, no volume.
            assert_eq!(calls[1], "mount tmpfs /var/lib/baetyl");
            assert!(
                calls[2].starts_with("write /run/baetyl/safe-mode.json reason=the data partition"),
                "{calls:?}"
            );
        }
    }

    #[test]
    fn exit_status_2_is_checked_once_more_and_mounted_only_when_that_pass_is_clean() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = data_setup(dir.path(), "");
        let (calls, safe) = data_calls(recorder(dir.path(), Some(vec![2, 0])), cfg);
        assert_eq!(safe, None);
        assert_eq!(calls.iter().filter(|c| c.starts_with("check")).count(), 2);
        assert_eq!(calls[2], "mount ext4 /var/lib/baetyl");

        let cfg = data_setup(dir.path(), "");
        let (calls, safe) = data_calls(recorder(dir.path(), Some(vec![2, 2])), cfg);
        assert!(safe.unwrap().reason.contains("after two checks"));
        assert_eq!(calls[2], "mount tmpfs /var/lib/baetyl");
    }

    #[test]
    fn missing_or_unmountable_data_partition_means_safe_mode_and_a_missing_checker_does_not() {
        let dir = tempfile::tempdir().unwrap();
        // Missing: the label is nowhere.
        let cfg = data_setup(dir.path(), "").tap_label("baetyl-elsewhere");
        let (calls, safe) = data_calls(recorder(dir.path(), Some(vec![])), cfg);
        assert!(safe.unwrap().reason.contains("missing"));
        assert_eq!(calls[0], "mount tmpfs /var/lib/baetyl");
        // It refuses to mount (EUCLEAN, as for a corrupt superblock the checker did not catch).
        let cfg = data_setup(dir.path(), "");
        let mut rec = recorder(dir.path(), Some(vec![0]));
        rec.fail_mount = vec![PathBuf::from("/var/lib/baetyl")];
        let (calls, safe) = data_calls(rec, cfg);
        let reason = safe.unwrap().reason;
        assert!(reason.contains("cannot be mounted"), "{reason}");
        assert!(
            !calls.iter().any(|c| c.contains("/var/lib/hub")),
            "{calls:?}"
        );
        // An image without e2fsck mounts unchecked, as before checks existed.
        let cfg = data_setup(dir.path(), "");
        let (calls, safe) = data_calls(recorder(dir.path(), None), cfg);
        assert_eq!(safe, None);
        assert_eq!(calls[1], "mount ext4 /var/lib/baetyl");
    }

    trait TapLabel {
        fn tap_label(self, label: &str) -> Self;
    }

    impl TapLabel for InitConfig {
        fn tap_label(mut self, label: &str) -> Self {
            if let Some(d) = self.data.as_mut() {
                d.label = label.to_string();
            }
            self
        }
    }
}
