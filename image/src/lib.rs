//! `baetyl image build`: the OS image, from Debian's packages for the target architecture and our static
//! binaries.
//!
//! Outputs (in `--out`, default `out/<arch>`):
//! - `vmlinuz` + `initramfs.img`: the kernel and an initramfs holding only the static `baetyl-init` as `/init`,
//!   the kernel modules it loads (in dependency order) and `/etc/baetyl/init.yml`;
//! - `rootfs.squashfs`: the read-only root: `/bin/baetyl`, `/etc/baetyl/conf.yml` (the master's), mount points;
//!   no shell, no getty, no sshd, no package manager;
//! - `boot.efi`: a unified kernel image (systemd's EFI stub + kernel + initramfs + command line);
//! - `disk.img`: a raw GPT disk (boot ESP, root-a, root-b, baetyl-data) that UEFI firmware boots;
//! - `manifest.txt`: size and SHA-256 of each output.
//!
//! Init switches from the initramfs to root-a (found by GPT partition name), mounts baetyl-data on
//! /var/lib/baetyl and starts `/bin/baetyl master` there; the data partition ships with the application of
//! `examples/image` (hub, timer, SQL function; or the work-dir tree given with `--app`), whose hub keeps its
//! sessions and retained messages on a volume.

pub mod apt;
pub mod disk;
pub mod elf;
pub mod error;
pub mod initramfs;
pub mod run;
pub mod uki;

use baetyl_sdk::config::ConfigFile;
use std::path::{Path, PathBuf};
use std::process::Command;

use baetyl_sdk::config::human_bytes;
use sha2::{Digest, Sha256};

use crate::error::{ImageError, Result};
use crate::initramfs::{Entry, Kind};
use crate::run::{Runner, System, have};

#[derive(clap::Args, Debug)]
pub struct ImageArgs {
    #[command(subcommand)]
    pub command: ImageCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum ImageCommand {
    /// Build the kernel + initramfs, the unified kernel image, the squashfs root and the GPT disk image.
    Build(BuildArgs),
}

#[derive(clap::Args, Debug, Clone)]
pub struct BuildArgs {
    /// Target architecture: x86_64 or aarch64.
    #[arg(long, default_value = "x86_64")]
    pub arch: String,
    /// Output directory (default: out/<arch> under the current directory).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// A static `baetyl` binary for the target; without it, it is built from --source with cargo.
    #[arg(long)]
    pub binary: Option<PathBuf>,
    /// A static `baetyl-init` binary for the target; without it, it is built from --source with cargo.
    #[arg(long)]
    pub init_binary: Option<PathBuf>,
    /// The baetyl source tree to build the binaries from (default: the tree this binary was built from).
    #[arg(long)]
    pub source: Option<PathBuf>,
    /// The package cache (apt downloads and their unpacked trees), reused by later builds.
    #[arg(
        long,
        env = "BAETYL_IMAGE_CACHE",
        default_value = "/var/cache/baetyl-image"
    )]
    pub cache: PathBuf,
    /// The application to ship instead of `examples/image`: a master work-dir tree holding
    /// `var/db/baetyl/application.yml` and its volumes' files, copied onto the data partition (validated first).
    #[arg(long, value_name = "DIR")]
    pub app: Option<PathBuf>,
    /// Size of the data partition in the image, MiB (init grows it to fill a larger medium on first boot).
    #[arg(long, default_value_t = 64)]
    pub data_mib: u64,
    /// The device's hostname.
    #[arg(long, default_value = "baetyl")]
    pub hostname: String,
    /// Development images only: also serve the master API on this TCP address (e.g. 0.0.0.0:9990).
    #[arg(long, value_name = "ADDR:PORT")]
    pub dev_api: Option<String>,
    /// Development images only: the operator token for --dev-api (a file with one token of 16+ characters).
    #[arg(long, value_name = "FILE", requires = "dev_api")]
    pub dev_api_token: Option<PathBuf>,
    /// Timestamp of every file in the outputs (reproducible builds).
    #[arg(long, env = "SOURCE_DATE_EPOCH", default_value_t = 1_700_000_000)]
    pub source_date_epoch: u64,
}

/// What differs between the architectures.
#[derive(Debug)]
pub struct Arch {
    pub name: &'static str,
    pub debarch: &'static str,
    pub kernel_meta: &'static str,
    pub rust_target: &'static str,
    pub elf_machine: u16,
    pub console: &'static str,
    pub stub: &'static str,
    pub efi_name: &'static str,
    pub objcopy: &'static str,
    /// Modules init loads from the initramfs (virtio disk, network and entropy source, the root's squashfs,
    /// ext4 where it is not built in); their dependencies are added in order. Without an entropy source the
    /// kernel's random pool may take minutes to initialise under TCG, and every getrandom() blocks until then.
    pub modules: &'static [&'static str],
    pub tag: u8,
}

pub const ARCHES: &[Arch] = &[
    Arch {
        name: "x86_64",
        debarch: "amd64",
        kernel_meta: "linux-image-cloud-amd64",
        rust_target: "x86_64-unknown-linux-gnu",
        elf_machine: elf::EM_X86_64,
        console: "ttyS0",
        stub: "usr/lib/systemd/boot/efi/linuxx64.efi.stub",
        efi_name: "BOOTX64.EFI",
        objcopy: "objcopy",
        modules: &[
            "virtio_pci",
            "virtio_blk",
            "virtio_net",
            "virtio_rng",
            "squashfs",
        ],
        tag: 1,
    },
    Arch {
        name: "aarch64",
        debarch: "arm64",
        kernel_meta: "linux-image-arm64",
        rust_target: "aarch64-unknown-linux-gnu",
        elf_machine: elf::EM_AARCH64,
        console: "ttyAMA0",
        stub: "usr/lib/systemd/boot/efi/linuxaa64.efi.stub",
        efi_name: "BOOTAA64.EFI",
        objcopy: "aarch64-linux-gnu-objcopy",
        modules: &[
            "virtio_pci",
            "virtio_blk",
            "virtio_net",
            "virtio_rng",
            "squashfs",
            "ext4",
        ],
        tag: 2,
    },
];

pub fn arch(name: &str) -> Result<&'static Arch> {
    ARCHES
        .iter()
        .find(|a| a.name == name || a.debarch == name)
        .ok_or_else(|| ImageError::Input(format!("--arch {name}: use x86_64 or aarch64")))
}

/// Where the master keeps its work dir: the data partition.
pub const DATA_MOUNT: &str = "/var/lib/baetyl";

fn step(n: u32, what: &str) {
    println!("==> [{n}/8] {what}");
}

fn write(path: &Path, data: impl AsRef<[u8]>) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| ImageError::io(dir, e))?;
    }
    std::fs::write(path, data).map_err(|e| ImageError::io(path, e))
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| ImageError::io(path, e))
}

/// The tools a build needs, with the Debian package of each.
fn check_tools(a: &Arch, build_binaries: bool) -> Result<()> {
    let mut tools = vec![
        ("apt-get", "apt"),
        ("apt-cache", "apt"),
        ("dpkg", "dpkg"),
        ("modprobe", "kmod"),
        ("depmod", "kmod"),
        ("mksquashfs", "squashfs-tools"),
        ("mke2fs", "e2fsprogs"),
        ("mkfs.vfat", "dosfstools"),
        ("mcopy", "mtools"),
        ("debugfs", "e2fsprogs"),
        ("genimage", "genimage"),
        (a.objcopy, "binutils / binutils-aarch64-linux-gnu"),
    ];
    if build_binaries && a.name == "aarch64" {
        tools.push((
            "/usr/bin/cargo",
            "cargo-web rustc-web libstd-rust-web-dev:arm64",
        ));
        tools.push((
            "aarch64-linux-gnu-gcc",
            "gcc-aarch64-linux-gnu libc6-dev-arm64-cross",
        ));
    } else if build_binaries {
        tools.push(("cargo", "rustup or cargo-web"));
    }
    let missing: Vec<String> = tools
        .iter()
        .filter(|(t, _)| !have(t))
        .map(|(t, p)| format!("{t} (package {p})"))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(ImageError::MissingTools(format!(
            "{}; scripts/setup.sh installs them",
            missing.join(", ")
        )))
    }
}

/// The source tree this binary was built from, when it is still there.
fn default_source() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()?
        .to_path_buf();
    dir.join("Cargo.toml").is_file().then_some(dir)
}

/// Builds the static `baetyl` and `baetyl-init` for the target with cargo (Debian's cross toolchain for
/// aarch64, in its own target dir since it is another compiler), profile `image`.
fn cargo_build(run: &dyn Runner, a: &Arch, source: &Path) -> Result<(PathBuf, PathBuf)> {
    let base = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|d| if d.is_absolute() { d } else { source.join(d) })
        .unwrap_or_else(|| source.join("target"));
    let mut cmd;
    let target_dir;
    if a.name == "aarch64" {
        target_dir = base.join("cross-aarch64");
        cmd = Command::new("/usr/bin/cargo");
        cmd.env("RUSTC", "/usr/bin/rustc")
            .env(
                "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER",
                "aarch64-linux-gnu-gcc",
            )
            .env("CC_aarch64_unknown_linux_gnu", "aarch64-linux-gnu-gcc")
            .env("CXX_aarch64_unknown_linux_gnu", "aarch64-linux-gnu-g++")
            .env("AR_aarch64_unknown_linux_gnu", "aarch64-linux-gnu-ar");
    } else {
        target_dir = base.clone();
        cmd = Command::new("cargo");
    }
    cmd.current_dir(source)
        .env("CARGO_TARGET_DIR", &target_dir)
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env_remove("RUSTC_WRAPPER")
        .args([
            "build",
            "--locked",
            "--profile",
            "image",
            "--target",
            a.rust_target,
        ])
        .args([
            "-p",
            "baetyl",
            "--bin",
            "baetyl",
            "-p",
            "baetyl-init",
            "--bin",
            "baetyl-init",
        ]);
    println!("    {}", run::describe(&cmd));
    run.status(&mut cmd)?;
    let dir = target_dir.join(a.rust_target).join("image");
    Ok((dir.join("baetyl"), dir.join("baetyl-init")))
}

/// Modules in load order from `modprobe --show-depends` output (paths relative to the modules dir; built-in
/// ones skipped), appended to `order` without repeats.
pub fn module_order(show_depends: &str, modules_dir: &str, order: &mut Vec<String>) {
    for line in show_depends.lines() {
        let mut f = line.split_whitespace();
        if f.next() != Some("insmod") {
            continue;
        }
        let Some(path) = f.next() else { continue };
        let rel = path
            .strip_prefix(modules_dir)
            .unwrap_or(path)
            .trim_start_matches('/')
            .to_string();
        if !order.contains(&rel) {
            order.push(rel);
        }
    }
}

/// The init configuration baked into the initramfs.
pub fn init_config(hostname: &str, kver: &str, modules: &[String]) -> String {
    let mut s = String::from("# generated by baetyl image build\n");
    s += &format!("hostname: {hostname}\n");
    s += &format!("modules:\n  dir: /lib/modules/{kver}\n  load:\n");
    for m in modules {
        s += &format!("    - {m}\n");
    }
    s += "root: {label: root-a, fstype: squashfs, wait: 20s}\n";
    s += "network:   # QEMU's user networking; a device image for another network overrides baetyl.net.*\n";
    s += "  address: 10.0.2.15/24\n  gateway: 10.0.2.2\n";
    s += &format!("data: {{label: baetyl-data, mountpoint: {DATA_MOUNT}, wait: 10s}}\n");
    s += &format!(
        "master:\n  command: [/bin/baetyl, master, -w, {DATA_MOUNT}, -c, /etc/baetyl/conf.yml]\n  grace: 20s\n"
    );
    s
}

/// The master's configuration in the root filesystem.
pub fn master_config(dev_api: Option<&str>, with_token: bool) -> String {
    let mut s = String::from(
        "# generated by baetyl image build: the master of the image (work dir on the data partition)\n",
    );
    s += "server:\n  address: unix:///run/baetyl/baetyl.sock   # /var/run/baetyl.sock through the /var/run link\n";
    if let Some(addr) = dev_api {
        s += &format!("  tcp: \"{addr}\"   # development image: the API on the network\n");
        if with_token {
            s += "  operator_token_file: /etc/baetyl/operator.token\n";
        }
    }
    s
}

fn sha256(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| ImageError::io(path, e))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(|e| ImageError::io(path, e))?;
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Adds the file `dir/rel` to the initramfs entries as `into/rel`.
fn push_file(dir: &Path, rel: &str, into: &str, mode: u32, out: &mut Vec<Entry>) -> Result<()> {
    let data = read(&dir.join(rel))?;
    out.push(Entry::file(&format!("{into}/{rel}"), mode, data));
    Ok(())
}

/// Copies the tree `from` into `to` (regular files and directories; anything else is refused).
fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).map_err(|e| ImageError::io(to, e))?;
    for (rel, ty) in tree(from)? {
        let (src, dst) = (from.join(&rel), to.join(&rel));
        if ty.is_dir() {
            std::fs::create_dir_all(&dst).map_err(|e| ImageError::io(&dst, e))?;
        } else if ty.is_file() {
            std::fs::copy(&src, &dst).map_err(|e| ImageError::io(&src, e))?;
        } else {
            return Err(ImageError::Input(format!(
                "{}: --app may hold only files and directories (no links or devices)",
                src.display()
            )));
        }
    }
    Ok(())
}

/// An `--app` tree must hold a valid application (checked with the master's own loader).
fn check_app(app: &Path) -> Result<()> {
    let file = app.join("var/db/baetyl/application.yml");
    if !file.is_file() {
        return Err(ImageError::Input(format!(
            "--app {}: no var/db/baetyl/application.yml in it (the tree is copied as the master's work dir)",
            app.display()
        )));
    }
    baetyl_master::config::Application::load(&file)
        .map(|_| ())
        .map_err(|e| ImageError::Input(format!("--app: {e}")))
}

/// The data partition's initial contents: the master's work dir with `app` (a work-dir tree) or the image's
/// default application.
fn stage_data(dir: &Path, app: Option<&Path>) -> Result<()> {
    let _ = std::fs::remove_dir_all(dir);
    if let Some(app) = app {
        check_app(app)?;
        return copy_tree(app, dir);
    }
    write(
        &dir.join("var/db/baetyl/application.yml"),
        include_str!("../../examples/image/application.yml"),
    )?;
    write(
        &dir.join("var/db/baetyl/conf/function-manager/service.yml"),
        include_str!("../../examples/image/conf/function-manager/service.yml"),
    )?;
    for (rel, content) in baetyl_master::default_app::FILES {
        let used = ["conf/hub/", "conf/timer/", "conf/function-sql/"];
        if used.iter().any(|u| rel.contains(u)) {
            write(&dir.join(rel), content)?;
        }
    }
    std::fs::create_dir_all(dir.join("var/db/baetyl/hub-data"))
        .map_err(|e| ImageError::io(dir, e))?;
    Ok(())
}

/// The read-only root's tree.
fn stage_rootfs(dir: &Path, baetyl: &Path, args: &BuildArgs) -> Result<()> {
    let _ = std::fs::remove_dir_all(dir);
    for d in [
        "dev",
        "proc",
        "sys",
        "run",
        "tmp",
        "var/lib/baetyl",
        "etc/baetyl",
    ] {
        let p = dir.join(d);
        std::fs::create_dir_all(&p).map_err(|e| ImageError::io(&p, e))?;
    }
    std::os::unix::fs::symlink("../run", dir.join("var/run"))
        .map_err(|e| ImageError::io(dir, e))?;
    let bin = dir.join("bin/baetyl");
    write(&bin, read(baetyl)?)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| ImageError::io(&bin, e))?;
    write(
        &dir.join("etc/os-release"),
        format!(
            "ID=baetyl\nNAME=baetyl\nPRETTY_NAME=\"baetyl {}\"\nVERSION_ID={}\n",
            env!("CARGO_PKG_VERSION"),
            env!("CARGO_PKG_VERSION")
        ),
    )?;
    write(&dir.join("etc/hostname"), format!("{}\n", args.hostname))?;
    write(
        &dir.join("etc/baetyl/conf.yml"),
        master_config(args.dev_api.as_deref(), args.dev_api_token.is_some()),
    )?;
    if let Some(token) = &args.dev_api_token {
        let t = dir.join("etc/baetyl/operator.token");
        write(&t, read(token)?)?;
        std::fs::set_permissions(&t, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| ImageError::io(&t, e))?;
    }
    Ok(())
}

/// Every entry under `dir`: path relative to it and type, sorted, each directory before what it holds; symlinks
/// are listed, not followed.
pub(crate) fn tree(dir: &Path) -> Result<Vec<(PathBuf, std::fs::FileType)>> {
    let mut out = Vec::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(rel) = pending.pop() {
        let here = dir.join(&rel);
        let mut entries = Vec::new();
        for e in std::fs::read_dir(&here).map_err(|e| ImageError::io(&here, e))? {
            let e = e.map_err(|err| ImageError::io(&here, err))?;
            let ty = e
                .file_type()
                .map_err(|err| ImageError::io(&e.path(), err))?;
            entries.push((rel.join(e.file_name()), ty));
        }
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        pending.extend(
            entries
                .iter()
                .rev()
                .filter(|(_, t)| t.is_dir())
                .map(|(p, _)| p.clone()),
        );
        out.extend(entries);
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Sets the times of `dir` and everything in it (symlinks aside) to `epoch`: mksquashfs, mke2fs -d and mcopy -m
/// copy them.
fn touch_tree(dir: &Path, epoch: u64) -> Result<()> {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(epoch);
    let times = std::fs::FileTimes::new().set_accessed(t).set_modified(t);
    let entries = tree(dir)?;
    let paths = entries
        .iter()
        .filter(|(_, ty)| !ty.is_symlink())
        .map(|(rel, _)| dir.join(rel));
    for p in std::iter::once(dir.to_path_buf()).chain(paths) {
        std::fs::File::open(&p)
            .and_then(|f| f.set_times(times))
            .map_err(|e| ImageError::io(&p, e))?;
    }
    Ok(())
}

/// The paths and facts of a finished build.
pub struct Outputs {
    pub dir: PathBuf,
    pub files: Vec<(String, u64, String)>,
}

pub fn build(args: &BuildArgs) -> Result<Outputs> {
    build_with(&System, args)
}

pub fn build_with(run: &dyn Runner, args: &BuildArgs) -> Result<Outputs> {
    let a = arch(&args.arch)?;
    if args.data_mib < 16 {
        return Err(ImageError::Input(format!(
            "--data-mib {}: the data partition needs at least 16 MiB",
            args.data_mib
        )));
    }
    if let Some(app) = &args.app {
        check_app(app)?;
    }
    let build_binaries = args.binary.is_none() || args.init_binary.is_none();
    check_tools(a, build_binaries)?;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("out").join(a.name));
    let work = out.join("work");
    std::fs::create_dir_all(&work).map_err(|e| ImageError::io(&work, e))?;
    let epoch = args.source_date_epoch;

    step(1, &format!("static binaries for {}", a.name));
    let (baetyl, init) = if build_binaries {
        let source = args.source.clone().or_else(default_source).ok_or_else(|| {
            ImageError::Input(
                "no source tree to build the binaries from: give --source DIR or --binary and --init-binary"
                    .into(),
            )
        })?;
        let (b, i) = cargo_build(run, a, &source)?;
        (
            args.binary.clone().unwrap_or(b),
            args.init_binary.clone().unwrap_or(i),
        )
    } else {
        (
            args.binary.clone().unwrap_or_default(),
            args.init_binary.clone().unwrap_or_default(),
        )
    };
    elf::check_static(&baetyl, a.elf_machine, "--binary (baetyl)")?;
    elf::check_static(&init, a.elf_machine, "--init-binary (baetyl-init)")?;
    println!(
        "    baetyl {}, baetyl-init {}",
        show_size(&baetyl),
        show_size(&init)
    );

    step(
        2,
        &format!(
            "Debian packages for {} (cache {})",
            a.debarch,
            args.cache.display()
        ),
    );
    let kpkg = apt::resolve_kernel(run, a.kernel_meta, a.debarch)?;
    let kernel = apt::fetch(run, &args.cache, &kpkg, a.debarch)?;
    let stub = apt::fetch(run, &args.cache, "systemd-boot-efi", a.debarch)?;
    for p in [&kernel, &stub] {
        println!(
            "    {} {}",
            if p.cached { "cached    " } else { "downloaded" },
            p.deb.display()
        );
    }
    let kroot = &kernel.root;
    let kver = std::fs::read_dir(kroot.join("lib/modules"))
        .map_err(|e| ImageError::io(&kroot.join("lib/modules"), e))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .next()
        .ok_or_else(|| ImageError::Input(format!("{}: no kernel modules", kroot.display())))?;
    let vmlinuz = kroot.join(format!("boot/vmlinuz-{kver}"));
    println!("    kernel {kver}");

    step(3, "kernel modules in dependency order");
    let mdir = kroot.join("lib/modules").join(&kver);
    if !mdir.join("modules.dep").is_file() {
        run.output(Command::new("depmod").arg("-b").arg(kroot).arg(&kver))?;
    }
    let mut order = Vec::new();
    for m in a.modules {
        let dep = run.output(Command::new("modprobe").arg("-d").arg(kroot).args([
            "-S",
            &kver,
            "--show-depends",
            m,
        ]))?;
        module_order(&dep, &mdir.display().to_string(), &mut order);
    }
    println!("    {}", order.join(" "));

    step(4, "initramfs (baetyl-init as /init, modules, init.yml)");
    let mut entries = vec![
        Entry::file("init", 0o755, read(&init)?),
        Entry::dir("dev"),
        Entry {
            path: "dev/console".into(),
            mode: 0o600,
            kind: Kind::Char(5, 1),
        },
    ];
    for d in ["proc", "sys", "run", "tmp"] {
        entries.push(Entry::dir(d));
    }
    for rel in &order {
        push_file(
            &mdir,
            rel,
            &format!("lib/modules/{kver}"),
            0o644,
            &mut entries,
        )?;
    }
    entries.push(Entry::file(
        "etc/baetyl/init.yml",
        0o644,
        init_config(&args.hostname, &kver, &order).into_bytes(),
    ));
    let epoch32 = u32::try_from(epoch).map_err(|_| {
        ImageError::Input(format!(
            "SOURCE_DATE_EPOCH {epoch} does not fit a cpio header"
        ))
    })?;
    let cpio = initramfs::write(&initramfs::with_parents(entries), epoch32)
        .map_err(|e| ImageError::io(&out.join("initramfs.img"), e))?;
    write(&out.join("initramfs.img"), cpio)?;
    write(&out.join("vmlinuz"), read(&vmlinuz)?)?;

    step(5, "read-only root filesystem (squashfs)");
    let rootdir = work.join("rootfs");
    stage_rootfs(&rootdir, &baetyl, args)?;
    touch_tree(&rootdir, epoch)?;
    let squash = out.join("rootfs.squashfs");
    let _ = std::fs::remove_file(&squash);
    run.output(
        Command::new("mksquashfs")
            .arg(&rootdir)
            .arg(&squash)
            .args([
                "-noappend",
                "-quiet",
                "-no-progress",
                "-all-root",
                "-comp",
                "zstd",
            ])
            // sets the filesystem's and every inode's time
            .env("SOURCE_DATE_EPOCH", epoch.to_string()),
    )?;

    step(
        6,
        "unified kernel image (systemd EFI stub + kernel + initramfs + command line)",
    );
    let cmdline = work.join("cmdline");
    write(&cmdline, format!("console={} quiet panic=10", a.console))?;
    let osrel = rootdir.join("etc/os-release");
    let efi = out.join("boot.efi");
    uki::build(
        run,
        a.objcopy,
        &uki::Parts {
            stub: &stub.root.join(a.stub),
            kernel: &out.join("vmlinuz"),
            initrd: &out.join("initramfs.img"),
            cmdline: &cmdline,
            osrel: &osrel,
            epoch: epoch32,
        },
        &efi,
    )?;

    step(
        7,
        "partitions: ESP (FAT) and data (ext4 with the application)",
    );
    let parts = work.join("parts");
    std::fs::create_dir_all(&parts).map_err(|e| ImageError::io(&parts, e))?;
    let efi_len = std::fs::metadata(&efi)
        .map_err(|e| ImageError::io(&efi, e))?
        .len();
    let squash_len = std::fs::metadata(&squash)
        .map_err(|e| ImageError::io(&squash, e))?
        .len();
    let layout = disk::Layout {
        boot_mib: disk::size_mib(efi_len, 100, 48),
        root_mib: disk::size_mib(squash_len, 100, 64),
        data_mib: args.data_mib,
    };
    let espdir = work.join("esp");
    let _ = std::fs::remove_dir_all(&espdir);
    write(&espdir.join("EFI/BOOT").join(a.efi_name), read(&efi)?)?;
    touch_tree(&espdir, epoch)?;
    disk::esp(run, &parts.join("boot.vfat"), layout.boot_mib, &espdir)?;
    let datadir = work.join("data");
    stage_data(&datadir, args.app.as_deref())?;
    touch_tree(&datadir, epoch)?;
    disk::data_ext4(
        run,
        &parts.join("data.ext4"),
        args.data_mib,
        &datadir,
        a.tag,
        epoch,
    )?;
    std::fs::copy(&squash, parts.join("rootfs.squashfs")).map_err(|e| ImageError::io(&parts, e))?;

    step(8, "GPT disk (genimage): boot, root-a, root-b, baetyl-data");
    disk::genimage(
        run,
        &disk::genimage_config(a.tag, &layout),
        &parts,
        &out,
        &work,
    )?;

    let mut files = Vec::new();
    let mut manifest = String::new();
    for name in [
        "vmlinuz",
        "initramfs.img",
        "rootfs.squashfs",
        "boot.efi",
        "disk.img",
    ] {
        let p = out.join(name);
        let len = std::fs::metadata(&p)
            .map_err(|e| ImageError::io(&p, e))?
            .len();
        let sum = sha256(&p)?;
        manifest += &format!("{name} {len} {sum}\n");
        println!(
            "    {:<16} {:>10}  sha256 {}",
            name,
            human_bytes(len),
            &sum[..16]
        );
        files.push((name.to_string(), len, sum));
    }
    write(&out.join("manifest.txt"), manifest)?;
    println!(
        "    disk layout: boot {} MiB, root-a/root-b {} MiB each, data {} MiB",
        layout.boot_mib, layout.root_mib, layout.data_mib
    );
    Ok(Outputs { dir: out, files })
}

fn show_size(p: &Path) -> String {
    std::fs::metadata(p)
        .map(|m| human_bytes(m.len()))
        .unwrap_or_else(|_| "?".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modules_in_order_without_builtins_or_repeats() {
        let dir = "/c/lib/modules/6.1.0-56-arm64";
        let a = "insmod /c/lib/modules/6.1.0-56-arm64/kernel/drivers/virtio/virtio.ko \n\
                 insmod /c/lib/modules/6.1.0-56-arm64/kernel/drivers/virtio/virtio_pci.ko \n";
        let b = "builtin crc32c\ninsmod /c/lib/modules/6.1.0-56-arm64/kernel/drivers/virtio/virtio.ko \n\
                 insmod /c/lib/modules/6.1.0-56-arm64/kernel/drivers/block/virtio_blk.ko \n";
        let mut order = Vec::new();
        module_order(a, dir, &mut order);
        module_order(b, dir, &mut order);
        assert_eq!(
            order,
            [
                "kernel/drivers/virtio/virtio.ko",
                "kernel/drivers/virtio/virtio_pci.ko",
                "kernel/drivers/block/virtio_blk.ko"
            ]
        );
    }

    #[test]
    fn configs_name_the_root_data_and_master() {
        let c = init_config("dev1", "6.1.0", &["kernel/fs/squashfs/squashfs.ko".into()]);
        assert!(c.contains("root: {label: root-a, fstype: squashfs"));
        assert!(c.contains("data: {label: baetyl-data, mountpoint: /var/lib/baetyl"));
        assert!(c.contains(
            "command: [/bin/baetyl, master, -w, /var/lib/baetyl, -c, /etc/baetyl/conf.yml]"
        ));
        assert!(c.contains("    - kernel/fs/squashfs/squashfs.ko"));
        assert!(!master_config(None, false).contains("tcp"));
        assert!(master_config(None, false).contains("address: unix:///run/baetyl/baetyl.sock"));
        let dev = master_config(Some("0.0.0.0:9990"), true);
        assert!(dev.contains("tcp: \"0.0.0.0:9990\""));
        assert!(dev.contains("operator_token_file: /etc/baetyl/operator.token"));
        assert!(arch("arm64").is_ok());
        assert!(
            arch("riscv64")
                .unwrap_err()
                .to_string()
                .contains("x86_64 or aarch64")
        );
    }

    #[test]
    fn data_partition_holds_the_image_application() {
        let d = tempfile::tempdir().unwrap();
        stage_data(d.path(), None).unwrap();
        let app = std::fs::read_to_string(d.path().join("var/db/baetyl/application.yml")).unwrap();
        assert!(app.contains("hub-data"));
        assert!(
            !app.contains("python"),
            "no Python interpreter in the image"
        );
        for f in ["hub", "timer", "function-sql", "function-manager"] {
            assert!(
                d.path()
                    .join(format!("var/db/baetyl/conf/{f}/service.yml"))
                    .is_file(),
                "{f}"
            );
        }
        assert!(!d.path().join("var/db/baetyl/conf/function-python").exists());
    }

    #[test]
    fn tree_lists_parents_first_and_does_not_follow_links() {
        let d = tempfile::tempdir().unwrap();
        write(&d.path().join("b/c/f"), "x").unwrap();
        write(&d.path().join("a"), "y").unwrap();
        std::os::unix::fs::symlink("/", d.path().join("b/l")).unwrap();
        let t: Vec<(String, bool)> = tree(d.path())
            .unwrap()
            .into_iter()
            .map(|(p, ty)| (p.display().to_string(), ty.is_symlink()))
            .collect();
        let want = [
            ("a", false),
            ("b", false),
            ("b/c", false),
            ("b/c/f", false),
            ("b/l", true),
        ];
        assert_eq!(t, want.map(|(p, l)| (p.to_string(), l)));
        touch_tree(d.path(), 1_700_000_000).unwrap();
        let m = std::fs::metadata(d.path().join("b/c/f"))
            .unwrap()
            .modified()
            .unwrap();
        assert_eq!(
            m,
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000)
        );
    }

    #[test]
    fn a_given_application_is_validated_and_copied() {
        let app = tempfile::tempdir().unwrap();
        let out = tempfile::tempdir().unwrap();
        let err = stage_data(out.path(), Some(app.path()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("no var/db/baetyl/application.yml"), "{err}");

        let file = app.path().join("var/db/baetyl/application.yml");
        write(
            &file,
            "version: v1\nservices:\n  a: {image: baetyl-hub, depends_on: [b]}\n",
        )
        .unwrap();
        let err = stage_data(out.path(), Some(app.path()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("depends on `b`"), "{err}");

        write(
            &file,
            "version: v1\nservices:\n  hub: {image: baetyl-hub}\n",
        )
        .unwrap();
        write(
            &app.path().join("var/db/baetyl/conf/hub/service.yml"),
            "listen: [tcp://0.0.0.0:1883]\n",
        )
        .unwrap();
        stage_data(out.path(), Some(app.path())).unwrap();
        assert!(
            out.path()
                .join("var/db/baetyl/conf/hub/service.yml")
                .is_file()
        );
        assert!(
            !out.path().join("var/db/baetyl/conf/timer").exists(),
            "only the given tree"
        );
    }
}
