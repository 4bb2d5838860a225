//! OS updates on plain files: the partitions are files, the ESP a directory, the boot loader's variable and the
//! reboot a test double ([`Fake`]); the bundles are real (signed with aws-lc-rs, as the image builder does).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use baetyl_sdk::os::Board;
use baetyl_sdk::os_bundle::{self, FORMAT, Manifest, PAYLOADS, Payload};
use base64::Engine as _;
use sha2::{Digest, Sha256};

use super::{OsDevice, OsUpdater, PENDING_FILE};
use crate::error::{MasterError, OsUpdateError};
use crate::ota::{Updater, app_file, steps_of};
use crate::test_rig::Rig;

struct Fake {
    dir: PathBuf,
    slot: Result<char, String>,
    count: Mutex<Option<String>>,
    reboots: AtomicU32,
    blessed: AtomicBool,
}

impl OsDevice for Fake {
    fn booted_slot(&self) -> Result<char, String> {
        self.slot.clone()
    }
    fn partition(&self, name: &str) -> Option<PathBuf> {
        Some(self.dir.join(name)).filter(|p| p.exists())
    }
    fn mount_esp(&self) -> Result<PathBuf, OsUpdateError> {
        Ok(self.dir.join("esp"))
    }
    fn unmount_esp(&self) {}
    fn boot_count_path(&self) -> Option<String> {
        self.count.lock().unwrap().clone()
    }
    fn reboot(&self) -> Result<(), OsUpdateError> {
        self.reboots.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn mark_blessed(&self) {
        self.blessed.store(true, Ordering::SeqCst);
    }
}

const ROOT_SIZE: usize = 64 * 1024;

struct Setup {
    rig: Rig,
    fake: Arc<Fake>,
    os: Arc<OsUpdater>,
    updater: Arc<Updater>,
    key: Ed25519KeyPair,
}

/// A device booted from slot `slot` (root-a and root-b are files of zeros, the ESP holds slot a's blessed
/// entry), trusting a new key; its master runs one service.
async fn setup(slot: Result<char, String>, bless_after: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let dev = dir.path().join("device");
    std::fs::create_dir_all(dev.join("esp/EFI/Linux")).unwrap();
    std::fs::write(dev.join("esp/EFI/Linux/baetyl-000001-a.efi"), b"uki a v1").unwrap();
    for r in ["root-a", "root-b"] {
        std::fs::write(dev.join(r), vec![0u8; ROOT_SIZE]).unwrap();
    }
    let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
    let key = Ed25519KeyPair::from_pkcs8(doc.as_ref()).unwrap();
    let pubfile = dev.join("os-update.pub");
    std::fs::write(
        &pubfile,
        format!(
            "ed25519:{}\n",
            base64::engine::general_purpose::STANDARD.encode(key.public_key().as_ref())
        ),
    )
    .unwrap();
    let rig = Rig::in_dir(
        &format!(
            "update: {{os: {{key: {}, bless_after: {bless_after}}}}}\n",
            pubfile.display()
        ),
        dir,
    );
    rig.run("services:\n  hub: {image: svc}\n").await;
    let fake = Arc::new(Fake {
        dir: dev,
        slot,
        count: Mutex::new(None),
        reboots: AtomicU32::new(0),
        blessed: AtomicBool::new(false),
    });
    let updater = Arc::new(Updater::new(
        rig.sup.clone(),
        app_file(rig.dir.path()),
        rig.dir.path().join("var/db/baetyl/ota.log"),
    ));
    let os = OsUpdater::new(rig.sup.clone(), updater.clone(), fake.clone());
    Setup {
        rig,
        fake,
        os,
        updater,
        key,
    }
}

fn hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn payloads() -> Vec<Vec<u8>> {
    vec![
        b"uki a v2".repeat(10),
        b"uki b v2".repeat(10),
        b"squashfs root v2".repeat(1000),
    ]
}

/// A bundle of `data` for `arch`, signed by `key`.
fn bundle(key: &Ed25519KeyPair, arch: &str, data: &[Vec<u8>]) -> Vec<u8> {
    let m = Manifest {
        format: FORMAT,
        board: Board::Efi,
        arch: arch.into(),
        version: "0.2.0".into(),
        build: "00112233aabbccdd".into(),
        payloads: PAYLOADS
            .iter()
            .zip(data)
            .map(|(n, d)| Payload {
                name: n.to_string(),
                size: d.len() as u64,
                sha256: hex(d),
            })
            .collect(),
    };
    let header = os_bundle::signed_header(&serde_json::to_vec(&m).unwrap());
    let mut out = header.clone();
    out.extend_from_slice(key.sign(&header).as_ref());
    for d in data {
        out.extend_from_slice(d);
    }
    out
}

fn put(s: &Setup, rel: &str, data: &[u8]) {
    let p = s.rig.dir.path().join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
}

/// What an install of generation 2 into slot b left for the next boot.
fn pending(s: &Setup, trace: &str) {
    let p = super::Pending {
        trace: trace.into(),
        slot: 'b',
        generation: 2,
        entry: "baetyl-000002-b+3.efi".into(),
        version: "0.2.0".into(),
        build: "b".into(),
    };
    put(s, PENDING_FILE, &serde_json::to_vec(&p).unwrap());
}

fn steps(s: &Setup, trace: &str) -> Vec<String> {
    steps_of(&s.rig.dir.path().join("var/db/baetyl/ota.log"), trace)
}

fn esp(s: &Setup) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(s.fake.dir.join("esp/EFI/Linux"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn untouched(s: &Setup) {
    assert_eq!(esp(s), ["baetyl-000001-a.efi"]);
    for r in ["root-a", "root-b"] {
        assert_eq!(
            std::fs::read(s.fake.dir.join(r)).unwrap(),
            vec![0u8; ROOT_SIZE],
            "{r} was written"
        );
    }
    assert!(!s.rig.dir.path().join(PENDING_FILE).exists());
    assert_eq!(s.fake.reboots.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn an_install_writes_the_inactive_slot_then_reboots() {
    let s = setup(Ok('a'), "1s").await;
    let data = payloads();
    put(
        &s,
        "os/update.bundle",
        &bundle(&s.key, std::env::consts::ARCH, &data),
    );
    s.os.submit("os/update.bundle", "t-os", &[])
        .expect("accepted");
    s.updater.wait_idle().await;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(
        steps(&s, "t-os"),
        [
            "RECEIVED",
            "UPDATING",
            "UPDATING",
            "UPDATING",
            "UPDATED",
            "RESTARTING"
        ]
    );
    let root_b = std::fs::read(s.fake.dir.join("root-b")).unwrap();
    assert_eq!(&root_b[..data[2].len()], &data[2][..]);
    assert_eq!(
        std::fs::read(s.fake.dir.join("root-a")).unwrap(),
        vec![0u8; ROOT_SIZE]
    );
    assert_eq!(esp(&s), ["baetyl-000001-a.efi", "baetyl-000002-b+3.efi"]);
    assert_eq!(
        std::fs::read(s.fake.dir.join("esp/EFI/Linux/baetyl-000002-b+3.efi")).unwrap(),
        data[1],
        "slot b's own UKI (its command line names root-b)"
    );
    let pending: super::Pending =
        serde_json::from_slice(&std::fs::read(s.rig.dir.path().join(PENDING_FILE)).unwrap())
            .unwrap();
    assert_eq!(
        (pending.slot, pending.generation, pending.trace.as_str()),
        ('b', 2, "t-os")
    );
    assert_eq!(s.fake.reboots.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn refused_bundles_change_nothing_and_say_why() {
    let s = setup(Ok('a'), "1s").await;
    let data = payloads();
    let good = bundle(&s.key, std::env::consts::ARCH, &data);
    let other = Ed25519KeyPair::from_pkcs8(
        Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .unwrap()
            .as_ref(),
    )
    .unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "bad-sig",
            bundle(&other, std::env::consts::ARCH, &data),
            "signature does not match",
        ),
        ("arch", bundle(&s.key, "riscv64", &data), "riscv64"),
        ("truncated", good[..good.len() - 100].to_vec(), "truncated"),
        (
            "trailing",
            [good.clone(), b"x".to_vec()].concat(),
            "after the last payload",
        ),
        ("junk", b"hello".repeat(10), "not an OS update bundle"),
    ];
    for (name, bytes, want) in cases {
        put(&s, &format!("os/{name}"), &bytes);
        let e =
            s.os.submit(&format!("os/{name}"), name, &[])
                .expect_err(name);
        assert!(e.to_string().contains(want), "{name}: {e}");
        assert!(matches!(e, MasterError::OsUpdate(_)), "{name}: {e:?}");
        assert_eq!(steps(&s, name), ["RECEIVED", "FAILURE"], "{name}");
        assert!(
            s.rig.sup.error().contains("the running OS is untouched"),
            "{name}"
        );
        untouched(&s);
    }
    let e =
        s.os.submit("../etc/passwd", "outside", &[])
            .expect_err("outside");
    assert!(
        matches!(e, MasterError::UpdateSourceOutside { .. }),
        "{e:?}"
    );

    // A payload that does not match its signed hash: found before anything is written.
    let mut bad = good.clone();
    let n = bad.len();
    bad[n - 10] ^= 1;
    put(&s, "os/corrupt", &bad);
    s.os.submit("os/corrupt", "corrupt", &[])
        .expect("header is fine");
    s.updater.wait_idle().await;
    assert_eq!(steps(&s, "corrupt"), ["RECEIVED", "UPDATING", "FAILURE"]);
    assert!(
        s.rig.sup.error().contains("payload rootfs does not match"),
        "{}",
        s.rig.sup.error()
    );
    untouched(&s);

    // A root bigger than the partition.
    let mut big = payloads();
    big[2] = vec![7u8; ROOT_SIZE + 1];
    put(&s, "os/big", &bundle(&s.key, std::env::consts::ARCH, &big));
    s.os.submit("os/big", "big", &[]).expect("header is fine");
    s.updater.wait_idle().await;
    assert!(
        s.rig.sup.error().contains("does not fit into root-b"),
        "{}",
        s.rig.sup.error()
    );
    untouched(&s);
}

#[tokio::test]
async fn a_host_that_is_not_a_device_or_a_boot_on_trial_is_refused() {
    let s = setup(
        Err("no baetyl.root=root-a|root-b on the kernel command line".into()),
        "1s",
    )
    .await;
    put(
        &s,
        "b",
        &bundle(&s.key, std::env::consts::ARCH, &payloads()),
    );
    let e = s.os.submit("b", "host", &[]).expect_err("not a device");
    assert!(
        e.to_string()
            .contains("OS updates need a device booted from a baetyl disk image"),
        "{e}"
    );
    untouched(&s);

    let s = setup(Ok('b'), "1s").await;
    *s.fake.count.lock().unwrap() = Some("\\EFI\\Linux\\baetyl-000002-b+2-1.efi".into());
    put(
        &s,
        "b",
        &bundle(&s.key, std::env::consts::ARCH, &payloads()),
    );
    let e = s.os.submit("b", "trial", &[]).expect_err("on trial");
    assert!(e.to_string().contains("still on trial"), "{e}");
}

#[tokio::test(start_paused = true)]
async fn a_counted_boot_is_blessed_once_healthy() {
    let s = setup(Ok('b'), "30s").await;
    std::fs::write(
        s.fake.dir.join("esp/EFI/Linux/baetyl-000002-b+2-1.efi"),
        b"uki b v2",
    )
    .unwrap();
    *s.fake.count.lock().unwrap() = Some("\\EFI\\Linux\\baetyl-000002-b+2-1.efi".into());
    pending(&s, "t-os");
    s.os.at_start();
    tokio::time::sleep(std::time::Duration::from_secs(10)).await;
    assert!(
        !s.fake.blessed.load(Ordering::SeqCst),
        "not before bless_after"
    );
    tokio::time::sleep(std::time::Duration::from_secs(30)).await;
    // The rename runs on a blocking thread: give it real time.
    for _ in 0..200 {
        if s.fake.blessed.load(Ordering::SeqCst) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(s.fake.blessed.load(Ordering::SeqCst));
    assert_eq!(esp(&s), ["baetyl-000001-a.efi", "baetyl-000002-b.efi"]);
    assert_eq!(steps(&s, "t-os"), ["UPDATING", "RESTARTED"]);
    assert!(!s.rig.dir.path().join(PENDING_FILE).exists());
}

#[tokio::test]
async fn a_fallback_to_the_old_slot_reports_the_failed_install() {
    let s = setup(Ok('a'), "1s").await;
    std::fs::write(
        s.fake.dir.join("esp/EFI/Linux/baetyl-000002-b+0-3.efi"),
        b"uki b v2",
    )
    .unwrap();
    pending(&s, "t-bad");
    s.os.at_start();
    assert!(
        s.fake.blessed.load(Ordering::SeqCst),
        "the old slot is good"
    );
    assert_eq!(steps(&s, "t-bad"), ["ROLLEDBACK", "FAILURE"]);
    let e = s.rig.sup.error();
    assert!(
        e.contains("used all its 3 tries") && e.contains("runs slot a again"),
        "{e}"
    );
    assert!(!s.rig.dir.path().join(PENDING_FILE).exists());
    // Reported once.
    s.os.at_start();
    assert_eq!(steps(&s, "t-bad"), ["ROLLEDBACK", "FAILURE"]);
}

#[test]
fn the_pinned_key_must_be_an_ed25519_key() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("k");
    std::fs::write(&f, "rsa:AAAA").unwrap();
    assert!(
        super::verify::read_key(&f)
            .unwrap_err()
            .to_string()
            .contains("ed25519")
    );
    std::fs::write(&f, "ed25519:AAAA").unwrap();
    assert!(
        super::verify::read_key(&f)
            .unwrap_err()
            .to_string()
            .contains("32 bytes")
    );
    assert!(super::verify::read_key(Path::new("/nonexistent/key")).is_err());
}
