//! Boot tests of the OS images (`baetyl image build`) under QEMU with TCG, both architectures.
//!
//! `scripts/test.sh` builds the images (twice, to check that the build is reproducible) into
//! `$BAETYL_IMAGES/<arch>` and `$BAETYL_IMAGES/<arch>.rebuild`, then runs these tests with `--ignored`. Each boot
//! test writes the disk image to a larger medium, boots it from UEFI firmware (kernel + initramfs in a unified
//! kernel image, squashfs root, data partition grown on first boot), and through QEMU's port forwards:
//! waits for the hub's CONNACK, publishes and receives a message, sees the timer -> SQL function path work,
//! leaves a retained message, reads the memory of init, master and hub from the master API, reboots through
//! the API, finds the retained message again after the reboot, and powers off through the API; QEMU must exit 0.
//! The console must show that init checked the data partition with the image's e2fsck at both boots.
//!
//! The fsck tests boot copies of the image whose data partition was damaged first: a flipped byte in a group
//! descriptor, which `e2fsck -p` repairs (the device comes up with its application), and a root inode that is no
//! longer a directory, which it may not repair (the device comes up in safe mode: no application, no hub with
//! default credentials, the reason on the console and in inspect).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use baetyl_sdk::client::{Address, MasterClient};
use baetyl_testkit::mqtt::{Client, MessageExt, options};
use baetyl_testkit::process::Process;
use baetyl_testkit::wait::{poll, poll_async};
use baetyl_testkit::{test_dir, workspace_dir};
use rumqttc::QoS;
use serde_json::Value;

const BOOT: Duration = Duration::from_secs(300);

fn images() -> PathBuf {
    std::env::var_os("BAETYL_IMAGES")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_dir().join("target/images"))
}

/// The image `name` (`<arch>`: the default engine's, `<arch>.native`: `--engine native`).
fn image_dir(name: &str) -> PathBuf {
    let dir = images().join(name);
    let (arch, engine) = name.split_once('.').unwrap_or((name, ""));
    let engine = if engine.is_empty() {
        String::new()
    } else {
        format!(" --engine {engine}")
    };
    assert!(
        dir.join("disk.img").is_file(),
        "{}/disk.img is missing: build it with `baetyl image build --arch {arch}{engine} --out {}` \
         (scripts/test.sh does)",
        dir.display(),
        dir.display()
    );
    dir
}

/// The files of the read-only root, from `unsquashfs -lls`-style listing.
fn rootfs_listing(squashfs: &Path) -> Vec<String> {
    let out = Command::new("unsquashfs")
        .args(["-d", "", "-lc"])
        .arg(squashfs)
        .output()
        .expect("unsquashfs (squashfs-tools)");
    assert!(
        out.status.success(),
        "unsquashfs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

struct Vm {
    qemu: Process,
    dir: tempfile::TempDir,
    started: Instant,
    milestones: Milestones,
}

/// A boot's milestones, as they show on the console: a name and what a console line must contain (all of
/// the words; `|` separates alternatives of a word, for the human and the JSON log formats).
const MILESTONES: &[(&str, &[&str])] = &[
    ("init", &["starting as pid 1"]),
    ("containerd", &["containerd answers on"]),
    ("API", &["API listening"]),
    ("hub image", &["OCI image imported", "baetyl-hub"]),
    (
        "hub",
        &[
            "service started",
            "service=hub |service=\"hub\"|\"service\":\"hub\"",
        ],
    ),
    (
        "timer",
        &[
            "service started",
            "service=timer |service=\"timer\"|\"service\":\"timer\"",
        ],
    ),
    ("all images", &["OCI images imported"]),
];

/// When each of [`MILESTONES`] first showed on the console, in seconds after QEMU's start (the host's clock:
/// the console file is watched every 50 ms from the start of the boot).
struct Milestones {
    seen: std::sync::Arc<std::sync::Mutex<Vec<Option<f64>>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Milestones {
    fn watch(console: PathBuf, started: Instant) -> Milestones {
        let seen = std::sync::Arc::new(std::sync::Mutex::new(vec![None; MILESTONES.len()]));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (s, st) = (seen.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut offset = 0usize;
            let mut partial = String::new();
            while !st.load(std::sync::atomic::Ordering::Relaxed) {
                let now = started.elapsed().as_secs_f64();
                let bytes = std::fs::read(&console).unwrap_or_default();
                if bytes.len() > offset {
                    partial.push_str(&String::from_utf8_lossy(&bytes[offset..]));
                    offset = bytes.len();
                    let mut seen = s.lock().unwrap_or_else(|p| p.into_inner());
                    for line in partial.lines() {
                        for (i, (_, words)) in MILESTONES.iter().enumerate() {
                            let all = words
                                .iter()
                                .all(|w| w.split('|').any(|alt| line.contains(alt)));
                            if all && seen[i].is_none() {
                                seen[i] = Some(now);
                            }
                        }
                    }
                    // Keep the unfinished last line for the next round.
                    partial = match partial.rfind('\n') {
                        Some(i) => partial[i + 1..].to_string(),
                        None => partial,
                    };
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Milestones { seen, stop }
    }

    /// `name 1.2, name 3.4, ...` for the milestones seen so far.
    fn summary(&self) -> String {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        MILESTONES
            .iter()
            .zip(seen.iter())
            .filter_map(|((name, _), t)| t.map(|t| format!("{name} {t:.1}")))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl Drop for Milestones {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Vm {
    fn console(&self) -> String {
        let bytes = std::fs::read(self.dir.path().join("console.log")).unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    fn port(&self, guest: u16) -> u16 {
        let ports = std::fs::read_to_string(self.dir.path().join("ports")).unwrap_or_default();
        ports
            .lines()
            .find_map(|l| {
                let (g, h) = l.split_once('=')?;
                (g == guest.to_string()).then(|| h.parse().ok())?
            })
            .unwrap_or(0)
    }

    fn fail(&self, what: &str) -> ! {
        panic!("{what}\n--- console\n{}", self.console());
    }
}

/// Boots a copy of `image` written to a larger medium (as when written to an SD card: init grows the data
/// partition), in a directory that also holds the console log and the forwarded ports.
fn boot(arch: &str, image: &Path) -> Vm {
    boot_with(arch, image, None)
}

/// A kernel, initramfs and command line that QEMU boots directly (`-kernel`), with the image as a plain disk
/// instead of booting it from UEFI firmware.
struct Direct<'a> {
    kernel: &'a Path,
    initrd: &'a Path,
    append: &'a str,
}

fn boot_with(arch: &str, image: &Path, direct: Option<Direct>) -> Vm {
    let dir = test_dir("baetyl-vm-");
    let disk = dir.path().join("disk.img");
    std::fs::copy(image, &disk).expect("copy disk");
    let medium = std::fs::metadata(&disk)
        .map(|m| m.len())
        .unwrap_or(0)
        .max(768 << 20);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&disk)
        .and_then(|f| f.set_len(medium))
        .expect("grow medium");
    start(arch, dir, direct)
}

/// Starts QEMU on `dir/disk.img` (a new console log and ports file in `dir`).
fn start(arch: &str, dir: tempfile::TempDir, direct: Option<Direct>) -> Vm {
    // A restart on the same disk: the last run's ports (dead now) and console must not be read as this run's.
    for old in ["ports", "console.log"] {
        let _ = std::fs::remove_file(dir.path().join(old));
    }
    let disk = dir.path().join("disk.img");
    let started = Instant::now();
    let log = std::fs::File::create(dir.path().join("qemu.out")).expect("qemu.out");
    let mut cmd = Command::new(workspace_dir().join("qemu/run"));
    cmd.args(["--arch", arch, "--reboot", "--forward", "9990"]);
    match direct {
        None => cmd.arg("--disk").arg(&disk),
        Some(d) => cmd
            .arg("--kernel")
            .arg(d.kernel)
            .arg("--initrd")
            .arg(d.initrd)
            .arg("--append")
            .arg(d.append)
            .arg("--drive")
            .arg(&disk),
    };
    cmd.arg("--log")
        .arg(dir.path().join("console.log"))
        .arg("--ports-file")
        .arg(dir.path().join("ports"))
        .stdout(log.try_clone().expect("log"))
        .stderr(log);
    let qemu = Process::spawn(&mut cmd, "qemu/run").expect("qemu/run");
    let milestones = Milestones::watch(dir.path().join("console.log"), started);
    let vm = Vm {
        qemu,
        dir,
        started,
        milestones,
    };
    if poll(Duration::from_secs(30), || vm.port(1883) != 0).is_err() {
        vm.fail("qemu/run wrote no ports file");
    }
    vm
}

/// Connects to the guest's hub as `demo` (retrying until `deadline` while the guest boots).
async fn connect(port: u16, id: &str, deadline: Instant) -> Option<Client> {
    let mut attempt = 0;
    poll_async(deadline.saturating_duration_since(Instant::now()), || {
        // A fresh client id per attempt: a CONNECT of an abandoned attempt that the hub reads late would
        // otherwise take the session over from the connection that got through.
        attempt += 1;
        let mut o = options(&format!("{id}-{attempt}"), port);
        o.set_credentials("demo", "demo-password")
            .set_keep_alive(Duration::from_secs(60));
        Client::connect(o)
    })
    .await
    .ok()
}

fn mib(v: &Value) -> f64 {
    v.as_f64().unwrap_or(0.0) / (1024.0 * 1024.0)
}

/// The RSS of the hub's instances in inspect's answer, MiB.
fn hub_rss(inspect: &Value) -> f64 {
    inspect["services"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == "hub"))
        .and_then(|hub| hub["instances"].as_array())
        .map(|i| i.iter().map(|i| mib(&i["mem_stats"]["rss"])).sum())
        .unwrap_or(0.0)
}

/// Whether a new subscriber gets `want` as the retained message on `boot/retained`, polled until `within`.
async fn retained(port: u16, id: &str, want: &str, within: Duration) -> bool {
    let mut attempt = 0;
    poll_async(within, || {
        attempt += 1;
        let mut o = options(&format!("{id}-{attempt}"), port);
        o.set_credentials("demo", "demo-password");
        async move {
            let mut c = Client::connect(o).await.ok()?;
            c.subscribe("boot/retained", QoS::AtLeastOnce).await.ok()?;
            let p = c
                .recv_on("boot/retained", Duration::from_secs(1))
                .await
                .ok()??;
            let _ = c.disconnect().await;
            (p.retain && p.text() == want).then_some(())
        }
    })
    .await
    .is_ok()
}

/// The master API of a development image through the forwarded port, as the operator.
fn master_api(vm: &Vm) -> MasterClient {
    let token = std::fs::read_to_string(images().join("operator.token")).expect("operator.token");
    MasterClient::new(Address::Tcp(format!("127.0.0.1:{}", vm.port(9990))))
        .with_credentials("baetyl-operator", token.trim())
}

/// Powers the guest off through the API: init stops everything and QEMU exits 0. Returns the console.
async fn power_off(mut vm: Vm, master: &MasterClient) -> String {
    stop(&mut vm, master).await;
    vm.console()
}

/// Powers the guest off through the API and waits for QEMU to exit 0; the VM's directory (its disk) stays.
async fn stop(vm: &mut Vm, master: &MasterClient) {
    let (code, body) = master
        .call("PUT", "/v1/system/poweroff", None)
        .await
        .expect("poweroff call");
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    let Ok(status) = poll(Duration::from_secs(180), || vm.qemu.try_status()) else {
        vm.fail("QEMU still running 180 s after PUT /v1/system/poweroff");
    };
    if !status.success() {
        vm.fail(&format!("QEMU exited with {status}"));
    }
}

/// Publishes `nonce` as the retained message of `boot/retained` and waits until the hub stored it.
async fn leave_retained(vm: &Vm, mut client: Client, nonce: &str, id: &str) {
    client
        .publish(
            "boot/retained",
            QoS::AtLeastOnce,
            true,
            nonce.to_string().into_bytes(),
        )
        .await
        .expect("retain");
    let _ = client.disconnect().await;
    // The hub stores retained messages after the PUBACK: wait until a new subscriber gets it.
    if !retained(vm.port(1883), id, nonce, Duration::from_secs(30)).await {
        vm.fail("the retained message was not stored");
    }
}

/// The next message on `topic` (subscribed already), as JSON, within `secs`; the test fails naming `from`.
async fn recv_json(vm: &Vm, client: &mut Client, topic: &str, secs: u64, from: &str) -> Value {
    match client.recv_on(topic, Duration::from_secs(secs)).await {
        Ok(Some(p)) => p
            .json()
            .unwrap_or_else(|| vm.fail(&format!("{topic}: not JSON: {}", p.text()))),
        _ => vm.fail(&format!("no {topic} message from {from} within {secs} s")),
    }
}

/// The master's inspect answer once `ready` holds for it (polled through the forwarded API port for up to
/// `within`); the test fails with the last answer when it never does.
async fn inspect_until(
    vm: &Vm,
    master: &MasterClient,
    within: Duration,
    what: &str,
    ready: impl Fn(&Value) -> bool,
) -> Value {
    let got = poll_async(within, || async {
        let v = master.inspect().await.map_err(|e| e.to_string())?;
        if ready(&v) {
            Ok(v)
        } else {
            Err(format!("no {what} in inspect yet: {v}"))
        }
    })
    .await;
    match got {
        Ok(v) => v,
        Err(last) => vm.fail(&format!(
            "inspect through the forwarded API port: {}",
            last.unwrap_or_default()
        )),
    }
}

/// The byte range of the GPT partition `name` in a disk image (sfdisk's JSON dump).
fn partition(disk: &Path, name: &str) -> (u64, u64) {
    let out = Command::new("sfdisk")
        .arg("-J")
        .arg(disk)
        .output()
        .expect("sfdisk (fdisk)");
    assert!(out.status.success(), "sfdisk -J {}", disk.display());
    let v: Value = serde_json::from_slice(&out.stdout).expect("sfdisk JSON");
    let table = &v["partitiontable"];
    let sector = table["sectorsize"].as_u64().unwrap_or(512);
    let p = table["partitions"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == name))
        .unwrap_or_else(|| panic!("no partition {name} in {v}"));
    let field = |k: &str| {
        p[k].as_u64()
            .unwrap_or_else(|| panic!("{name}: no {k} in {p}"))
    };
    let (start, size) = (field("start"), field("size"));
    (start * sector, size * sector)
}

/// How the data partition of a copy of the image is damaged.
#[derive(Clone, Copy, Debug)]
enum Damage {
    /// One flipped byte in block group 0's descriptor (its free-blocks count): the descriptor's checksum no
    /// longer matches, which `e2fsck -p` repairs on its own.
    GroupDescriptor,
    /// The root directory's inode made a regular file, on a filesystem marked as not cleanly unmounted:
    /// "Root inode is not a directory" is beyond what `e2fsck -p` may repair.
    RootInode,
}

/// A copy of the `arch` image whose data partition has `damage`.
fn damaged_copy(arch: &str, damage: Damage) -> (tempfile::TempDir, PathBuf) {
    use std::io::{Read, Seek, SeekFrom, Write};
    let dir = test_dir("baetyl-damaged-");
    let disk = dir.path().join("disk.img");
    std::fs::copy(image_dir(arch).join("disk.img"), &disk).expect("copy disk");
    let (offset, len) = partition(&disk, "baetyl-data");
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&disk)
        .expect("open disk");
    let mut part = vec![0; len as usize];
    f.seek(SeekFrom::Start(offset))
        .expect("seek to the data partition");
    f.read_exact(&mut part).expect("read the data partition");
    match damage {
        Damage::GroupDescriptor => {
            // The superblock at 1024: s_first_data_block (20), s_log_block_size (24); the descriptors follow
            // the superblock's block; bg_free_blocks_count_lo is at 12 in a descriptor.
            let le32 = |at: usize| {
                let b = [part[at], part[at + 1], part[at + 2], part[at + 3]];
                u32::from_le_bytes(b) as usize
            };
            let block = 1024usize << le32(1024 + 24);
            let gdt = (le32(1024 + 20) + 1) * block;
            part[gdt + 12] ^= 0x5a;
        }
        Damage::RootInode => {
            let fs = dir.path().join("data.ext4");
            std::fs::write(&fs, &part).expect("data.ext4");
            for request in ["sif <2> mode 0100644", "ssv state 0"] {
                let out = Command::new("debugfs")
                    .args(["-w", "-R", request])
                    .arg(&fs)
                    .output()
                    .expect("debugfs (e2fsprogs)");
                assert!(out.status.success(), "{request}: {out:?}");
            }
            part = std::fs::read(&fs).expect("data.ext4");
        }
    }
    f.seek(SeekFrom::Start(offset))
        .expect("seek to the data partition");
    f.write_all(&part).expect("write the data partition back");
    (dir, disk)
}

/// Boots the image `name` (see [`image_dir`]) for `arch`; its engine is the one its root carries.
async fn boot_test(arch: &str, name: &str) {
    let src = image_dir(name);

    // No shell, getty, sshd or package manager in the root filesystem.
    let listing = rootfs_listing(&src.join("rootfs.squashfs"));
    for bad in [
        "sh", "bash", "dash", "busybox", "getty", "agetty", "sshd", "apt", "apt-get", "dpkg",
        "login",
    ] {
        assert!(
            !listing.iter().any(|p| p.rsplit('/').next() == Some(bad)),
            "{bad} found in the root filesystem: {listing:?}"
        );
    }
    assert!(
        listing
            .iter()
            .any(|p| p == "bin/baetyl" || p.ends_with("/bin/baetyl")),
        "{listing:?}"
    );

    // A containerd image carries Debian's containerd and runc and the services' OCI images; a native one none.
    let has = |p: &str| {
        listing
            .iter()
            .any(|l| l == p || l.ends_with(&format!("/{p}")))
    };
    let containerd = has("usr/bin/containerd");
    let engine = if containerd { "containerd" } else { "native" };
    for p in [
        "usr/bin/containerd-shim-runc-v2",
        "usr/sbin/runc",
        "usr/share/baetyl/oci/index.json",
    ] {
        assert_eq!(has(p), containerd, "{p} in a {engine} image: {listing:?}");
    }
    assert!(has("sbin/e2fsck"), "{listing:?}");

    let vm = boot(arch, &src.join("disk.img"));
    let mqtt = vm.port(1883);

    // 1. The hub answers through the forwarded port.
    let Some(mut client) = connect(mqtt, "boot-test", Instant::now() + BOOT).await else {
        vm.fail("no CONNACK from the hub in the guest");
    };
    let connack = vm.started.elapsed();
    client
        .subscribe_many(&[
            ("boot/echo", QoS::AtLeastOnce),
            ("sensor/filtered", QoS::AtLeastOnce),
            ("sensor/python", QoS::AtLeastOnce),
        ])
        .await
        .expect("sub");
    client
        .publish("boot/echo", QoS::AtLeastOnce, false, b"hello".to_vec())
        .await
        .expect("pub");
    if !matches!(
        client.recv_on("boot/echo", Duration::from_secs(30)).await,
        Ok(Some(_))
    ) {
        vm.fail("published message did not come back");
    }
    // 2. Functions run in the image: the timer's readings pass the SQL filter.
    let filtered = recv_json(&vm, &mut client, "sensor/filtered", 90, "the SQL function").await;
    assert_eq!(filtered["topic"], "sensor/data", "{filtered}");
    // A containerd image runs the Python function too (its runtime image carries Debian's python3).
    if containerd {
        let python = recv_json(
            &vm,
            &mut client,
            "sensor/python",
            120,
            "the Python function",
        )
        .await;
        assert_eq!(python["from"], "sensor/data", "{python}");
        assert!(python["square"].is_u64(), "{python}");
    }

    // 3. A retained message, to find after the reboot (the hub's data is on a volume on the data partition).
    let nonce = format!("survives-reboot-{}", std::process::id());
    leave_retained(&vm, client, &nonce, "boot-retained-check").await;

    // 4. The master API (development image: TCP with a known operator token): idle memory, then reboot.
    let master = master_api(&vm);
    // The figures are there once init, the master and the hub have been sampled.
    let inspect = inspect_until(
        &vm,
        &master,
        Duration::from_secs(60),
        "memory figures",
        |v| {
            mib(&v["processes"]["init"]["rss"]) > 0.0
                && mib(&v["processes"]["master"]["rss"]) > 0.0
                && hub_rss(v) > 0.0
        },
    )
    .await;
    let init_rss = mib(&inspect["processes"]["init"]["rss"]);
    let master_rss = mib(&inspect["processes"]["master"]["rss"]);
    let hub_rss = hub_rss(&inspect);
    assert!(
        init_rss > 0.0 && master_rss > 0.0,
        "{}",
        inspect["processes"]
    );
    assert!(hub_rss > 0.0, "hub instance memory: {inspect}");
    let mem_total = mib(&inspect["hardware"]["mem_stats"]["total"]);
    let mem_used = mib(&inspect["hardware"]["mem_stats"]["used"]);

    // Where the first boot's time went, before the reboot's console lines come.
    let first_boot = vm.milestones.summary();
    let before = vm.console().matches("starting as pid 1").count();
    let (code, body) = master
        .call("PUT", "/v1/system/reboot", None)
        .await
        .expect("reboot call");
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    let reboot_at = Instant::now();
    if poll(BOOT, || {
        vm.console().matches("starting as pid 1").count() > before
    })
    .is_err()
    {
        vm.fail("no second boot after PUT /v1/system/reboot");
    }
    let Some(mut client) = connect(mqtt, "boot-test-2", Instant::now() + BOOT).await else {
        vm.fail("no CONNACK after the reboot");
    };
    let reconnect = reboot_at.elapsed();
    client
        .subscribe("boot/retained", QoS::AtLeastOnce)
        .await
        .expect("sub");
    match client
        .recv_on("boot/retained", Duration::from_secs(30))
        .await
    {
        Ok(Some(p)) => {
            assert_eq!(p.text(), nonce);
            assert!(p.retain, "retained flag");
        }
        _ => vm.fail("the retained message did not survive the reboot"),
    }
    let _ = client.disconnect().await;

    // 5. Power off through the API: init stops everything and QEMU exits 0.
    let console = power_off(vm, &master).await;
    let fail = |what: String| -> ! { panic!("{what}\n--- console\n{console}") };
    for want in [
        "is now /",
        "data partition",
        "grown",
        "checking the data partition",
        "shutdown 5/5: power off",
    ] {
        if !console.contains(want) {
            fail(format!("console lacks `{want}`"));
        }
    }
    // e2fsck (Debian's, in the root) checked the data partition at both boots and found it clean.
    let clean = console.matches(" is clean").count();
    if clean < 2 || console.contains("lacks its filesystem checker") {
        fail(format!(
            "the data partition was not checked clean at both boots ({clean} clean checks)"
        ));
    }
    let size = |n: &str| {
        std::fs::metadata(src.join(n))
            .map(|m| m.len() as f64 / 1048576.0)
            .unwrap_or(0.0)
    };
    println!(
        "BOOT {arch} {engine}: first CONNACK {:.1} s after QEMU start (first boot, s after QEMU start: \
         {first_boot}); after reboot through the API {:.1} s; idle memory: init {init_rss:.1} MiB, master {master_rss:.1} MiB, hub {hub_rss:.1} MiB \
         (guest used {mem_used:.0} of {mem_total:.0} MiB); image: disk {:.0} MiB, boot.efi {:.1} MiB, \
         rootfs.squashfs {:.1} MiB, initramfs {:.2} MiB",
        connack.as_secs_f64(),
        reconnect.as_secs_f64(),
        size("disk.img"),
        size("boot.efi"),
        size("rootfs.squashfs"),
        size("initramfs.img"),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the images: scripts/test.sh builds them and runs this with --ignored"]
async fn x86_64_image_boots_serves_mqtt_survives_reboot_and_powers_off() {
    boot_test("x86_64", "x86_64").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the images: scripts/test.sh builds them and runs this with --ignored"]
async fn x86_64_native_image_boots_serves_mqtt_survives_reboot_and_powers_off() {
    boot_test("x86_64", "x86_64.native").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the images: scripts/test.sh builds them and runs this with --ignored"]
async fn aarch64_image_boots_serves_mqtt_survives_reboot_and_powers_off() {
    boot_test("aarch64", "aarch64").await;
}

/// A data partition damaged in a way `e2fsck -p` repairs: init's check repairs it before mounting, the device
/// comes up with its application (CONNACK) and says on the console what was repaired.
async fn repaired_data_boots(arch: &str) {
    let (_damaged, disk) = damaged_copy(arch, Damage::GroupDescriptor);
    let vm = boot(arch, &disk);
    let Some(client) = connect(vm.port(1883), "fsck-repaired", Instant::now() + BOOT).await else {
        vm.fail("no CONNACK from the hub after e2fsck repaired the data partition");
    };
    let connack = vm.started.elapsed();
    let _ = client.disconnect().await;
    let master = master_api(&vm);
    let console = power_off(vm, &master).await;
    for want in [
        "checking the data partition",
        "Group descriptor 0 checksum",
        "e2fsck repaired errors (exit status 1); mounting it",
    ] {
        assert!(
            console.contains(want),
            "console lacks `{want}`\n--- console\n{console}"
        );
    }
    assert!(!console.contains("SAFE MODE"), "{console}");
    println!(
        "BOOT {arch} fsck: damaged group descriptor repaired by e2fsck -p, first CONNACK {:.1} s",
        connack.as_secs_f64()
    );
}

/// A data partition damaged beyond what `e2fsck -p` may repair: the device comes up in safe mode: the console
/// says why, the master serves only its API and reports it, no application runs, so no hub serves the
/// application's well-known password.
async fn unrepairable_data_means_safe_mode(arch: &str) {
    let (_damaged, disk) = damaged_copy(arch, Damage::RootInode);
    let vm = boot(arch, &disk);
    if poll(BOOT, || vm.console().contains("SAFE MODE")).is_err() {
        vm.fail("no SAFE MODE banner on the console");
    }
    let master = master_api(&vm);
    let inspect = inspect_until(&vm, &master, BOOT, "safe_mode", |v| {
        v["safe_mode"].is_object()
    })
    .await;
    let reason = inspect["safe_mode"]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("failed its check") && reason.contains("errors left uncorrected"),
        "{inspect}"
    );
    let services = inspect["services"].as_array().map(Vec::len).unwrap_or(0);
    assert_eq!(services, 0, "no service runs in safe mode: {inspect}");
    // The application's hub (and its default credentials) is not there.
    let deadline = Instant::now() + Duration::from_secs(20);
    if connect(vm.port(1883), "safe-mode", deadline)
        .await
        .is_some()
    {
        vm.fail("a hub accepted the default credentials in safe mode");
    }
    let console = power_off(vm, &master).await;
    for want in [
        "Root inode is not a directory",
        "UNEXPECTED INCONSISTENCY",
        "failed its check: e2fsck exit status 4",
        "no application runs",
    ] {
        assert!(
            console.contains(want),
            "console lacks `{want}`\n--- console\n{console}"
        );
    }
    println!("BOOT {arch} fsck: unrepairable data partition -> safe mode: {reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the images: scripts/test.sh builds them and runs this with --ignored"]
async fn x86_64_image_repairs_a_damaged_data_partition_or_stays_in_safe_mode() {
    repaired_data_boots("x86_64").await;
    unrepairable_data_means_safe_mode("x86_64").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the images: scripts/test.sh builds them and runs this with --ignored"]
async fn aarch64_image_repairs_a_damaged_data_partition_or_stays_in_safe_mode() {
    repaired_data_boots("aarch64").await;
    unrepairable_data_means_safe_mode("aarch64").await;
}

/// Copies the data partition of `disk` out to a file in `dir`, lets `edit` change that ext4 image (debugfs), and
/// writes it back.
fn edit_data_partition(disk: &Path, dir: &Path, edit: impl FnOnce(&Path)) {
    use std::io::{Read, Seek, SeekFrom, Write};
    let (offset, len) = partition(disk, "baetyl-data");
    let fs = dir.join("data.ext4");
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(disk)
        .expect("open disk");
    f.seek(SeekFrom::Start(offset)).expect("seek");
    let mut out = std::fs::File::create(&fs).expect("data.ext4");
    std::io::copy(&mut (&mut f).take(len), &mut out).expect("copy the data partition out");
    drop(out);
    edit(&fs);
    f.seek(SeekFrom::Start(offset)).expect("seek");
    let mut back = std::fs::File::open(&fs).expect("data.ext4");
    let mut buf = Vec::new();
    back.read_to_end(&mut buf).expect("read data.ext4");
    f.write_all(&buf).expect("write the data partition back");
    let _ = std::fs::remove_file(&fs);
}

/// Runs debugfs `requests` on the ext4 image `fs` (writable); answers its stdout.
fn debugfs(fs: &Path, requests: &[String]) -> String {
    let cmds = fs.with_extension("debugfs");
    std::fs::write(&cmds, requests.join("\n") + "\n").expect("debugfs commands");
    let out = Command::new("debugfs")
        .arg("-w")
        .arg("-f")
        .arg(&cmds)
        .arg(fs)
        .output()
        .expect("debugfs (e2fsprogs)");
    assert!(out.status.success(), "debugfs {requests:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An OS update bundle like the image's, but whose root's master cannot start (its conf.yml is not YAML),
/// signed with the key the image trusts: the boot tests' deliberately broken update.
fn broken_bundle(src: &Path, out: &Path, work: &Path) {
    use baetyl_image::bundle::{self, BundleKey};
    use baetyl_sdk::os_bundle::{ROOTFS, UKI_A, UKI_B};
    let key = [images().join("os-update.key"), src.join("os-update.key")]
        .into_iter()
        .find(|k| k.is_file())
        .unwrap_or_else(|| {
            panic!(
                "no os-update.key in {} or {}",
                images().display(),
                src.display()
            )
        });
    let key = BundleKey::load_or_create(&key).expect("the image's signing key");
    let tree = work.join("broken-root");
    let _ = std::fs::remove_dir_all(&tree);
    let run = |cmd: &mut Command| {
        let o = cmd.output().expect("squashfs-tools");
        assert!(o.status.success(), "{cmd:?}: {o:?}");
    };
    run(Command::new("unsquashfs")
        .arg("-q")
        .arg("-d")
        .arg(&tree)
        .arg(src.join("rootfs.squashfs")));
    std::fs::write(
        tree.join("etc/baetyl/conf.yml"),
        "server: [this is not a mapping\n",
    )
    .expect("conf.yml");
    let squash = work.join("broken.squashfs");
    run(Command::new("mksquashfs")
        .arg(&tree)
        .arg(&squash)
        .args(baetyl_image::builder::SQUASHFS_OPTIONS));
    let boot_b = src.join("work/boot-b.efi");
    let payloads = [
        (UKI_A, src.join("boot.efi")),
        (UKI_B, boot_b),
        (ROOTFS, squash),
    ];
    let payloads: Vec<(&str, &Path)> = payloads.iter().map(|(n, p)| (*n, p.as_path())).collect();
    let arch = if src.to_string_lossy().contains("aarch64") {
        "aarch64"
    } else {
        "x86_64"
    };
    let m = bundle::manifest(arch, "0.0.0-broken", &payloads).expect("manifest");
    bundle::write(out, &key.key, &m, &payloads).expect("broken bundle");
}

/// The boots in the console log so far.
fn boots(vm: &Vm) -> usize {
    vm.console().matches("starting as pid 1").count()
}

/// Which root the latest boot in the console switched to (`root-a`/`root-b`).
fn booted_root(vm: &Vm) -> String {
    let c = vm.console();
    let last = c.rfind("starting as pid 1").map_or(&c[..], |at| &c[at..]);
    ["root-a", "root-b"]
        .into_iter()
        .find(|r| last.contains(&format!("({r}, squashfs, read-only) is now /")))
        .unwrap_or("?")
        .to_string()
}

async fn put_update(vm: &Vm, master: &MasterClient, path: &str, trace: &str) {
    let body = serde_json::json!({"type": "OS", "path": path, "trace": trace}).to_string();
    let (code, text) = master
        .call("PUT", "/v1/system/update", Some(body.into_bytes()))
        .await
        .unwrap_or_else(|e| vm.fail(&format!("PUT /v1/system/update: {e}")));
    if code != 200 {
        vm.fail(&format!(
            "OS update {path}: {code} {}",
            String::from_utf8_lossy(&text)
        ));
    }
}

/// Waits for `n` more boots than `before`, then for the hub; answers the time from `since` to its CONNACK.
async fn next_boot(
    vm: &Vm,
    before: usize,
    n: usize,
    within: Duration,
    since: Instant,
    what: &str,
) -> Duration {
    if poll(within, || boots(vm) >= before + n).is_err() {
        vm.fail(&format!(
            "{what}: {n} more boot(s) expected within {within:?}"
        ));
    }
    let Some(c) = connect(vm.port(1883), "os-update", Instant::now() + BOOT).await else {
        vm.fail(&format!("{what}: no CONNACK"));
    };
    let connack = since.elapsed();
    let _ = c.disconnect().await;
    connack
}

/// The OS update cycle on the native image of `arch`: install the image's own bundle into slot b through the
/// API (the device reboots into it and marks it good), install a broken one into slot a (its master cannot
/// start: init reboots each try, the boot loader falls back to slot b after three, the master reports the failed
/// update), then kill QEMU in the middle of an install (the device boots slot b again). A retained message and a
/// file on a volume survive every step.
async fn os_update_test(arch: &str) {
    let src = image_dir(&format!("{arch}.native"));
    let work = test_dir("baetyl-os-update-");
    let good = src.join("os-update.bundle");
    let broken = work.path().join("broken.bundle");
    broken_bundle(&src, &broken, work.path());
    let volume_file = work.path().join("volume.txt");
    let nonce = format!("survives-os-updates-{}", std::process::id());
    std::fs::write(&volume_file, &nonce).expect("volume file");

    // First boot (slot a): the data partition grows; a retained message; power off.
    let mut vm = boot(arch, &src.join("disk.img"));
    let mqtt = vm.port(1883);
    let Some(c) = connect(mqtt, "os-update-0", Instant::now() + BOOT).await else {
        vm.fail("no CONNACK at the first boot");
    };
    leave_retained(&vm, c, &nonce, "os-update-r0").await;
    let master = master_api(&vm);
    stop(&mut vm, &master).await;
    let Vm { dir, .. } = vm;

    // The bundles and a volume file go onto the (grown) data partition, under the master's work dir.
    edit_data_partition(&dir.path().join("disk.img"), work.path(), |fs| {
        debugfs(
            fs,
            &[
                "mkdir os".into(),
                format!("write {} os/good.bundle", good.display()),
                format!("write {} os/broken.bundle", broken.display()),
                format!(
                    "write {} var/db/baetyl/hub-data/volume.txt",
                    volume_file.display()
                ),
            ],
        );
    });

    // 1. The good update: slot a -> slot b, marked good.
    let vm = start(arch, dir, None);
    let master = master_api(&vm);
    next_boot(&vm, 0, 1, BOOT, Instant::now(), "boot before the update").await;
    assert_eq!(booted_root(&vm), "root-a");
    if let Err(e) = master.inspect().await {
        vm.fail(&format!("inspect: {e}"));
    }
    let before = boots(&vm);
    let requested = Instant::now();
    put_update(&vm, &master, "os/good.bundle", "os-good").await;
    if poll(Duration::from_secs(600), || boots(&vm) > before).is_err() {
        vm.fail("no reboot after the OS update");
    }
    let install = requested.elapsed();
    let to_connack = next_boot(&vm, before, 1, BOOT, requested, "the updated slot").await;
    assert_eq!(booted_root(&vm), "root-b", "the update boots slot b");
    if poll(Duration::from_secs(300), || {
        vm.console().contains("this boot was marked good")
    })
    .is_err()
    {
        vm.fail("slot b was not marked good");
    }
    if !retained(
        vm.port(1883),
        "os-update-r1",
        &nonce,
        Duration::from_secs(60),
    )
    .await
    {
        vm.fail("the retained message did not survive the update");
    }

    // 2. The broken update (into slot a): three failed tries, then slot b again, and the failure reported.
    let before = boots(&vm);
    let broken_at = Instant::now();
    put_update(&vm, &master, "os/broken.bundle", "os-broken").await;
    next_boot(
        &vm,
        before,
        1 + baetyl_sdk::os::TRIES as usize,
        Duration::from_secs(1800),
        broken_at,
        "the fallback",
    )
    .await;
    assert_eq!(booted_root(&vm), "root-b", "the fallback boots slot b");
    let failed = inspect_until(
        &vm,
        &master,
        Duration::from_secs(120),
        "the failed update",
        |v| {
            v["error"]
                .as_str()
                .is_some_and(|e| e.contains("os-broken") && e.contains("tries"))
        },
    )
    .await;
    let fallback = broken_at.elapsed();
    if !retained(
        vm.port(1883),
        "os-update-r2",
        &nonce,
        Duration::from_secs(60),
    )
    .await
    {
        vm.fail("the retained message did not survive the fallback");
    }

    // 3. QEMU killed during an install (while the payloads are checked, while the root is written): the
    // device still boots slot b. The master's OTA steps show on the console.
    let mut vm = vm;
    for (n, point) in ["signature good", "writing the root"]
        .into_iter()
        .enumerate()
    {
        let master = master_api(&vm);
        let seen = vm.console().matches(point).count();
        put_update(&vm, &master, "os/good.bundle", &format!("os-killed-{n}")).await;
        if poll(Duration::from_secs(120), || {
            vm.console().matches(point).count() > seen
        })
        .is_err()
        {
            vm.fail(&format!("the install never reached `{point}`"));
        }
        let Vm { mut qemu, dir, .. } = vm;
        let _ = qemu.child().kill();
        let _ = qemu.child().wait();
        // Where the install was when QEMU died (the console is overwritten by the next start).
        let killed = String::from_utf8_lossy(
            &std::fs::read(dir.path().join("console.log")).unwrap_or_default(),
        )
        .into_owned();
        let root_done = killed.contains(&format!("os-killed-{n}"))
            && killed.contains("root written and synced");
        vm = start(arch, dir, None);
        next_boot(
            &vm,
            0,
            1,
            BOOT,
            Instant::now(),
            "the boot after QEMU was killed",
        )
        .await;
        let root = booted_root(&vm);
        println!(
            "OS UPDATE {arch}: QEMU killed at `{point}` (root written: {root_done}): booted {root}"
        );
        // Until the root is written the new slot has no boot entry; after it, a complete entry may boot.
        if !root_done || root != "root-a" {
            assert_eq!(
                root, "root-b",
                "an install killed at `{point}` leaves slot b"
            );
        }
        if !retained(
            vm.port(1883),
            &format!("os-update-k{n}"),
            &nonce,
            Duration::from_secs(60),
        )
        .await
        {
            vm.fail("the retained message did not survive the interrupted install");
        }
    }
    let master = master_api(&vm);
    stop(&mut vm, &master).await;
    let mut kept = String::new();
    edit_data_partition(&vm.dir.path().join("disk.img"), work.path(), |fs| {
        kept = debugfs(fs, &["cat var/db/baetyl/hub-data/volume.txt".into()]);
    });
    assert!(kept.contains(&nonce), "the volume file: {kept:?}");
    println!(
        "OS UPDATE {arch}: bundle {:.1} MiB; install (PUT to reboot) {:.1} s; PUT to CONNACK on slot b {:.1} s; \
         broken update to CONNACK after the fallback {:.1} s; reported: {}",
        std::fs::metadata(&good).map(|m| m.len()).unwrap_or(0) as f64 / 1048576.0,
        install.as_secs_f64(),
        to_connack.as_secs_f64(),
        fallback.as_secs_f64(),
        failed["error"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the images: scripts/test.sh builds them and runs this with --ignored"]
async fn x86_64_os_update_installs_blesses_falls_back_and_survives_a_kill() {
    os_update_test("x86_64").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the images: scripts/test.sh builds them and runs this with --ignored"]
async fn aarch64_os_update_installs_blesses_falls_back_and_survives_a_kill() {
    os_update_test("aarch64").await;
}

/// `baetyl image build` run twice: the second run reuses the package cache, and the outputs are byte-identical.
#[test]
#[ignore = "needs the images: scripts/test.sh builds them twice and runs this with --ignored"]
fn image_builds_are_reproducible_and_reuse_the_package_cache() {
    for arch in ["x86_64", "aarch64"] {
        let first =
            std::fs::read_to_string(image_dir(arch).join("manifest.txt")).expect("manifest");
        let again = images().join(format!("{arch}.rebuild"));
        let second = std::fs::read_to_string(again.join("manifest.txt")).expect("second manifest");
        let sums = |m: &str| -> Vec<(String, String)> {
            m.lines()
                .filter_map(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    (f.len() == 3).then(|| (f[0].to_string(), f[2].to_string()))
                })
                .collect()
        };
        let (a, b) = (sums(&first), sums(&second));
        // The six outputs of every build (the OS update bundle among them), and the Raspberry Pi card's two of
        // the aarch64 builds (--board rpi4).
        let want = if arch == "aarch64" { 8 } else { 6 };
        assert_eq!(a.len(), want, "{first}");
        assert_eq!(
            a, b,
            "{arch}: outputs differ between two builds from the same inputs"
        );
        let log = std::fs::read_to_string(images().join(format!("{arch}.rebuild.log")))
            .expect("rebuild log");
        assert!(
            !log.contains("downloaded"),
            "{arch}: the second build downloaded again:\n{log}"
        );
        assert!(log.matches("cached").count() >= 2, "{arch}: {log}");
    }
}

/// The image whose build also wrote the Raspberry Pi 4 card (`--board rpi4`; scripts/test.sh builds the aarch64
/// images with it).
const CARD_IMAGE: &str = "aarch64";

/// One entry of an MBR partition table (logical partitions numbered from 5, as Linux does).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct MbrPart {
    n: u32,
    bootable: bool,
    kind: u8,
    /// Byte offset and length in the image.
    start: u64,
    len: u64,
}

/// The disk signature and the partitions of an MBR disk image, parsed from the file: the four primary entries
/// at byte 446 and the chain of extended boot records in an extended partition (type 0x05 or 0x0f).
fn mbr_partitions(img: &Path) -> (u32, Vec<MbrPart>) {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(img).expect("open the card");
    let mut sector = |lba: u64| {
        let mut b = [0u8; 512];
        f.seek(SeekFrom::Start(lba * 512)).expect("seek");
        f.read_exact(&mut b).expect("read a sector");
        assert_eq!(
            b[510..512],
            [0x55, 0xAA],
            "no boot signature in sector {lba}"
        );
        b
    };
    let le32 = |b: &[u8], at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    let entry = |b: &[u8], i: usize| {
        let e = &b[446 + 16 * i..446 + 16 * (i + 1)];
        (
            e[0] == 0x80,
            e[4],
            u64::from(le32(e, 8)),
            u64::from(le32(e, 12)),
        )
    };
    let mbr = sector(0);
    let signature = le32(&mbr, 440);
    let mut parts = Vec::new();
    let mut extended = None;
    for i in 0..4 {
        let (bootable, kind, lba, sectors) = entry(&mbr, i);
        if kind == 0 {
            continue;
        }
        parts.push(MbrPart {
            n: i as u32 + 1,
            bootable,
            kind,
            start: lba * 512,
            len: sectors * 512,
        });
        if kind == 0x05 || kind == 0x0f {
            extended = Some(lba);
        }
    }
    if let Some(ext) = extended {
        let (mut ebr, mut n) = (ext, 5);
        loop {
            let b = sector(ebr);
            let (bootable, kind, lba, sectors) = entry(&b, 0);
            parts.push(MbrPart {
                n,
                bootable,
                kind,
                start: (ebr + lba) * 512,
                len: sectors * 512,
            });
            let (_, next_kind, next, _) = entry(&b, 1);
            if next_kind == 0 {
                break;
            }
            ebr = ext + next;
            n += 1;
            assert!(n < 64, "a loop in the extended boot records");
        }
    }
    (signature, parts)
}

fn mtools(args: &[&str]) -> Vec<u8> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .env("MTOOLS_SKIP_CHECK", "1")
        .output()
        .expect("mtools");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The names in the root of the FAT at `offset` in `img` (`mdir -b -i img@@offset`).
fn fat_names(img: &Path, offset: u64) -> Vec<String> {
    let at = format!("{}@@{offset}", img.display());
    let out = mtools(&["mdir", "-b", "-i", &at, "::/"]);
    let mut names: Vec<String> = String::from_utf8_lossy(&out)
        .lines()
        .filter_map(|l| l.trim().strip_prefix("::/").map(str::to_string))
        .collect();
    names.sort();
    names
}

/// The file `name` of the FAT at `offset` in `img` (`mtype`).
fn fat_file(img: &Path, offset: u64, name: &str) -> Vec<u8> {
    let at = format!("{}@@{offset}", img.display());
    mtools(&["mtype", "-i", &at, &format!("::/{name}")])
}

/// The card's partitions 1-7 as `baetyl image build --board rpi4` lays them out (image/genimage/rpi.cfg), checked
/// against sfdisk's reading of the same file.
fn card_partitions(card: &Path) -> (u32, Vec<MbrPart>) {
    let (signature, parts) = mbr_partitions(card);
    let out = Command::new("sfdisk")
        .arg("-J")
        .arg(card)
        .output()
        .expect("sfdisk (fdisk)");
    assert!(out.status.success(), "sfdisk -J {}", card.display());
    let v: Value = serde_json::from_slice(&out.stdout).expect("sfdisk JSON");
    let theirs: Vec<(u64, u64)> = v["partitiontable"]["partitions"]
        .as_array()
        .expect("partitions")
        .iter()
        .map(|p| {
            (
                p["start"].as_u64().unwrap_or(0) * 512,
                p["size"].as_u64().unwrap_or(0) * 512,
            )
        })
        .collect();
    let ours: Vec<(u64, u64)> = parts.iter().map(|p| (p.start, p.len)).collect();
    assert_eq!(ours, theirs, "our MBR reading and sfdisk's differ: {v}");
    assert_eq!(
        v["partitiontable"]["id"].as_str(),
        Some(format!("{signature:#x}").as_str()),
        "{v}"
    );
    (signature, parts)
}

/// The Raspberry Pi 4 card: MBR with autoboot.txt on partition 1 (tryboot A/B), slot A's firmware, device trees,
/// config.txt, cmdline.txt (naming root-a by its PARTUUID), kernel and initramfs (the build's own), an empty slot
/// B, root-a holding the build's squashfs, an empty root-b, the data partition as on the disk image, and a block
/// map that bmaptool accepts and that reproduces the card.
#[test]
#[ignore = "needs the images: scripts/test.sh builds them and runs this with --ignored"]
fn rpi4_card_has_tryboot_slots_firmware_device_trees_and_a_bmap() {
    let src = image_dir(CARD_IMAGE);
    let card = src.join("sdcard.img");
    assert!(
        card.is_file(),
        "{} is missing: build with `baetyl image build --arch aarch64 --board rpi4` (scripts/test.sh does)",
        card.display()
    );
    let (signature, parts) = card_partitions(&card);
    assert_eq!(
        signature, 0xbae7_7103,
        "the rpi4 card's fixed disk signature"
    );
    let kinds: Vec<(u32, u8, bool)> = parts.iter().map(|p| (p.n, p.kind, p.bootable)).collect();
    assert_eq!(
        kinds,
        [
            (1, 0x0c, true),
            (2, 0x0c, false),
            (3, 0x0c, false),
            (4, 0x0f, false),
            (5, 0x83, false),
            (6, 0x83, false),
            (7, 0x83, false)
        ],
        "FAT config, boot-a, boot-b (the firmware boots MBR partitions 1-4 only), extended: root-a, root-b, data"
    );
    for p in &parts {
        assert_eq!(
            p.start % (1 << 20),
            0,
            "partition {} is not 1 MiB aligned",
            p.n
        );
    }
    let part = |n: u32| *parts.iter().find(|p| p.n == n).expect("partition");
    let len = std::fs::metadata(&card).expect("card").len();
    assert!(
        part(7).start + part(7).len <= len,
        "the data partition ends inside the image"
    );
    assert_eq!(part(2).len, part(3).len, "boot slots of one size");
    assert_eq!(part(5).len, part(6).len, "root slots of one size");

    // Partition 1: autoboot.txt alone.
    let p1 = part(1).start;
    assert_eq!(fat_names(&card, p1), ["autoboot.txt"]);
    assert_eq!(
        String::from_utf8_lossy(&fat_file(&card, p1, "autoboot.txt")),
        "[all]\ntryboot_a_b=1\nboot_partition=2\n[tryboot]\nboot_partition=3\n"
    );

    // Slot A: the firmware, the device trees, the boot files; kernel and initramfs are the build's.
    let a = part(2).start;
    let names = fat_names(&card, a);
    for want in [
        "start4.elf",
        "fixup4.dat",
        "bcm2711-rpi-4-b.dtb",
        "bcm2711-rpi-400.dtb",
        "config.txt",
        "cmdline.txt",
        "vmlinuz",
        "initramfs.img",
        "LICENCE.raspi-firmware",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} missing from boot-a: {names:?}"
        );
    }
    assert!(
        !names
            .iter()
            .any(|n| n.starts_with("bcm2712") || n.starts_with("bcm2837")),
        "only the Pi 4 family's device trees: {names:?}"
    );
    for (name, built) in [("vmlinuz", "vmlinuz"), ("initramfs.img", "initramfs.img")] {
        assert!(
            fat_file(&card, a, name) == std::fs::read(src.join(built)).expect("build output"),
            "boot-a's {name} is not the build's {built}"
        );
    }
    let start4 = fat_file(&card, a, "start4.elf");
    assert!(
        start4.starts_with(b"\x7fELF"),
        "start4.elf is not the firmware's ELF"
    );
    let config = String::from_utf8_lossy(&fat_file(&card, a, "config.txt")).into_owned();
    for want in [
        "arm_64bit=1",
        "kernel=vmlinuz",
        "initramfs initramfs.img followkernel",
        "upstream_kernel=1",
    ] {
        assert!(
            config.lines().any(|l| l == want),
            "config.txt lacks {want}:\n{config}"
        );
    }
    let cmdline = String::from_utf8_lossy(&fat_file(&card, a, "cmdline.txt")).into_owned();
    assert_eq!(
        cmdline.lines().count(),
        1,
        "the firmware passes one line: {cmdline:?}"
    );
    let root_a = format!("baetyl.root.device=PARTUUID={signature:08x}-05");
    assert!(
        cmdline.split_whitespace().any(|w| w == root_a),
        "cmdline.txt does not name root-a (partition 5 of disk {signature:08x}): {cmdline}"
    );
    // Slot B: a FAT of its own, empty until an OS update fills it.
    assert_eq!(fat_names(&card, part(3).start), Vec::<String>::new());

    // root-a is the build's squashfs byte for byte; root-b is empty.
    let squash = std::fs::read(src.join("rootfs.squashfs")).expect("rootfs.squashfs");
    let bytes = |p: MbrPart, n: usize| {
        use std::io::{Read, Seek, SeekFrom};
        let mut f = std::fs::File::open(&card).expect("card");
        f.seek(SeekFrom::Start(p.start)).expect("seek");
        let mut b = vec![0; n];
        f.read_exact(&mut b).expect("read");
        b
    };
    assert!(
        bytes(part(5), squash.len()) == squash,
        "root-a does not hold rootfs.squashfs"
    );
    assert!(
        bytes(part(6), 1 << 20).iter().all(|&b| b == 0),
        "root-b is not empty"
    );

    // The data partition: ext4 labelled baetyl-data (init finds it by the label), clean, with the application.
    let dir = test_dir("baetyl-card-");
    let data = dir.path().join("data.ext4");
    std::fs::write(&data, bytes(part(7), part(7).len as usize)).expect("data.ext4");
    let label = Command::new("e2label")
        .arg(&data)
        .output()
        .expect("e2label");
    assert_eq!(String::from_utf8_lossy(&label.stdout).trim(), "baetyl-data");
    let fsck = Command::new("e2fsck")
        .args(["-f", "-n"])
        .arg(&data)
        .output()
        .expect("e2fsck");
    assert!(
        fsck.status.success(),
        "e2fsck -n: {}",
        String::from_utf8_lossy(&fsck.stdout)
    );
    let app = Command::new("debugfs")
        .args(["-R", "stat /var/db/baetyl/application.yml"])
        .arg(&data)
        .output()
        .expect("debugfs");
    assert!(
        String::from_utf8_lossy(&app.stdout).contains("Type: regular"),
        "no application.yml on the data partition"
    );

    // The block map: bmaptool checks the map's own checksum and each range's while it copies; the copy (mapped
    // blocks written, the rest left as holes) is the card.
    let bmap = src.join("sdcard.img.bmap");
    let xml = std::fs::read_to_string(&bmap).expect("sdcard.img.bmap");
    let field = |tag: &str| -> u64 {
        xml.split(&format!("<{tag}>"))
            .nth(1)
            .and_then(|s| s.split('<').next())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {tag} in the bmap"))
    };
    assert_eq!(field("ImageSize"), len);
    let (mapped, blocks) = (field("MappedBlocksCount"), field("BlocksCount"));
    assert!(
        mapped > 0 && mapped < blocks,
        "{mapped} of {blocks} blocks mapped"
    );
    let copy = dir.path().join("flashed.img");
    let out = Command::new("bmaptool")
        .args(["copy", "--bmap"])
        .arg(&bmap)
        .arg(&card)
        .arg(&copy)
        .output()
        .expect("bmaptool (Debian package bmap-tools)");
    assert!(
        out.status.success(),
        "bmaptool copy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        std::fs::read(&copy).expect("copy") == std::fs::read(&card).expect("card"),
        "the card written through its bmap differs from the card"
    );
    println!(
        "CARD rpi4: {:.0} MiB, {:.1} MiB mapped ({mapped} of {blocks} blocks); boot slots {:.0} MiB, roots {:.0} MiB, \
         data {:.0} MiB; boot-a holds {} files",
        len as f64 / 1048576.0,
        (mapped * 4096) as f64 / 1048576.0,
        part(2).len as f64 / 1048576.0,
        part(5).len as f64 / 1048576.0,
        part(7).len as f64 / 1048576.0,
        names.len()
    );
}

/// The card's own boot files (slot A's kernel, initramfs and cmdline.txt, taken out of its FAT) boot the card's
/// root squashfs under `qemu-system-aarch64 -M virt`: init finds root-a by the PARTUUID that cmdline.txt names,
/// the data partition by its label, and the hub answers. Only the Pi's firmware and hardware are not exercised.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the images: scripts/test.sh builds them and runs this with --ignored"]
async fn rpi4_card_root_boots_under_qemu_virt_and_serves_mqtt() {
    let src = image_dir(CARD_IMAGE);
    let card = src.join("sdcard.img");
    let (_, parts) = card_partitions(&card);
    let a = parts.iter().find(|p| p.n == 2).expect("boot-a").start;
    let dir = test_dir("baetyl-card-boot-");
    let (kernel, initrd) = (dir.path().join("vmlinuz"), dir.path().join("initramfs.img"));
    std::fs::write(&kernel, fat_file(&card, a, "vmlinuz")).expect("vmlinuz");
    std::fs::write(&initrd, fat_file(&card, a, "initramfs.img")).expect("initramfs.img");
    // cmdline.txt as it is, but for the Pi's serial console (qemu/run names the virt machine's).
    let cmdline = String::from_utf8_lossy(&fat_file(&card, a, "cmdline.txt")).into_owned();
    let append: Vec<&str> = cmdline
        .split_whitespace()
        .filter(|w| !w.starts_with("console="))
        .collect();
    let append = append.join(" ");
    let vm = boot_with(
        "aarch64",
        &card,
        Some(Direct {
            kernel: &kernel,
            initrd: &initrd,
            append: &append,
        }),
    );
    let Some(client) = connect(vm.port(1883), "card-boot", Instant::now() + BOOT).await else {
        vm.fail("no CONNACK from the card's hub");
    };
    let connack = vm.started.elapsed();
    let _ = client.disconnect().await;
    let master = master_api(&vm);
    let console = power_off(vm, &master).await;
    for want in [
        "root /dev/vda5 (squashfs, read-only) is now /",
        "data partition /dev/vda7 (baetyl-data)",
        "shutdown 5/5: power off",
    ] {
        assert!(
            console.contains(want),
            "console lacks `{want}`\n--- console\n{console}"
        );
    }
    println!(
        "BOOT rpi4 card under qemu virt (its kernel, initramfs and cmdline.txt; root-a by PARTUUID): first \
         CONNACK {:.1} s",
        connack.as_secs_f64()
    );
}
