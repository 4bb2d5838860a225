//! `baetyl-probe`: a test-only stand-in for `baetyl master` under init (the namespace tests of `init/tests`). It
//! prints one `BAETYL-PROBE` line with what it sees (pid, parent, hostname, mounts, modules, loopback, init's
//! memory, kernel log records, what `/` is), optionally serves one TCP connection, optionally signals init (its
//! parent) to reboot or power off, then waits to be stopped like a master.
//!
//! Built only with the `probe` feature (`cargo test -p baetyl-init` turns it on), so that no production build,
//! least of all the initramfs's `/init`, carries it.

use clap::Parser;
use nix::sys::signal::{Signal, kill};

#[derive(Parser)]
#[command(name = "baetyl-probe")]
struct Args {
    /// Signal to send to the parent, e.g. SIGUSR2 (power off) or SIGTERM (reboot).
    #[arg(long)]
    signal: Option<Signal>,
    /// Before signalling, serve one TCP connection on this port: read a line, answer `baetyl-probe: LINE`.
    #[arg(long)]
    listen: Option<u16>,
}

fn main() {
    let args = Args::parse();
    std::process::exit(probe(args.signal, args.listen));
}

fn probe(signal: Option<Signal>, listen: Option<u16>) -> i32 {
    let pid = nix::unistd::getpid();
    let ppid = nix::unistd::getppid();
    let hostname = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")
        .map(|t| baetyl_init::mounts::mount_points(&t))
        .unwrap_or_default();
    let mounts: Vec<String> = mounts.iter().map(|p| p.display().to_string()).collect();
    let modules = std::fs::read_to_string("/proc/modules")
        .map(|t| {
            t.lines()
                .filter_map(|l| l.split(' ').next())
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    // Memory of PID 1 (what init costs on the device), and whether init brought loopback up.
    let init_rss = std::fs::read_to_string(format!("/proc/{ppid}/status"))
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .map(|v| v.trim().trim_end_matches(" kB").to_string())
        })
        .unwrap_or_default();
    let lo_up = baetyl_init::net::link_is_up("lo").unwrap_or(false);
    let kmsg_lines = count_kmsg_lines("baetyl-init:");
    // What `/` is (after a switch_root: the image's read-only filesystem) and where this program was started from.
    let (root_fs, root_ro) = root_filesystem();
    let exe = std::fs::read_link("/proc/self/exe")
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    // The descriptor limit init gave the master, and whether init started it in safe mode.
    let nofile = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("Max open files"))
                .map(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    format!("{}/{}", f.get(3).unwrap_or(&"?"), f.get(4).unwrap_or(&"?"))
                })
        })
        .unwrap_or_default();
    let safe_mode = std::env::var(baetyl_sdk::env::SAFE_MODE).unwrap_or_else(|_| "-".into());
    println!(
        "BAETYL-PROBE pid={pid} ppid={ppid} hostname={hostname} mounts={} modules={modules} lo_up={lo_up} \
         init_rss_kib={init_rss} kmsg_lines={kmsg_lines} root_fs={root_fs} root_ro={root_ro} nofile={nofile} \
         safe_mode={safe_mode} exe={exe}",
        mounts.join(",")
    );
    if safe_mode != "-" {
        // The marker's contents on one line, for the test to read (it lives on a tmpfs of the namespace).
        let marker =
            std::fs::read_to_string(&safe_mode).unwrap_or_else(|e| format!("unreadable: {e}"));
        println!(
            "BAETYL-PROBE safe-mode-marker {}",
            marker.replace('\n', " ")
        );
    }
    if let Some(port) = listen
        && let Err(e) = serve_one(port)
    {
        eprintln!("probe: serving on port {port}: {e}");
    }
    if let Some(sig) = signal {
        if let Err(e) = kill(ppid, sig) {
            eprintln!("probe: cannot signal {ppid}: {e}");
            return 1;
        }
        println!("BAETYL-PROBE sent {sig} to {ppid}");
    }
    // Stay up like a master would, until init stops us with SIGTERM (default action).
    loop {
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

/// The filesystem type of `/` (a name for the usual ones, else the statfs magic) and whether it is read-only.
fn root_filesystem() -> (String, bool) {
    let fs = match nix::sys::statfs::statfs("/") {
        Ok(st) => {
            // The statfs magics of <linux/magic.h>; `f_type`'s width differs between architectures.
            let magic = st.filesystem_type().0 as u64;
            match magic {
                0x7371_7368 => "squashfs".to_string(),
                0x0102_1994 => "tmpfs".into(),
                0x8584_58f6 => "ramfs".into(),
                0xef53 => "ext4".into(),
                0xe0f5_e1e2 => "erofs".into(),
                0x794c_7630 => "overlay".into(),
                other => format!("{other:#x}"),
            }
        }
        Err(e) => format!("error:{e}"),
    };
    let ro = nix::sys::statvfs::statvfs("/")
        .map(|v| v.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY))
        .unwrap_or(false);
    (fs, ro)
}

/// Accepts one connection (through QEMU's port forward in the boot test) and echoes one line back.
fn serve_one(port: u16) -> std::io::Result<()> {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind(("0.0.0.0", port))?;
    println!("BAETYL-PROBE listening on {port}");
    let (stream, peer) = listener.accept()?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line)?;
    let line = line.trim_end();
    (&stream).write_all(format!("baetyl-probe: {line}\n").as_bytes())?;
    println!("BAETYL-PROBE served `{line}` to {peer}");
    Ok(())
}

/// Records in the kernel log containing `needle` (0 when /dev/kmsg cannot be read).
fn count_kmsg_lines(needle: &str) -> usize {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let Ok(mut kmsg) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/kmsg")
    else {
        return 0;
    };
    let mut count = 0;
    let mut buf = vec![0u8; 8192];
    loop {
        // Each read returns one record; EAGAIN at the end, EPIPE when a record was overwritten (keep going).
        match kmsg.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => count += usize::from(String::from_utf8_lossy(&buf[..n]).contains(needle)),
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
            Err(_) => break,
        }
    }
    count
}
