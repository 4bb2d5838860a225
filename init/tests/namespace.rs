//! The init binary run for real as PID 1 of a PID namespace (`unshare --pid --fork --mount-proc`), with
//! `baetyl-probe` or small shell scripts standing in for `baetyl master`. Needs root (unshare) and /bin/sh.
//!
//! Two modes are exercised: `--dry` (side effects logged, exit status tells the action) and `--root DIR` (real
//! mounts under DIR in the namespace's private mount table, real sethostname in a UTS namespace, and a real
//! reboot(2), which the kernel turns into the end of the namespace: SIGHUP for reboot, SIGINT for power off).

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use baetyl_testkit::wait::poll;

const BIN: &str = env!("CARGO_BIN_EXE_baetyl-init");
/// The stand-in for `baetyl master` (`--signal SIG`: ask init to reboot or power off once it has reported).
const PROBE: &str = env!("CARGO_BIN_EXE_baetyl-probe");

struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Run {
    fn all(&self) -> String {
        format!("--- stdout\n{}\n--- stderr\n{}", self.stdout, self.stderr)
    }
    /// Byte offset of the first init log line containing `needle`, panicking with the whole log if absent.
    fn pos(&self, needle: &str) -> usize {
        match self.stderr.find(needle) {
            Some(p) => p,
            None => panic!("`{needle}` not in the log:\n{}", self.all()),
        }
    }
    /// Every needle is in the log, each after the one before it.
    fn assert_in_order(&self, needles: &[&str]) {
        let positions: Vec<usize> = needles.iter().map(|n| self.pos(n)).collect();
        assert!(
            positions.windows(2).all(|w| w[0] < w[1]),
            "out of order {positions:?}:\n{}",
            self.all()
        );
    }
}

/// Runs `cmd`, killing it after `timeout`; collects output in threads so a full pipe never blocks it.
fn run(cmd: Command, timeout: Duration) -> Run {
    run_logging_to(cmd, timeout, None)
}

/// [`run`], with init's log (stderr) written to `log` as it goes, for scripts that wait for a log line.
fn run_logging_to(mut cmd: Command, timeout: Duration, log: Option<&Path>) -> Run {
    cmd.stdout(Stdio::piped()).stdin(Stdio::null());
    match log {
        Some(path) => cmd.stderr(std::fs::File::create(path).expect("log file")),
        None => cmd.stderr(Stdio::piped()),
    };
    let mut child = cmd.spawn().expect("spawn");
    let mut out = child.stdout.take().expect("stdout");
    let err = child.stderr.take();
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(mut err) = err {
            let _ = err.read_to_string(&mut s);
        }
        s
    });
    let status = poll(timeout, || child.try_wait().expect("wait"));
    let killed = status.is_err();
    if killed {
        let _ = child.kill();
    }
    let status = status.unwrap_or_else(|_| child.wait().expect("wait"));
    let mut stderr = t_err.join().unwrap_or_default();
    if let Some(path) = log {
        stderr = std::fs::read_to_string(path).unwrap_or_default();
    }
    let r = Run {
        status,
        stdout: t_out.join().unwrap_or_default(),
        stderr,
    };
    if killed {
        panic!("timed out after {timeout:?}:\n{}", r.all());
    }
    r
}

/// The namespace tests need root; they fail (rather than silently pass) when it is missing, unless
/// BAETYL_INIT_SKIP_NS=1 says the caller knows.
fn namespaces_available() -> bool {
    let ok = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "--uts", "true"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok && std::env::var("BAETYL_INIT_SKIP_NS").as_deref() == Ok("1") {
        eprintln!(
            "skipped: unshare --pid --fork --mount-proc --uts is not available (BAETYL_INIT_SKIP_NS=1)"
        );
        return false;
    }
    assert!(
        ok,
        "these tests need root and util-linux unshare (set BAETYL_INIT_SKIP_NS=1 to skip them)"
    );
    true
}

struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Self {
        Setup {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, text).expect("write");
        p
    }
    /// A config whose master runs `command`, plus an empty kernel command line.
    fn config(&self, command: &[&str], extra: &str) -> (PathBuf, PathBuf) {
        let cmd: Vec<String> = command.iter().map(|c| format!("{c:?}")).collect();
        let yaml = format!(
            "data: null\nhostname: null\nmaster:\n  command: [{}]\n  grace: 3s\n  restart_min: 100ms\n  \
             restart_max: 400ms\nshutdown:\n  grace: 2s\n{extra}",
            cmd.join(", ")
        );
        (
            self.write("init.yml", &yaml),
            self.write("cmdline", "console=ttyS0 quiet\n"),
        )
    }
}

fn init_cmd(in_namespace: bool, config: &Path, cmdline: &Path, extra: &[&str]) -> Command {
    let mut cmd = if in_namespace {
        let mut c = Command::new("unshare");
        // --kill-child: if the test kills unshare on a timeout, the namespace (and every pipe holder) goes too.
        c.args([
            "--pid",
            "--fork",
            "--kill-child",
            "--mount-proc",
            "--uts",
            BIN,
        ]);
        c
    } else {
        Command::new(BIN)
    };
    cmd.arg("--config")
        .arg(config)
        .arg("--cmdline")
        .arg(cmdline)
        .args(extra);
    cmd
}

const TIMEOUT: Duration = Duration::from_secs(90);

/// A master that double-forks a short-lived process (so it is orphaned), checks who its parent became, waits (up
/// to 10 s) for it to be gone, reports whether a zombie is left, then asks init to power off.
const ORPHAN_SCRIPT: &str = r#"
orphan=$(sh -c 'sleep 0.3 >/dev/null 2>&1 & echo $!')
echo "probe: orphan=$orphan ppid=$(cut -d' ' -f4 /proc/$orphan/stat)"
i=0; while [ -e /proc/$orphan ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done
if [ -e /proc/$orphan ]; then echo "probe: orphan-left state=$(cut -d' ' -f3 /proc/$orphan/stat)"; else echo "probe: orphan-gone"; fi
kill -USR2 $PPID
while :; do sleep 0.1; done
"#;

fn orphan_pid(r: &Run) -> String {
    let line = r
        .stdout
        .lines()
        .find(|l| l.starts_with("probe: orphan="))
        .unwrap_or_else(|| panic!("no orphan line:\n{}", r.all()));
    line["probe: orphan=".len()..]
        .split(' ')
        .next()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn double_forked_orphan_is_reaped_by_pid1_in_a_pid_namespace() {
    if !namespaces_available() {
        return;
    }
    let s = Setup::new();
    let script = s.write("master.sh", ORPHAN_SCRIPT);
    let (cfg, cmdline) = s.config(&["/bin/sh", &script.to_string_lossy()], "");
    let r = run(init_cmd(true, &cfg, &cmdline, &["--dry"]), TIMEOUT);
    let orphan = orphan_pid(&r);
    assert!(
        r.stdout.contains(&format!("probe: orphan={orphan} ppid=1")),
        "{}",
        r.all()
    );
    assert!(
        r.stdout.contains("probe: orphan-gone"),
        "zombie left behind:\n{}",
        r.all()
    );
    r.pos(&format!("reaped orphan pid={orphan} (exit status 0)"));
    r.pos("starting as pid 1 ");
    assert_eq!(
        r.status.code(),
        Some(0),
        "dry power off exits 0:\n{}",
        r.all()
    );
}

#[test]
fn double_forked_orphan_is_reaped_as_subreaper_without_a_namespace() {
    // Not PID 1: init makes itself a child subreaper, so the same reaping works on any host, without root.
    let s = Setup::new();
    let script = s.write("master.sh", ORPHAN_SCRIPT);
    let (cfg, cmdline) = s.config(&["/bin/sh", &script.to_string_lossy()], "");
    let cmd = init_cmd(false, &cfg, &cmdline, &["--dry"]);
    let r = run(cmd, TIMEOUT);
    let orphan = orphan_pid(&r);
    let init_pid = r
        .stderr
        .split("starting as pid ")
        .nth(1)
        .and_then(|t| t.split(' ').next())
        .unwrap_or_else(|| panic!("no pid in log:\n{}", r.all()))
        .to_string();
    assert!(
        r.stdout
            .contains(&format!("probe: orphan={orphan} ppid={init_pid}")),
        "orphan not reparented to init {init_pid}:\n{}",
        r.all()
    );
    assert!(r.stdout.contains("probe: orphan-gone"), "{}", r.all());
    r.pos(&format!("reaped orphan pid={orphan}"));
    assert_eq!(r.status.code(), Some(0), "{}", r.all());
}

#[test]
fn without_dry_init_refuses_to_run_when_not_pid1() {
    let s = Setup::new();
    let (cfg, cmdline) = s.config(&["/bin/true"], "");
    let r = run(init_cmd(false, &cfg, &cmdline, &[]), TIMEOUT);
    assert_eq!(r.status.code(), Some(1), "{}", r.all());
    r.pos("is not PID 1");
}

#[test]
fn signals_map_to_reboot_or_power_off() {
    if !namespaces_available() {
        return;
    }
    // Dry mode: the exit status carries the action (0 power off, 3 reboot). SIGHUP first: it must be ignored.
    for (sig, action, code) in [
        ("SIGTERM", "reboot", 3),
        ("SIGINT", "reboot", 3),
        ("SIGPWR", "power off", 0),
        ("SIGUSR2", "power off", 0),
    ] {
        let s = Setup::new();
        let log = s.path("init.log");
        // The second signal goes once init has logged the first (so both are seen, in this order).
        let script = s.write(
            "master.sh",
            &format!(
                "kill -HUP $PPID\nuntil grep -q 'SIGHUP ignored' {}; do sleep 0.02; done\nkill -{} $PPID\n\
                 while :; do sleep 0.1; done\n",
                log.display(),
                &sig[3..]
            ),
        );
        let (cfg, cmdline) = s.config(&["/bin/sh", &script.to_string_lossy()], "");
        let r = run_logging_to(
            init_cmd(true, &cfg, &cmdline, &["--dry"]),
            TIMEOUT,
            Some(&log),
        );
        r.pos("SIGHUP ignored");
        r.pos(&format!("{sig} received: {action} requested"));
        r.pos(&format!("shutdown 5/5: {action}"));
        assert_eq!(r.status.code(), Some(code), "{sig}:\n{}", r.all());
    }
}

#[test]
fn real_reboot_syscall_ends_the_namespace_with_the_mapped_signal() {
    if !namespaces_available() {
        return;
    }
    // Real mode under --root: real mounts, hostname in the UTS namespace, reboot(2) from PID 1. The kernel ends
    // a PID namespace whose init calls reboot(2) as if killed by SIGHUP (restart) or SIGINT (power off).
    for (sig, action, end_signal) in [
        ("SIGTERM", "reboot", libc::SIGHUP),
        ("SIGUSR2", "power off", libc::SIGINT),
    ] {
        let s = Setup::new();
        let root = s.path("root");
        std::fs::create_dir(&root).expect("mkdir");
        let (cfg, cmdline) = s.config(&[PROBE, "--signal", sig], "");
        std::fs::write(
            &cfg,
            std::fs::read_to_string(&cfg)
                .expect("read")
                .replace("hostname: null", "hostname: ns-edge"),
        )
        .expect("write");
        let r = run(
            init_cmd(true, &cfg, &cmdline, &["--root", &root.to_string_lossy()]),
            TIMEOUT,
        );
        assert_eq!(r.status.signal(), Some(end_signal), "{sig}:\n{}", r.all());
        let probe = r
            .stdout
            .lines()
            .find(|l| l.starts_with("BAETYL-PROBE pid="))
            .unwrap_or_else(|| panic!("no probe line:\n{}", r.all()));
        assert!(probe.contains("ppid=1 "), "{probe}");
        assert!(probe.contains("hostname=ns-edge "), "{probe}");
        for m in [
            "proc",
            "sys",
            "dev",
            "dev/pts",
            "run",
            "tmp",
            "sys/fs/cgroup",
        ] {
            let want = format!("{}/{m}", root.display());
            assert!(
                probe
                    .split(' ')
                    .find_map(|f| f.strip_prefix("mounts="))
                    .is_some_and(|m| m.split(',').any(|p| p == want)),
                "{want} not mounted: {probe}"
            );
        }
        r.pos(&format!("{sig} received: {action} requested"));
        r.pos(&format!("shutdown 5/5: {action}"));
    }
    // The host kept its hostname and has none of the namespace's mounts.
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(!mountinfo.contains("/root/sys/fs/cgroup"), "{mountinfo}");
}

#[test]
fn shutdown_stops_master_first_then_the_rest_then_syncs_and_unmounts_in_reverse() {
    if !namespaces_available() {
        return;
    }
    let s = Setup::new();
    let events = s.path("events");
    let root = s.path("root");
    std::fs::create_dir(&root).expect("mkdir");
    // The master records its SIGTERM and takes a moment to stop; a double-forked daemon outside its control
    // records the SIGTERM init sends to whatever is left.
    let ev = events.display();
    let daemon = s.write(
        "daemon.sh",
        &format!(
            "trap 'echo daemon-term >> {ev}; exit 0' TERM\necho daemon-ready >> {ev}\n\
             while :; do sleep 0.1; done\n"
        ),
    );
    let script = s.write(
        "master.sh",
        &format!(
            "trap 'echo master-term >> {ev}; sleep 0.3; echo master-exit >> {ev}; exit 0' TERM\n\
             sh -c 'sh {daemon} &'\n\
             until grep -q daemon-ready {ev} 2>/dev/null; do sleep 0.05; done\n\
             kill -USR2 $PPID\n\
             while :; do sleep 0.1; done\n",
            daemon = daemon.display()
        ),
    );
    let (cfg, cmdline) = s.config(&["/bin/sh", &script.to_string_lossy()], "");
    let r = run(
        init_cmd(true, &cfg, &cmdline, &["--root", &root.to_string_lossy()]),
        TIMEOUT,
    );
    assert_eq!(
        r.status.signal(),
        Some(libc::SIGINT),
        "power off ends the namespace with SIGINT:\n{}",
        r.all()
    );

    let ev = std::fs::read_to_string(&events).expect("events");
    let lines: Vec<&str> = ev.lines().collect();
    assert_eq!(
        lines,
        vec!["daemon-ready", "master-term", "master-exit", "daemon-term"],
        "{}",
        r.all()
    );

    let order = [
        "SIGUSR2 received: power off requested",
        "shutdown 1/5: stopping the master",
        "stopped (exit status 0)",
        "shutdown 2/5: terminating remaining processes",
        "shutdown 3/5: sync",
        "shutdown 4/5: unmounting 7 filesystem(s)",
        "unmounted /sys/fs/cgroup",
        "unmounted /tmp",
        "unmounted /run",
        "unmounted /dev/pts",
        "unmounted /dev\n",
        "unmounted /sys\n",
        "unmounted /proc",
        "shutdown 5/5: power off",
    ];
    r.assert_in_order(&order);
    // The master must be asked to stop before anything else receives a signal.
    assert!(
        r.pos("SIGTERM to master pid=") < r.pos("sending SIGTERM to"),
        "{}",
        r.all()
    );
}

#[test]
fn master_ignoring_sigterm_is_killed_after_its_grace() {
    if !namespaces_available() {
        return;
    }
    let s = Setup::new();
    let script = s.write(
        "master.sh",
        "trap '' TERM\nkill -USR2 $PPID\nwhile :; do sleep 0.1; done\n",
    );
    let (cfg, cmdline) = s.config(&["/bin/sh", &script.to_string_lossy()], "");
    let cfg_text = std::fs::read_to_string(&cfg)
        .expect("read")
        .replace("grace: 3s", "grace: 500ms");
    std::fs::write(&cfg, cfg_text).expect("write");
    let r = run(init_cmd(true, &cfg, &cmdline, &["--dry"]), TIMEOUT);
    r.pos("still running after 500ms: SIGKILL");
    r.pos("stopped (killed by SIGKILL)");
    assert!(
        r.pos("stopped (killed by SIGKILL)") < r.pos("shutdown 2/5"),
        "{}",
        r.all()
    );
    assert_eq!(r.status.code(), Some(0), "{}", r.all());
}

#[test]
fn crashing_master_is_restarted_with_backoff_and_init_survives() {
    if !namespaces_available() {
        return;
    }
    let s = Setup::new();
    let starts = s.path("starts");
    // Crashes on its first three starts; the fourth asks for a power off.
    let script = s.write(
        "master.sh",
        &format!(
            "echo start >> {f}\nn=$(wc -l < {f})\nif [ \"$n\" -lt 4 ]; then exit 7; fi\nkill -USR2 $PPID\n\
             while :; do sleep 0.1; done\n",
            f = starts.display()
        ),
    );
    let (cfg, cmdline) = s.config(&["/bin/sh", &script.to_string_lossy()], "");
    let r = run(init_cmd(true, &cfg, &cmdline, &["--dry"]), TIMEOUT);
    assert_eq!(
        std::fs::read_to_string(&starts)
            .expect("starts")
            .lines()
            .count(),
        4,
        "{}",
        r.all()
    );
    let delays = [
        "restarting in 100ms",
        "restarting in 200ms",
        "restarting in 400ms",
    ];
    let pos: Vec<usize> = delays.iter().map(|d| r.pos(d)).collect();
    assert!(pos.windows(2).all(|w| w[0] < w[1]), "{}", r.all());
    r.pos("(start #4)");
    r.pos("exit status 7");
    assert_eq!(r.status.code(), Some(0), "{}", r.all());
}

#[test]
fn kernel_command_line_overrides_the_config_file() {
    if !namespaces_available() {
        return;
    }
    let s = Setup::new();
    let root = s.path("root");
    std::fs::create_dir(&root).expect("mkdir");
    // The file's master would never stop; the command line replaces it with a probe that powers off and sets
    // the hostname.
    let (cfg, _) = s.config(&["/bin/sleep", "1000"], "");
    let cmdline = s.write(
        "cmdline.override",
        &format!("console=ttyS0 baetyl.hostname=from-cmdline baetyl.master.command={PROBE},--signal,SIGPWR baetyl.nope=1\n"),
    );
    let r = run(
        init_cmd(true, &cfg, &cmdline, &["--root", &root.to_string_lossy()]),
        TIMEOUT,
    );
    assert_eq!(r.status.signal(), Some(libc::SIGINT), "{}", r.all());
    assert!(r.stdout.contains("hostname=from-cmdline "), "{}", r.all());
    r.pos("baetyl.nope=1 ignored: unknown parameter");
    r.pos("SIGPWR received: power off requested");
}

#[test]
fn loopback_is_brought_up_in_a_fresh_network_namespace() {
    if !namespaces_available() {
        return;
    }
    // A new network namespace starts with lo down; init (real mode) must bring it up before the master runs.
    let s = Setup::new();
    let root = s.path("root");
    std::fs::create_dir(&root).expect("mkdir");
    let (cfg, cmdline) = s.config(&[PROBE, "--signal", "SIGUSR2"], "");
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--net",
        "--pid",
        "--fork",
        "--kill-child",
        "--mount-proc",
        "--uts",
        BIN,
    ])
    .arg("--config")
    .arg(&cfg)
    .arg("--cmdline")
    .arg(&cmdline)
    .arg("--root")
    .arg(&root);
    let r = run(cmd, TIMEOUT);
    assert_eq!(r.status.signal(), Some(libc::SIGINT), "{}", r.all());
    assert!(r.stdout.contains(" lo_up=true "), "{}", r.all());
    // Control: the same probe in a fresh network namespace without init sees lo down.
    let mut control = Command::new("unshare");
    control.args(["--net", PROBE]);
    let c = {
        let mut child = control.stdout(Stdio::piped()).spawn().expect("spawn");
        // The probe waits to be stopped like a master; read its one report line, then stop it.
        let mut out = child.stdout.take().expect("stdout");
        let mut buf = [0u8; 4096];
        let mut text = String::new();
        while !text.contains('\n') {
            match out.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => text.push_str(&String::from_utf8_lossy(&buf[..n])),
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        text
    };
    assert!(c.contains(" lo_up=false "), "{c}");
}

/// A loop device attached to an image, detached when dropped (whether the test passed or not).
struct Loop(String);

impl Drop for Loop {
    fn drop(&mut self) {
        // If the namespace still holds the mount, this sets autoclear and the kernel detaches it at the unmount.
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

/// The switch_root test needs mksquashfs (Debian squashfs-tools), losetup and ldd besides the namespace tools.
fn squashfs_tools_available() -> bool {
    let have = |prog: &str, arg: &str| {
        Command::new(prog)
            .arg(arg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    };
    let ok =
        have("mksquashfs", "-version") && have("losetup", "--version") && have("ldd", "--version");
    if !ok && std::env::var("BAETYL_INIT_SKIP_NS").as_deref() == Ok("1") {
        eprintln!(
            "skipped: mksquashfs (squashfs-tools), losetup or ldd is missing (BAETYL_INIT_SKIP_NS=1)"
        );
        return false;
    }
    assert!(
        ok,
        "this test needs mksquashfs (Debian package squashfs-tools), losetup and ldd \
         (set BAETYL_INIT_SKIP_NS=1 to skip it)"
    );
    true
}

/// Copies `bin` into `tree` as `dest` with the shared libraries and the ELF interpreter it needs (from ldd), so it
/// runs inside the tree.
fn copy_with_libraries(bin: &Path, tree: &Path, dest: &str) {
    let target = tree.join(dest.trim_start_matches('/'));
    std::fs::create_dir_all(target.parent().expect("parent")).expect("mkdir");
    std::fs::copy(bin, &target).expect("copy binary");
    let out = Command::new("ldd").arg(bin).output().expect("ldd");
    let text = String::from_utf8_lossy(&out.stdout);
    for line in text.lines() {
        // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)` or `/lib64/ld-linux-x86-64.so.2 (0x...)`.
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        let Some(path) = path.filter(|p| p.starts_with('/')) else {
            continue;
        };
        let to = tree.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(to.parent().expect("parent")).expect("mkdir");
        std::fs::copy(path, &to).unwrap_or_else(|e| panic!("copy {path}: {e}"));
    }
}

/// A squashfs image with the directories `dirs` and the probe as /bin/baetyl-squashfs-probe (a name that exists
/// nowhere but in the image), attached read-only to a free loop device.
fn squashfs_on_loop(s: &Setup, dirs: &[&str]) -> Loop {
    let tree = s.path("rootfs");
    for d in dirs {
        std::fs::create_dir_all(tree.join(d)).expect("mkdir");
    }
    copy_with_libraries(Path::new(PROBE), &tree, "/bin/baetyl-squashfs-probe");
    let img = s.path("root.squashfs");
    let out = Command::new("mksquashfs")
        .arg(&tree)
        .arg(&img)
        .args(["-noappend", "-quiet", "-no-progress", "-all-root"])
        .output()
        .expect("mksquashfs");
    assert!(out.status.success(), "mksquashfs: {out:?}");
    let out = Command::new("losetup")
        .args(["-f", "--show", "-r"])
        .arg(&img)
        .output()
        .expect("losetup");
    assert!(out.status.success(), "losetup -f --show: {out:?}");
    let loop_dev = Loop(String::from_utf8_lossy(&out.stdout).trim().to_string());
    assert!(loop_dev.0.starts_with("/dev/loop"), "{}", loop_dev.0);
    loop_dev
}

#[test]
fn switch_root_into_a_read_only_squashfs_and_start_the_master_from_it() {
    if !namespaces_available() || !squashfs_tools_available() {
        return;
    }
    let s = Setup::new();
    // The root filesystem image: the mount points init needs, and the "master" (the probe, which reports what /
    // is) under a name that exists nowhere but in the image.
    let loop_dev = squashfs_on_loop(
        &s,
        &["proc", "sys", "dev", "run", "tmp", "etc", "var/lib/baetyl"],
    );

    // The stand-in for the initramfs: a tmpfs mounted on the --root directory inside the namespace, holding three
    // files, plus a tmpfs mounted inside it whose file must survive the freeing (it is another mount).
    let seed = s.path("seed");
    std::fs::create_dir_all(seed.join("etc/baetyl")).expect("mkdir");
    std::fs::create_dir_all(seed.join("lib/modules")).expect("mkdir");
    std::fs::write(seed.join("init"), "not really init").expect("write");
    std::fs::write(seed.join("etc/baetyl/init.yml"), "{}").expect("write");
    std::fs::write(seed.join("lib/modules/squashfs.ko"), "x").expect("write");
    let root = s.path("root");
    std::fs::create_dir(&root).expect("mkdir");

    let (cfg, cmdline) = s.config(
        &["/bin/baetyl-squashfs-probe", "--signal", "SIGUSR2"],
        &format!(
            "root: {{device: {}, wait: 2s}}\nvolumes:\n  - name: hub\n    target: /opt/not-in-image\n",
            loop_dev.0
        ),
    );
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--pid",
        "--fork",
        "--kill-child",
        "--mount-proc",
        "--uts",
        "/bin/sh",
        "-c",
        "mount -t tmpfs -o mode=0755 initramfs \"$0\" && cp -a \"$1\"/. \"$0\"/ && mkdir -p \"$0/mnt/other\" && \
         mount -t tmpfs other \"$0/mnt/other\" && echo keep > \"$0/mnt/other/keep\" && shift && exec \"$@\"",
    ])
    .arg(&root)
    .arg(&seed)
    .arg(BIN)
    .arg("--config")
    .arg(&cfg)
    .arg("--cmdline")
    .arg(&cmdline)
    .arg("--root")
    .arg(&root);
    let r = run(cmd, TIMEOUT);

    assert_eq!(
        r.status.signal(),
        Some(libc::SIGINT),
        "power off ends the namespace with SIGINT:\n{}",
        r.all()
    );
    r.pos("starting as pid 1 ");
    let switched = format!(
        "root {}{} (squashfs, read-only) is now / (initramfs freed: 3 files, 1 mount(s) left alone)",
        root.display(),
        loop_dev.0
    );
    // Order: /proc, /sys, /dev first, then the switch, then the other base mounts on the new root.
    let order = [
        "mounted devtmpfs on /dev",
        switched.as_str(),
        "mounted devpts on /dev/pts",
        "mounted cgroup2 on /sys/fs/cgroup",
        "/opt/not-in-image does not exist and cannot be created: the root filesystem is read-only, so the image \
         must contain this directory; /opt/not-in-image not mounted",
        "master started pid=",
        "SIGUSR2 received: power off requested",
        "shutdown 4/5: unmounting 8 filesystem(s)",
        "unmounted /var/lib/baetyl",
        "unmounted /sys/fs/cgroup",
        "unmounted /dev/pts",
        "unmounted /dev\n",
        "unmounted /sys\n",
        "unmounted /proc\n",
        "shutdown 5/5: power off",
    ];
    r.assert_in_order(&order);
    assert!(
        !r.stderr.contains("re-root"),
        "no re-root after a switch:\n{}",
        r.all()
    );
    assert!(!r.stderr.contains("WARN unmount"), "{}", r.all());
    assert!(
        !r.stderr.contains("unmounted /\n"),
        "/ is never unmounted:\n{}",
        r.all()
    );

    // The master ran from the image: its path exists only there, / is the read-only squashfs, and /proc (moved
    // from the initramfs) is mounted inside it, as are the mounts made after the switch.
    let probe = r
        .stdout
        .lines()
        .find(|l| l.starts_with("BAETYL-PROBE pid="))
        .unwrap_or_else(|| panic!("no probe line:\n{}", r.all()));
    assert!(!Path::new("/bin/baetyl-squashfs-probe").exists());
    assert!(probe.contains(" exe=/bin/baetyl-squashfs-probe"), "{probe}");
    assert!(probe.contains(" root_fs=squashfs root_ro=true "), "{probe}");
    assert!(probe.contains("ppid=1 "), "{probe}");
    let mounts: Vec<&str> = probe
        .split(' ')
        .find_map(|f| f.strip_prefix("mounts="))
        .unwrap_or_default()
        .split(',')
        .collect();
    for m in [
        "/",
        "/proc",
        "/sys",
        "/dev",
        "/dev/pts",
        "/run",
        "/tmp",
        "/sys/fs/cgroup",
        "/var/lib/baetyl",
    ] {
        assert!(mounts.contains(&m), "{m} not mounted: {probe}");
    }
    // Nothing of the host or the initramfs is visible from the new root.
    assert!(
        !mounts
            .iter()
            .any(|m| m.contains("mnt/other") || m.starts_with(&*root.to_string_lossy())),
        "{probe}"
    );
    drop(loop_dev);
}

#[test]
fn root_that_cannot_be_used_leaves_init_booting_from_the_initramfs() {
    if !namespaces_available() || !squashfs_tools_available() {
        return;
    }
    // An image without /sys: the switch is refused before anything moves, the new root is unmounted again, and
    // the boot goes on under --root as without a `root` section, master included.
    let s = Setup::new();
    let loop_dev = squashfs_on_loop(&s, &["proc", "dev", "run", "tmp"]);
    let root = s.path("root");
    std::fs::create_dir(&root).expect("mkdir");
    let (cfg, cmdline) = s.config(
        &[PROBE, "--signal", "SIGUSR2"],
        &format!("root: {{device: {}, wait: 1s}}\n", loop_dev.0),
    );
    let r = run(
        init_cmd(true, &cfg, &cmdline, &["--root", &root.to_string_lossy()]),
        TIMEOUT,
    );
    assert_eq!(r.status.signal(), Some(libc::SIGINT), "{}", r.all());
    r.pos(&format!(
        "root {}{}: switch root to {}/.baetyl-newroot: /sys is not a directory in the new root (the image must \
         contain it)",
        root.display(),
        loop_dev.0,
        root.display()
    ));
    r.pos("booting on from the initramfs");
    assert!(!r.stderr.contains("is now /"), "{}", r.all());
    let probe = r
        .stdout
        .lines()
        .find(|l| l.starts_with("BAETYL-PROBE pid="))
        .unwrap_or_else(|| panic!("no probe line:\n{}", r.all()));
    let mounts: Vec<&str> = probe
        .split(' ')
        .find_map(|f| f.strip_prefix("mounts="))
        .unwrap_or_default()
        .split(',')
        .collect();
    for m in ["proc", "sys", "dev", "dev/pts", "sys/fs/cgroup"] {
        let want = format!("{}/{m}", root.display());
        assert!(
            mounts.contains(&want.as_str()),
            "{want} not mounted: {probe}"
        );
    }
    let newroot = format!("{}/.baetyl-newroot", root.display());
    assert!(!mounts.contains(&newroot.as_str()), "{probe}");
    assert!(!probe.contains("root_fs=squashfs"), "{probe}");
    r.pos("shutdown 4/5: unmounting 7 filesystem(s)");
    r.pos("shutdown 5/5: power off");
    drop(loop_dev);
}

#[test]
fn root_device_that_never_appears_is_reported_and_boot_goes_on() {
    if !namespaces_available() {
        return;
    }
    let s = Setup::new();
    let root = s.path("root");
    std::fs::create_dir(&root).expect("mkdir");
    let (cfg, cmdline) = s.config(
        &[PROBE, "--signal", "SIGUSR2"],
        "root: {label: baetyl-no-such-root, wait: 300ms}\n",
    );
    let r = run(
        init_cmd(true, &cfg, &cmdline, &["--root", &root.to_string_lossy()]),
        TIMEOUT,
    );
    assert_eq!(r.status.signal(), Some(libc::SIGINT), "{}", r.all());
    r.pos(
        "ERROR root labelled `baetyl-no-such-root`: no such device after 300ms; check that the disk has a GPT \
         partition named `baetyl-no-such-root`",
    );
    assert!(r.pos("booting on from the initramfs") < r.pos("mounted devpts on /dev/pts"));
    assert!(r.stdout.contains("BAETYL-PROBE pid="), "{}", r.all());
    r.pos("shutdown 5/5: power off");
}

/// An ext4 filesystem labelled `label` (1 KiB blocks, so the group descriptors are at byte 2048) holding
/// `volumes/hub/f1..f20`, with `flips` (offset, bytes) written over it, attached read-write to a free loop device.
/// Returns the loop device and the image's path.
fn ext4_on_loop(s: &Setup, label: &str, flips: &[(u64, &[u8])]) -> (Loop, PathBuf) {
    let tree = s.path("datatree");
    std::fs::create_dir_all(tree.join("volumes/hub")).expect("mkdir");
    for i in 1..=20 {
        std::fs::write(
            tree.join(format!("volumes/hub/f{i}")),
            format!("file {i}\n"),
        )
        .expect("write");
    }
    let img = s.path("data.ext4");
    let out = Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-b", "1024", "-L", label, "-d"])
        .arg(&tree)
        .arg(&img)
        .arg("16M")
        .output()
        .expect("mke2fs (e2fsprogs)");
    assert!(out.status.success(), "mke2fs: {out:?}");
    let mut bytes = std::fs::read(&img).expect("read image");
    for (at, b) in flips {
        let at = *at as usize;
        bytes[at..at + b.len()].copy_from_slice(b);
    }
    std::fs::write(&img, &bytes).expect("write image");
    let out = Command::new("losetup")
        .args(["-f", "--show"])
        .arg(&img)
        .output()
        .expect("losetup");
    assert!(out.status.success(), "losetup -f --show: {out:?}");
    let dev = Loop(String::from_utf8_lossy(&out.stdout).trim().to_string());
    assert!(dev.0.starts_with("/dev/loop"), "{}", dev.0);
    (dev, img)
}

/// The host's e2fsck with its libraries under `root` (as the image ships it), for init's `data.checker`.
fn install_e2fsck(root: &Path) {
    let e2fsck = ["/sbin/e2fsck", "/usr/sbin/e2fsck"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
        .expect("e2fsck (Debian package e2fsprogs)");
    copy_with_libraries(Path::new(e2fsck), root, "/sbin/e2fsck");
}

/// A label unique to this run (ext4 labels hold 16 bytes): init finds the data partition by it among every block
/// device of the host.
fn unique_label(tag: &str) -> String {
    format!("bt{}{tag}", std::process::id() % 100_000)
}

/// Boots init under `--root` with the data partition found by `data` (`label: L` or `device: D`), a volume, and
/// the probe as the master; returns the run and the probe's line.
fn boot_with_data(s: &Setup, data: &str) -> (Run, String) {
    let root = s.path("root");
    std::fs::create_dir_all(&root).expect("mkdir");
    install_e2fsck(&root);
    let (cfg, cmdline) = s.config(
        &[PROBE, "--signal", "SIGUSR2"],
        "volumes:\n  - name: hub\n    target: /opt/hub\n",
    );
    let yaml = std::fs::read_to_string(&cfg).expect("read").replace(
        "data: null",
        &format!("data: {{{data}, wait: 2s, grow: false}}"),
    );
    std::fs::write(&cfg, yaml).expect("write");
    let r = run(
        init_cmd(true, &cfg, &cmdline, &["--root", &root.to_string_lossy()]),
        TIMEOUT,
    );
    let probe = r
        .stdout
        .lines()
        .find(|l| l.starts_with("BAETYL-PROBE pid="))
        .unwrap_or_else(|| panic!("no probe line:\n{}", r.all()))
        .to_string();
    (r, probe)
}

fn probe_mounts(probe: &str) -> Vec<String> {
    probe
        .split(' ')
        .find_map(|f| f.strip_prefix("mounts="))
        .unwrap_or_default()
        .split(',')
        .map(str::to_string)
        .collect()
}

/// Reads a file out of an ext4 image without mounting it.
fn debugfs_cat(img: &Path, file: &str) -> String {
    let out = Command::new("debugfs")
        .args(["-R", &format!("cat {file}")])
        .arg(img)
        .output()
        .expect("debugfs (e2fsprogs)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn corrupt_data_partition_that_preen_can_repair_is_repaired_and_mounted() {
    if !namespaces_available() || !squashfs_tools_available() {
        return;
    }
    let s = Setup::new();
    let label = unique_label("ok");
    // Two bytes of group 0's free-blocks count in the group descriptor table: its checksum no longer matches.
    let (dev, img) = ext4_on_loop(&s, &label, &[(2048 + 0x0C, b"\x5a\x5a")]);
    let (r, probe) = boot_with_data(&s, &format!("label: {label}"));
    assert_eq!(r.status.signal(), Some(libc::SIGINT), "{}", r.all());
    let root = s.path("root");
    r.assert_in_order(&[
        &format!(
            "checking the data partition {}{}: /sbin/e2fsck -p",
            root.display(),
            dev.0
        ),
        "e2fsck: ",
        "e2fsck repaired errors (exit status 1); mounting it",
        &format!(
            "data partition {}{} ({label}) on /var/lib/baetyl",
            root.display(),
            dev.0
        ),
        "volume hub (read-write) on /opt/hub",
        "master started pid=",
    ]);
    assert!(!r.stderr.contains("SAFE MODE"), "{}", r.all());
    assert!(probe.contains(" safe_mode=- "), "{probe}");
    let mounts = probe_mounts(&probe);
    for m in ["var/lib/baetyl", "opt/hub"] {
        let want = format!("{}/{m}", root.display());
        assert!(mounts.contains(&want), "{want} not mounted: {probe}");
    }
    drop(dev);
    // The repair held and lost nothing.
    let check = Command::new("e2fsck")
        .args(["-fn"])
        .arg(&img)
        .output()
        .expect("e2fsck");
    assert!(check.status.success(), "{check:?}");
    assert_eq!(debugfs_cat(&img, "/volumes/hub/f7"), "file 7\n");
}

#[test]
fn data_partition_that_fails_its_check_boots_in_safe_mode_with_no_volume_or_application() {
    if !namespaces_available() || !squashfs_tools_available() {
        return;
    }
    // Group 0's inode table location (e2fsck -p: exit 4, "run fsck manually"), then the superblock's magic
    // (exit 8: no filesystem found).
    for (tag, flip, status) in [
        ("it", (2048u64 + 8, &b"\x5a\x5a"[..]), 4),
        ("sb", (1024 + 0x38, &b"\x00\x00"[..]), 8),
    ] {
        let s = Setup::new();
        let label = unique_label(tag);
        let (dev, _img) = ext4_on_loop(&s, &label, &[flip]);
        // By device: a superblock without its magic has no label to be found by (on a device, the GPT partition
        // name finds it).
        let (r, probe) = boot_with_data(&s, &format!("label: {label}, device: {}", dev.0));
        assert_eq!(r.status.signal(), Some(libc::SIGINT), "{}", r.all());
        let root = s.path("root");
        let reason = format!(
            "the data partition {}{} ({label}) failed its check: e2fsck exit status {status}",
            root.display(),
            dev.0
        );
        r.assert_in_order(&[
            "/sbin/e2fsck -p",
            "SAFE MODE",
            reason.as_str(),
            "no application runs and no volume is mounted",
            "safe mode: the master's work dir is a tmpfs on /var/lib/baetyl",
            "master started pid=",
        ]);
        assert!(!r.stderr.contains("volume hub"), "{}", r.all());
        // The master learns it from its environment and the marker file, which says why.
        let marker = format!("{}/run/baetyl/safe-mode.json", root.display());
        assert!(probe.contains(&format!(" safe_mode={marker} ")), "{probe}");
        let line = r
            .stdout
            .lines()
            .find(|l| l.starts_with("BAETYL-PROBE safe-mode-marker"))
            .unwrap_or_else(|| panic!("no marker line:\n{}", r.all()));
        assert!(line.contains(&format!("\"reason\": \"{reason}")), "{line}");
        assert!(line.contains("\"remedy\""), "{line}");
        // Nothing of the partition and no volume: only the tmpfs work dir.
        let mounts = probe_mounts(&probe);
        assert!(
            mounts.contains(&format!("{}/var/lib/baetyl", root.display())),
            "{probe}"
        );
        assert!(!mounts.iter().any(|m| m.ends_with("/opt/hub")), "{probe}");
        drop(dev);
    }
}

#[test]
fn master_gets_the_raised_descriptor_limit() {
    if !namespaces_available() {
        return;
    }
    // As the kernel starts PID 1: soft 1,024. Init raises it for the master to `nofile` (here within the hard
    // limit the test may set); asked for more than a container allows, it falls back to the hard limit.
    for (want, expect, fallback) in [(8192, "8192/8192", false), (1 << 20, "8192/8192", true)] {
        let s = Setup::new();
        let root = s.path("root");
        std::fs::create_dir(&root).expect("mkdir");
        let (cfg, cmdline) = s.config(&[PROBE, "--signal", "SIGUSR2"], "");
        let text = std::fs::read_to_string(&cfg)
            .expect("read")
            .replace("  grace: 3s\n", &format!("  grace: 3s\n  nofile: {want}\n"));
        std::fs::write(&cfg, text).expect("write");
        let inner = init_cmd(true, &cfg, &cmdline, &["--root", &root.to_string_lossy()]);
        let mut cmd = Command::new("prlimit");
        cmd.arg("--nofile=1024:8192")
            .arg(inner.get_program())
            .args(inner.get_args());
        let r = run(cmd, TIMEOUT);
        assert_eq!(r.status.signal(), Some(libc::SIGINT), "{}", r.all());
        assert!(
            r.stdout.contains(&format!(" nofile={expect} ")),
            "{}",
            r.all()
        );
        if fallback {
            r.pos("descriptor limit (RLIMIT_NOFILE) 8192 for the master and its services: the hard limit cannot");
        } else {
            r.pos("descriptor limit (RLIMIT_NOFILE) 8192 for the master and its services\n");
        }
    }
}

#[test]
fn master_that_cannot_start_is_retried_with_capped_backoff_and_init_still_answers_signals() {
    // Not PID 1 (subreaper, --dry): the test signals init itself. The master's program does not exist: every
    // start fails at exec, the delay doubles up to restart_max and stays there, and init keeps running.
    let s = Setup::new();
    let (cfg, cmdline) = s.config(&["/nonexistent/baetyl", "master"], "");
    let text = std::fs::read_to_string(&cfg)
        .expect("read")
        .replace("restart_min: 100ms", "restart_min: 50ms")
        .replace("restart_max: 400ms", "restart_max: 200ms");
    std::fs::write(&cfg, text).expect("write");
    let mut cmd = init_cmd(false, &cfg, &cmdline, &["--dry"]);
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(Stdio::null());
    let mut child = cmd.spawn().expect("spawn init");
    let mut err = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = err.read_to_string(&mut text);
        text
    });
    // Six failed starts take 50+100+200+200+200 ms; give it time, then ask for a power off.
    std::thread::sleep(Duration::from_millis(2500));
    assert!(
        child.try_wait().expect("wait").is_none(),
        "init exited by itself"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGUSR2,
    )
    .expect("signal init");
    let status = poll(TIMEOUT, || child.try_wait().expect("wait")).expect("init did not stop");
    let log = reader.join().unwrap_or_default();
    assert_eq!(status.code(), Some(0), "{log}");
    let fails = log
        .matches("cannot start the master `/nonexistent/baetyl`")
        .count();
    assert!(fails >= 6, "{fails} failed starts:\n{log}");
    let delays: Vec<&str> = log
        .lines()
        .filter_map(|l| l.split("retrying in ").nth(1))
        .collect();
    assert_eq!(
        &delays[..5],
        ["50ms", "100ms", "200ms", "200ms", "200ms"],
        "{log}"
    );
    assert!(
        log.contains("SIGUSR2 received: power off requested"),
        "{log}"
    );
    assert!(log.contains("master is not running"), "{log}");
    assert!(log.contains("shutdown 5/5: power off"), "{log}");
}

#[test]
fn master_crash_looping_by_signal_and_exit_code_never_takes_init_down() {
    if !namespaces_available() {
        return;
    }
    // Twelve crashes in a row, alternating SIGKILL, SIGSEGV and exit statuses, as PID 1 of a namespace; the
    // thirteenth start asks for a power off. Init restarts each with the capped backoff and reaps each.
    let s = Setup::new();
    let starts = s.path("starts");
    let script = s.write(
        "master.sh",
        &format!(
            "echo start >> {f}\nn=$(wc -l < {f})\n\
             if [ \"$n\" -lt 13 ]; then case $((n % 3)) in 0) kill -KILL $$;; 1) kill -SEGV $$;; *) exit $n;; esac; fi\n\
             kill -USR2 $PPID\nwhile :; do sleep 0.1; done\n",
            f = starts.display()
        ),
    );
    let (cfg, cmdline) = s.config(&["/bin/sh", &script.to_string_lossy()], "");
    let text = std::fs::read_to_string(&cfg)
        .expect("read")
        .replace("restart_min: 100ms", "restart_min: 20ms")
        .replace("restart_max: 400ms", "restart_max: 80ms");
    std::fs::write(&cfg, text).expect("write");
    let r = run(init_cmd(true, &cfg, &cmdline, &["--dry"]), TIMEOUT);
    assert_eq!(r.status.code(), Some(0), "{}", r.all());
    let n = std::fs::read_to_string(&starts)
        .expect("starts")
        .lines()
        .count();
    assert_eq!(n, 13, "{}", r.all());
    r.pos("(start #13)");
    r.pos("killed by SIGKILL");
    r.pos("killed by SIGSEGV");
    r.pos("exit status 11");
    assert_eq!(
        r.stderr.matches("restarting in 80ms").count(),
        10,
        "{}",
        r.all()
    );
}
