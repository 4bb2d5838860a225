//! The init as PID 1 of a real kernel under QEMU (TCG): `qemu/boot-test` builds a static baetyl-init, packs it
//! with Debian's kernel into an initramfs and boots it with a data disk; see that script for what is checked.
//! Ignored by default because it downloads the kernel package, builds a release binary and boots a VM (about a
//! minute on a loaded 2-core machine): `cargo test -p baetyl-init --test qemu_boot -- --ignored`.

use std::process::Command;

fn boot_test(arch: &str) {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let out = Command::new(format!("{root}/qemu/boot-test"))
        .args(["--arch", arch, "--timeout", "600"])
        .output()
        .expect("run qemu/boot-test");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "qemu/boot-test --arch {arch} failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("PASS: PID 1 "), "{stdout}");
    let summary: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("PASS") || l.starts_with("sizes") || l.starts_with("memory"))
        .collect();
    println!("{arch}: {}", summary.join("\n"));
}

#[test]
#[ignore = "boots a VM: needs qemu-system-x86 (bookworm-backports), kmod, cpio, fdisk, e2fsprogs, apt access"]
fn x86_64_initramfs_boots_to_pid1_serves_a_forwarded_port_and_powers_off() {
    boot_test("x86_64");
}

#[test]
#[ignore = "boots a VM: needs qemu-system-arm (bookworm-backports) and Debian's arm64 cross toolchain"]
fn aarch64_initramfs_boots_to_pid1_serves_a_forwarded_port_and_powers_off() {
    boot_test("aarch64");
}
