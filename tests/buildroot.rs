//! The Buildroot tree (`buildroot-overlay/`, issue 13 item 5) checked against real Buildroot, offline.
//!
//! Buildroot 2026.02.3 (LTS) comes as a release tarball (`$BAETYL_BUILDROOT_TARBALL`, by default
//! `../shared/vendor/buildroot-2026.02.3.tar.xz` beside the repository). The test unpacks it once into
//! `target/buildroot/<sha256>/` and then, for every defconfig of the tree, in parallel:
//! - `make BR2_EXTERNAL=buildroot-overlay O=... <defconfig>`: every assignment of the defconfig must hold in the
//!   resulting `.config` (kconfig silently drops unknown symbols and symbols whose dependencies are not met);
//! - `make savedefconfig`: the defconfig is kept in that form, so a symbol that became implied or a default
//!   that moved shows up as a difference;
//! - the `.config` is what the issue asks for: no init system (our init is `/init`), no `/bin/sh`, no busybox,
//!   containerd and runc from Buildroot's packages, a squashfs root, a kernel, the Pi firmware on the Pi boards;
//! - `make show-info`: the baetyl package with its build dependencies (host-rustc, host-protobuf), the kernel
//!   depending on it (its initramfs), host-rust-bin at the workspace's `rust-version`, and a hash for each of
//!   the Rust tarballs that a real build downloads (`BR2_DOWNLOAD_FORCE_CHECK_HASHES`);
//! - the board files the defconfig names exist, and the partition layout is `image/genimage/`'s file itself
//!   (named by `BR2_ROOTFS_POST_SCRIPT_ARGS`), whose `BAETYL_*` variables post-image.sh sets.
//!
//! Nothing downloads and nothing is compiled but Buildroot's kconfig. Ignored by default (it needs the tarball);
//! `scripts/test.sh` runs it with `--ignored`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use baetyl_sdk::config::ConfigFile;
use baetyl_testkit::workspace_dir;
use serde_json::Value;

const BUILDROOT: &str = "buildroot-2026.02.3";
const DEFCONFIGS: [&str; 4] = [
    "baetyl_raspberrypi4_64_defconfig",
    "baetyl_raspberrypi5_defconfig",
    "baetyl_qemu_x86_64_defconfig",
    "baetyl_qemu_aarch64_virt_defconfig",
];
/// What the image needs, whatever the board (`None`: not set).
const REQUIRED: [(&str, Option<&str>); 8] = [
    ("BR2_INIT_NONE", Some("y")),
    ("BR2_SYSTEM_BIN_SH_NONE", Some("y")),
    ("BR2_PACKAGE_BUSYBOX", None),
    ("BR2_PACKAGE_CONTAINERD", Some("y")),
    ("BR2_PACKAGE_RUNC", Some("y")),
    ("BR2_PACKAGE_BAETYL", Some("y")),
    ("BR2_TARGET_ROOTFS_SQUASHFS", Some("y")),
    ("BR2_LINUX_KERNEL", Some("y")),
];
/// Packages that would put a shell, a getty or another init into the root.
const FORBIDDEN_PACKAGES: [&str; 6] = [
    "busybox", "sysvinit", "systemd", "openrc", "bash", "dropbear",
];
/// Options whose values are paths of files the tree provides (space-separated lists).
const PATH_OPTIONS: [&str; 7] = [
    "BR2_PACKAGE_OVERRIDE_FILE",
    "BR2_GLOBAL_PATCH_DIR",
    "BR2_ROOTFS_POST_BUILD_SCRIPT",
    "BR2_ROOTFS_POST_IMAGE_SCRIPT",
    "BR2_LINUX_KERNEL_CONFIG_FRAGMENT_FILES",
    "BR2_PACKAGE_RPI_FIRMWARE_CONFIG_FILE",
    "BR2_PACKAGE_RPI_FIRMWARE_CMDLINE_FILE",
];

type Assignments = BTreeMap<String, Option<String>>;

/// `BR2_X=v` and `# BR2_X is not set` lines (other comments and blank lines are not assignments).
fn assignments(text: &str) -> Assignments {
    let mut out = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if let Some(sym) = line
            .strip_prefix("# ")
            .and_then(|l| l.strip_suffix(" is not set"))
        {
            out.insert(sym.to_string(), None);
        } else if !line.starts_with('#')
            && let Some((sym, value)) = line.split_once('=')
        {
            out.insert(sym.to_string(), Some(value.to_string()));
        }
    }
    out
}

fn show(v: &Option<String>) -> &str {
    v.as_deref().unwrap_or("is not set")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Runs a host tool; its stdout, or a panic naming it with its stderr.
fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn tarball() -> PathBuf {
    if let Some(p) = std::env::var_os("BAETYL_BUILDROOT_TARBALL") {
        return PathBuf::from(p);
    }
    let name = format!("{BUILDROOT}.tar.xz");
    let candidates = [
        workspace_dir().join("../shared/vendor").join(&name),
        PathBuf::from("/work/shared/vendor").join(&name),
    ];
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "Buildroot's release tarball {name} is not at {:?}: set BAETYL_BUILDROOT_TARBALL to its path",
                candidates
            )
        })
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_dir().join("target"))
}

/// Buildroot unpacked into `target/buildroot/src/<sha256 of the tarball>/` once (once per process too: the tests
/// share it); other versions there are removed.
fn unpack() -> PathBuf {
    static TREE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    TREE.get_or_init(|| {
        let tarball = tarball();
        let hash = baetyl_image::fs::sha256(&tarball).expect("hashing the Buildroot tarball");
        let cache = target_dir().join("buildroot/src");
        let dir = cache.join(&hash[..16]);
        let tree = dir.join(BUILDROOT);
        if tree.join("Makefile").is_file() {
            return tree;
        }
        std::fs::create_dir_all(&cache).expect("creating target/buildroot/src");
        for old in std::fs::read_dir(&cache)
            .expect("listing target/buildroot/src")
            .flatten()
        {
            let _ = std::fs::remove_dir_all(old.path());
        }
        let tmp = cache.join(format!(".unpack-{}", std::process::id()));
        std::fs::create_dir_all(&tmp).expect("creating the unpack directory");
        let started = Instant::now();
        run(Command::new("tar")
            .arg("-xJf")
            .arg(&tarball)
            .arg("-C")
            .arg(&tmp));
        if std::fs::rename(&tmp, &dir).is_err() {
            // another process unpacked the same tarball meanwhile
            let _ = std::fs::remove_dir_all(&tmp);
        }
        assert!(
            tree.join("Makefile").is_file(),
            "{} holds no Buildroot",
            dir.display()
        );
        println!(
            "unpacked {} in {:.1} s",
            tarball.display(),
            started.elapsed().as_secs_f64()
        );
        tree
    })
    .clone()
}

/// One Buildroot `make` in the tree with our external tree and output directory; its output, or an error with
/// its tail.
fn make(br: &Path, out: &Path, args: &[&str]) -> Result<String, String> {
    let overlay = workspace_dir().join("buildroot-overlay");
    let output = Command::new("make")
        .current_dir(br)
        .env_remove("MAKEFLAGS")
        .env_remove("MFLAGS")
        .env_remove("MAKELEVEL")
        .env_remove("BR2_EXTERNAL")
        .env_remove("BR2_DL_DIR")
        .arg("-s")
        .arg(format!("BR2_EXTERNAL={}", overlay.display()))
        .arg(format!("O={}", out.display()))
        .args(args)
        .output()
        .map_err(|e| format!("running make: {e}"))?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        let err = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = err.lines().rev().take(15).collect();
        return Err(format!(
            "make {}: {}\n{}",
            args.join(" "),
            output.status,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        ));
    }
    Ok(text)
}

/// `1.95` or `1.95.0` as comparable numbers.
fn version(v: &str) -> Vec<u64> {
    v.split('.').map(|p| p.parse().unwrap_or(0)).collect()
}

/// The workspace's `rust-version` (Cargo.toml).
fn rust_version() -> String {
    let cargo = read(&workspace_dir().join("Cargo.toml"));
    cargo
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .map(|v| v.trim_matches('"').to_string())
        .expect("rust-version in Cargo.toml")
}

/// `$(BR2_EXTERNAL_BAETYL_PATH)/x` in our tree, anything else relative to Buildroot's directory.
fn resolve(br: &Path, value: &str) -> PathBuf {
    match value.strip_prefix("$(BR2_EXTERNAL_BAETYL_PATH)/") {
        Some(rel) => workspace_dir().join("buildroot-overlay").join(rel),
        None => br.join(value),
    }
}

/// Every check of one defconfig; the list of what is wrong.
fn check_defconfig(br: &Path, name: &str) -> Vec<String> {
    let mut errors = Vec::new();
    let overlay = workspace_dir().join("buildroot-overlay");
    let out = target_dir().join("buildroot/out").join(name);
    let _ = std::fs::remove_dir_all(&out);
    let ours = assignments(&read(&overlay.join("configs").join(name)));

    // The defconfig, loaded: nothing dropped.
    if let Err(e) = make(br, &out, &[name]) {
        return vec![e];
    }
    let config = assignments(&read(&out.join(".config")));
    for (sym, want) in &ours {
        let got = config.get(sym).cloned().flatten();
        if got != *want {
            errors.push(format!(
                "{sym}: the defconfig says `{}`, kconfig made it `{}` (unknown symbol or unmet dependency)",
                show(want),
                show(&got)
            ));
        }
    }
    let mut required: Vec<(&str, Option<&str>)> = REQUIRED.to_vec();
    if name.contains("raspberrypi") {
        required.push(("BR2_PACKAGE_RPI_FIRMWARE", Some("y")));
    }
    for (sym, want) in required {
        let got = config.get(sym).cloned().flatten();
        if got.as_deref() != want {
            errors.push(format!(
                "{sym} must be `{}` in every baetyl image, it is `{}`",
                want.unwrap_or("is not set"),
                show(&got)
            ));
        }
    }

    // savedefconfig: the defconfig is in its canonical form.
    let saved = out.join("saved_defconfig");
    match make(
        br,
        &out,
        &[
            "savedefconfig",
            &format!("BR2_DEFCONFIG={}", saved.display()),
        ],
    ) {
        Err(e) => errors.push(e),
        Ok(_) => {
            let saved = assignments(&read(&saved));
            for (sym, v) in &ours {
                if saved.get(sym) != Some(v) {
                    errors.push(format!(
                        "{sym}={}: not in savedefconfig's output (implied by another option or the default: \
                         drop the line)",
                        show(v)
                    ));
                }
            }
            for (sym, v) in &saved {
                if !ours.contains_key(sym) {
                    errors.push(format!(
                        "savedefconfig writes {sym}={} that the defconfig lacks (add it)",
                        show(v)
                    ));
                }
            }
        }
    }

    // show-info and the Rust download's variables, in one parse of Buildroot's makefiles.
    let vars = "HOST_RUST_BIN_SOURCE HOST_RUST_BIN_EXTRA_DOWNLOADS HOST_RUST_BIN_HASH_FILES";
    match make(
        br,
        &out,
        &["show-info", "printvars", &format!("VARS={vars}")],
    ) {
        Err(e) => errors.push(e),
        Ok(text) => check_show_info(br, &text, &mut errors),
    }

    // The board files the defconfig names exist; the layout is image/genimage's own file.
    for opt in PATH_OPTIONS {
        let Some(Some(value)) = ours.get(opt) else {
            continue;
        };
        for word in value.trim_matches('"').split_whitespace() {
            let path = resolve(br, word);
            if !path.exists() {
                errors.push(format!(
                    "{opt} names {word}: {} does not exist",
                    path.display()
                ));
            }
        }
    }
    let args = ours
        .get("BR2_ROOTFS_POST_SCRIPT_ARGS")
        .cloned()
        .flatten()
        .unwrap_or_default();
    match args.trim_matches('"').split_whitespace().nth(1) {
        None => errors.push(format!(
            "BR2_ROOTFS_POST_SCRIPT_ARGS ({args}) must name the boot medium and a layout in image/genimage/"
        )),
        Some(layout) => check_layout(&overlay, layout, &mut errors),
    }
    errors
}

fn check_show_info(br: &Path, text: &str, errors: &mut Vec<String>) {
    let mut lines = text.lines();
    let info: Value = match lines.next().map(serde_json::from_str) {
        Some(Ok(v)) => v,
        _ => {
            errors.push("show-info did not print JSON".into());
            return;
        }
    };
    let vars: BTreeMap<&str, &str> = lines.filter_map(|l| l.split_once('=')).collect();
    let deps = |pkg: &str| -> BTreeSet<String> {
        info[pkg]["dependencies"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|d| d.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let baetyl = &info["baetyl"];
    if baetyl.is_null() {
        errors.push("show-info does not list the baetyl package".into());
        return;
    }
    let cargo = read(&workspace_dir().join("Cargo.toml"));
    let ours = cargo
        .lines()
        .find_map(|l| l.strip_prefix("version = "))
        .map(|v| v.trim_matches('"'));
    if baetyl["version"].as_str() != ours {
        errors.push(format!(
            "baetyl's version in show-info is {}, the workspace's {ours:?}",
            baetyl["version"]
        ));
    }
    for dep in ["host-rustc", "host-protobuf", "toolchain"] {
        if !deps("baetyl").contains(dep) {
            errors.push(format!(
                "show-info: baetyl does not depend on {dep}: {:?}",
                deps("baetyl")
            ));
        }
    }
    if !deps("linux").contains("baetyl") {
        errors.push(
            "show-info: the kernel does not depend on baetyl (its built-in initramfs)".into(),
        );
    }
    for pkg in [
        "containerd",
        "runc",
        "e2fsprogs",
        "host-rust-bin",
        "host-genimage",
    ] {
        if info[pkg].is_null() {
            errors.push(format!("show-info does not list {pkg}"));
        }
    }
    for pkg in FORBIDDEN_PACKAGES {
        if !info[pkg].is_null() {
            errors.push(format!(
                "{pkg} is in the image: no shell, getty or other init on a device"
            ));
        }
    }
    let rust = info["host-rust-bin"]["version"].as_str().unwrap_or("");
    let need = rust_version();
    if version(rust) < version(&need) {
        errors.push(format!(
            "host-rust-bin is {rust:?}, the workspace needs Rust {need} (board/common/rust.mk, BR2_PACKAGE_OVERRIDE_FILE)"
        ));
    }
    // Each Rust tarball a real build downloads has a hash (BR2_DOWNLOAD_FORCE_CHECK_HASHES).
    let hashes: String = vars
        .get("HOST_RUST_BIN_HASH_FILES")
        .unwrap_or(&"")
        .split_whitespace()
        .map(|f| std::fs::read_to_string(br.join(f)).unwrap_or_default())
        .collect();
    let files = [
        vars.get("HOST_RUST_BIN_SOURCE").copied().unwrap_or(""),
        vars.get("HOST_RUST_BIN_EXTRA_DOWNLOADS")
            .copied()
            .unwrap_or(""),
    ];
    for file in files.iter().flat_map(|f| f.split_whitespace()) {
        let hashed = hashes.lines().any(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            w.len() == 3 && w[0] == "sha256" && w[1].len() == 64 && w[2] == file
        });
        if !hashed {
            errors.push(format!(
                "no sha256 for {file} in {:?}",
                vars.get("HOST_RUST_BIN_HASH_FILES")
            ));
        }
    }
}

/// The layout is `image/genimage/<layout>` itself: it exists, post-image.sh uses it from there and sets each
/// of its `BAETYL_*` variables, and the tree holds no copy of a genimage layout.
fn check_layout(overlay: &Path, layout: &str, errors: &mut Vec<String>) {
    let cfg = workspace_dir().join("image/genimage").join(layout);
    let Ok(text) = std::fs::read_to_string(&cfg) else {
        errors.push(format!("the layout {} does not exist", cfg.display()));
        return;
    };
    let post = read(&overlay.join("board/common/post-image.sh"));
    if !post.contains("$repo/image/genimage/$layout") {
        errors.push("post-image.sh does not take the layout from image/genimage/".into());
    }
    let vars: BTreeSet<&str> = text
        .split("${")
        .skip(1)
        .filter_map(|s| s.split([':', '}']).next())
        .collect();
    for var in vars {
        if !post.contains(&format!("export {var}")) {
            errors.push(format!(
                "{layout} uses ${{{var}}} but post-image.sh does not export it"
            ));
        }
    }
}

/// No file of the tree repeats a genimage layout (one source: image/genimage/).
fn check_no_layout_copy(errors: &mut Vec<String>) {
    let overlay = workspace_dir().join("buildroot-overlay");
    let mut stack = vec![overlay];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)
            .expect("listing buildroot-overlay")
            .flatten()
        {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if std::fs::read_to_string(&path).is_ok_and(|t| t.contains("hdimage")) {
                errors.push(format!(
                    "{} holds a genimage layout: use image/genimage/'s files (one source)",
                    path.display()
                ));
            }
        }
    }
}

#[test]
#[ignore = "needs Buildroot's release tarball; scripts/test.sh runs it"]
fn buildroot_defconfigs_load_whole_and_use_image_layout() {
    let started = Instant::now();
    let br = unpack();
    let overlay = workspace_dir().join("buildroot-overlay");
    for f in [
        "external.desc",
        "Config.in",
        "external.mk",
        "package/baetyl/Config.in",
        "package/baetyl/baetyl.mk",
    ] {
        assert!(
            overlay.join(f).is_file(),
            "buildroot-overlay/{f} is missing"
        );
    }
    let found: BTreeSet<String> = std::fs::read_dir(overlay.join("configs"))
        .expect("listing buildroot-overlay/configs")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let want: BTreeSet<String> = DEFCONFIGS.iter().map(|s| s.to_string()).collect();
    assert_eq!(
        found, want,
        "buildroot-overlay/configs holds other defconfigs than the test checks"
    );

    let mut errors = Vec::new();
    check_no_layout_copy(&mut errors);
    let results: Vec<(&str, Vec<String>, f64)> = std::thread::scope(|s| {
        let handles: Vec<_> = DEFCONFIGS
            .iter()
            .map(|name| {
                let br = &br;
                s.spawn(move || {
                    let t = Instant::now();
                    (*name, check_defconfig(br, name), t.elapsed().as_secs_f64())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a defconfig check panicked"))
            .collect()
    });
    for (name, errs, secs) in results {
        println!("{name}: {} problem(s), {secs:.1} s", errs.len());
        errors.extend(errs.into_iter().map(|e| format!("{name}: {e}")));
    }
    let _ = std::fs::remove_dir_all(target_dir().join("buildroot/out"));
    println!(
        "BUILDROOT {} defconfigs checked in {:.1} s",
        DEFCONFIGS.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        errors.is_empty(),
        "buildroot-overlay:\n{}",
        errors.join("\n")
    );
}

/// post-image.sh, run as Buildroot runs it (from Buildroot's directory, its environment) on a real squashfs root
/// and stand-in kernel, firmware and device tree files (the script only copies those into the boot partition):
/// the EFI disks are image/genimage/disk.cfg's GPT layout, the Pi cards image/genimage/rpi.cfg's MBR layout
/// (autoboot.txt, boot slot A naming its root by PARTUUID, empty slot B), each partition's content where it
/// belongs.
#[test]
#[ignore = "needs Buildroot's release tarball; scripts/test.sh runs it"]
fn buildroot_post_image_lays_out_image_genimage_disk() {
    let br = unpack();
    let overlay = workspace_dir().join("buildroot-overlay");
    let base = target_dir().join("buildroot/post-image");
    for (boot, kernel, esp_file, layout) in [
        (
            "efi-x86_64",
            "bzImage",
            "::/EFI/BOOT/BOOTX64.EFI",
            "disk.cfg",
        ),
        (
            "efi-aarch64",
            "Image",
            "::/EFI/BOOT/BOOTAA64.EFI",
            "disk.cfg",
        ),
        ("rpi4", "Image", "::/Image", "rpi.cfg"),
        ("rpi5", "Image", "::/Image", "rpi.cfg"),
    ] {
        let pi = boot.starts_with("rpi");
        let dir = base.join(boot);
        let _ = std::fs::remove_dir_all(&dir);
        let (images, build, root) = (dir.join("images"), dir.join("build"), dir.join("root"));
        for d in [&images, &build, &root.join("bin")] {
            std::fs::create_dir_all(d).expect("creating the post-image directories");
        }
        std::fs::write(root.join("bin/baetyl"), b"the root's files").expect("writing the root");
        run(Command::new("mksquashfs")
            .arg(&root)
            .arg(images.join("rootfs.squashfs"))
            .args(["-quiet", "-no-progress", "-all-root", "-comp", "zstd"]));
        std::fs::write(images.join(kernel), vec![0x4b; 4096]).expect("writing the kernel stand-in");
        if pi {
            let fw = images.join("rpi-firmware");
            std::fs::create_dir_all(&fw).expect("creating rpi-firmware");
            for f in ["config.txt", "cmdline.txt"] {
                std::fs::copy(overlay.join("board/raspberrypi").join(f), fw.join(f))
                    .expect("copying the Pi's boot files");
            }
            std::fs::write(fw.join("start4.elf"), b"firmware stand-in").expect("writing firmware");
            std::fs::write(images.join("bcm2711-rpi-4-b.dtb"), b"dtb stand-in")
                .expect("writing a dtb");
        }
        let config = dir.join("dot-config");
        std::fs::write(&config, "BR2_PACKAGE_BAETYL=y\n").expect("writing BR2_CONFIG");
        let printed = run(Command::new("bash")
            .current_dir(&br)
            .arg(overlay.join("board/common/post-image.sh"))
            .arg(&images)
            .args([boot, layout])
            .env("BR2_EXTERNAL_BAETYL_PATH", &overlay)
            .env("BINARIES_DIR", &images)
            .env("BUILD_DIR", &build)
            .env("BR2_CONFIG", &config));
        println!("{boot}: {}", printed.trim());

        let disk = images.join(if pi { "sdcard.img" } else { "disk.img" });
        let table: Value =
            serde_json::from_str(&run(Command::new("sfdisk").arg("--json").arg(&disk)))
                .expect("sfdisk --json");
        let parts = table["partitiontable"]["partitions"]
            .as_array()
            .expect("partitions");
        let root_a = if pi {
            // MBR: config, boot-a, boot-b (FAT, 0x0c), the extended partition, root-a, root-b, data (0x83).
            let types: Vec<&str> = parts.iter().filter_map(|p| p["type"].as_str()).collect();
            assert_eq!(
                types,
                ["c", "c", "c", "f", "83", "83", "83"],
                "{boot}: {table}"
            );
            assert_eq!(table["partitiontable"]["label"], "dos", "{boot}");
            let tag = if boot == "rpi4" { "03" } else { "05" };
            assert_eq!(
                table["partitiontable"]["id"].as_str(),
                Some(format!("0xbae771{tag}").as_str()),
                "{boot}: the card's disk signature (its PARTUUIDs) names the board"
            );
            let auto = run(Command::new("mtype")
                .arg("-i")
                .arg(images.join("config.vfat"))
                .arg("::/autoboot.txt"));
            assert!(
                auto.contains("tryboot_a_b=1\nboot_partition=2\n[tryboot]\nboot_partition=3"),
                "{boot}: autoboot.txt: {auto}"
            );
            let cmdline = run(Command::new("mtype")
                .arg("-i")
                .arg(images.join("boot-a.vfat"))
                .arg("::/cmdline.txt"));
            assert!(
                cmdline
                    .trim_end()
                    .ends_with(&format!("baetyl.root.device=PARTUUID=bae771{tag}-05"))
                    && cmdline.lines().count() == 1,
                "{boot}: cmdline.txt: {cmdline}"
            );
            let slot_b = run(Command::new("mdir")
                .args(["-b", "-i"])
                .arg(images.join("boot-b.vfat"))
                .arg("::/"));
            assert!(
                slot_b.trim().is_empty(),
                "{boot}: slot B is not empty: {slot_b}"
            );
            let bmap = read(&images.join("sdcard.img.bmap"));
            assert!(
                bmap.contains("<bmap version="),
                "{boot}: sdcard.img.bmap: {bmap}"
            );
            &parts[4]
        } else {
            let names: Vec<&str> = parts.iter().filter_map(|p| p["name"].as_str()).collect();
            assert_eq!(
                names,
                ["boot", "root-a", "root-b", "baetyl-data"],
                "{boot}: {table}"
            );
            assert_eq!(table["partitiontable"]["label"], "gpt", "{boot}");
            let tag = if boot == "efi-x86_64" { "01" } else { "02" };
            assert_eq!(
                table["partitiontable"]["id"]
                    .as_str()
                    .map(str::to_lowercase),
                Some(format!("bae77100-0000-4000-8000-0000000{tag}000")),
                "{boot}: the disk's identifier carries the architecture"
            );
            &parts[1]
        };
        // root-a holds Buildroot's rootfs.squashfs byte for byte.
        let squash =
            std::fs::read(images.join("rootfs.squashfs")).expect("reading rootfs.squashfs");
        let start = root_a["start"].as_u64().expect("root-a's start") * 512;
        let mut found = vec![0; squash.len()];
        let mut f = std::fs::File::open(&disk).expect("opening disk.img");
        f.seek(SeekFrom::Start(start)).expect("seeking to root-a");
        f.read_exact(&mut found).expect("reading root-a");
        assert!(
            found == squash,
            "{boot}: root-a does not hold rootfs.squashfs"
        );
        // The boot partition holds the kernel where the firmware looks for it.
        let boot_fat = images.join(if pi { "boot-a.vfat" } else { "boot.vfat" });
        let listing = run(Command::new("mdir")
            .arg("-b")
            .arg("-i")
            .arg(&boot_fat)
            .arg(esp_file));
        assert!(
            listing.contains(esp_file.trim_start_matches("::")),
            "{boot}: {listing}"
        );
        if pi {
            let cfg = run(Command::new("mtype")
                .arg("-i")
                .arg(&boot_fat)
                .arg("::/config.txt"));
            assert!(cfg.contains("kernel=Image"), "{boot}: config.txt: {cfg}");
        }
        // The data partition: labelled baetyl-data, with the image's application.
        let label = run(Command::new("e2label").arg(images.join("data.ext4")));
        assert_eq!(label.trim(), "baetyl-data", "{boot}");
        let app = run(Command::new("debugfs")
            .arg("-R")
            .arg("cat /var/db/baetyl/application.yml")
            .arg(images.join("data.ext4")));
        assert_eq!(
            app,
            read(&workspace_dir().join("examples/image/application.yml")),
            "{boot}: the data partition's application.yml"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// post-build.sh passes a root with what init and the master need, and fails (naming the file) on a root that
/// lacks one of them or holds a shell.
#[test]
fn buildroot_post_build_checks_the_root() {
    let script = workspace_dir().join("buildroot-overlay/board/common/post-build.sh");
    let dir = baetyl_testkit::test_dir("post-build-");
    let root = dir.path();
    for f in [
        "init",
        "bin/baetyl",
        "etc/baetyl/conf.yml",
        "sbin/e2fsck",
        "usr/bin/containerd",
        "usr/bin/containerd-shim-runc-v2",
        "usr/bin/runc",
    ] {
        let p = root.join(f);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("creating the root");
        std::fs::write(&p, b"").expect("writing the root");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let post_build = || {
        let out = Command::new("bash")
            .arg(&script)
            .arg(root)
            .output()
            .expect("running post-build.sh");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, err) = post_build();
    assert!(ok, "a complete root: {err}");
    assert!(root.join("var/lib/baetyl").is_dir() && root.join("run").is_dir());

    std::os::unix::fs::symlink("busybox", root.join("bin/sh")).expect("linking bin/sh");
    let (ok, err) = post_build();
    assert!(!ok && err.contains("/bin/sh is in the root"), "{err}");
    std::fs::remove_file(root.join("bin/sh")).expect("removing bin/sh");

    std::fs::remove_file(root.join("usr/bin/runc")).expect("removing runc");
    let (ok, err) = post_build();
    assert!(!ok && err.contains("runc is missing"), "{err}");
}

/// The files the baetyl package installs load with init's and the master's own loaders and say what
/// `baetyl image build` says: init.yml (as the package renders it, with the QEMU boards' network) mounts root-a and
/// baetyl-data and starts the master; conf.yml is the image's master config.
#[test]
fn buildroot_package_configs_load_with_our_loaders() {
    let pkg = workspace_dir().join("buildroot-overlay/package/baetyl");
    let dir = baetyl_testkit::test_dir("buildroot-configs-");
    let init_yml = dir.path().join("init.yml");
    let rendered = read(&pkg.join("init.yml.in")).replace("@HOSTNAME@", "baetyl")
        + "network:\n  address: 10.0.2.15/24\n  gateway: 10.0.2.2\n";
    std::fs::write(&init_yml, &rendered).expect("writing init.yml");
    let (cfg, problems) = baetyl_init::config::load(&init_yml, &[]);
    assert!(problems.is_empty(), "init.yml: {problems:?}");
    let image = baetyl_image::configs::init_config("baetyl", "6.1.0", &[]);
    let uncommented = |t: &str| -> Vec<String> {
        t.lines()
            .map(|l| l.split(" #").next().unwrap_or("").trim_end().to_string())
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect()
    };
    let image_lines = uncommented(&image);
    for line in uncommented(&rendered) {
        assert!(
            image_lines.contains(&line),
            "init.yml.in's `{line}` differs from image/src/configs.rs's init.yml:\n{image}"
        );
    }
    assert_eq!(cfg.hostname.as_deref(), Some("baetyl"));
    assert!(
        cfg.modules.load.is_empty(),
        "the kernel has the drivers built in"
    );
    let root = cfg.root.expect("a root");
    assert_eq!(
        (root.label.as_deref(), root.fstype.as_str()),
        (Some("root-a"), "squashfs")
    );
    assert_eq!(cfg.data.expect("a data partition").label, "baetyl-data");
    assert_eq!(cfg.master.command[0], "/bin/baetyl");

    let conf = pkg.join("conf.yml");
    baetyl_master::config::MasterConfig::load(&conf)
        .expect("conf.yml loads as the master's config");
    assert_eq!(
        uncommented(&read(&conf)),
        uncommented(&baetyl_image::configs::master_config(
            baetyl_image::args::Engine::Native,
            None,
            false
        )),
        "conf.yml is the image's master config"
    );
}

#[test]
fn defconfig_lines_parse_as_assignments() {
    let a = assignments("# comment\nBR2_A=y\n# BR2_B is not set\nBR2_C=\"x y\"\n\n");
    assert_eq!(a.len(), 3);
    assert_eq!(a["BR2_A"].as_deref(), Some("y"));
    assert_eq!(a["BR2_B"], None);
    assert_eq!(a["BR2_C"].as_deref(), Some("\"x y\""));
    assert!(version("1.95.0") >= version("1.95"));
    assert!(version("1.88.0") < version("1.95"));
}
