//! The build, step by step. A [`Build`] holds what every step needs (the tools' runner, the arguments, the
//! architecture, the output and work directories) and has one method per step; [`Build::build`] checks the
//! inputs and tools once, then calls the steps in order and prints progress (`==> [n/8] ...`) and each output's
//! size and SHA-256.

use std::path::{Path, PathBuf};
use std::process::Command;

use baetyl_sdk::config::human_bytes;

use crate::apt::{self, Unpacked};
use crate::arch::{Arch, arch};
use crate::args::{BuildArgs, Engine};
use crate::binaries::{cargo_build, default_source};
use crate::bundle::{self, BundleKey};
use crate::configs::{OCI_LAYOUT, init_config};
use crate::data::check_app;
use crate::debbins;
use crate::disk::{self, Layout};
use crate::elf;
use crate::error::{ImageError, Result};
use crate::fs::{read, sha256, touch_tree, write};
use crate::initramfs::{self, Entry, Kind};
use crate::modules::module_order;
use crate::oci::LayoutInputs;
use crate::oci::python::find_pip;
use crate::rootfs::stage_rootfs;
use crate::run::{Runner, System, require};
use crate::uki;

/// The outputs, in the order of the manifest.
const OUTPUTS: [&str; 6] = [
    "vmlinuz",
    "initramfs.img",
    "rootfs.squashfs",
    "boot.efi",
    "disk.img",
    "os-update.bundle",
];

/// mksquashfs's options for the root (also for a root made from it elsewhere, as the boot tests' broken OS).
pub const SQUASHFS_OPTIONS: [&str; 6] = [
    "-noappend",
    "-quiet",
    "-no-progress",
    "-all-root",
    "-comp",
    "zstd",
];

/// The paths and facts of a finished build.
pub struct Outputs {
    pub dir: PathBuf,
    /// Name, size and SHA-256 of each output.
    pub files: Vec<(String, u64, String)>,
}

/// The static binaries that go into the image.
pub struct Binaries {
    pub baetyl: PathBuf,
    pub init: PathBuf,
}

/// The kernel and systemd's EFI stub, unpacked from Debian's packages.
pub struct Packages {
    pub kernel: Unpacked,
    pub stub: Unpacked,
    /// The kernel's release (its modules directory's name).
    pub kver: String,
}

impl Packages {
    fn modules_dir(&self) -> PathBuf {
        self.kernel.root.join("lib/modules").join(&self.kver)
    }
}

/// One image build: [`Build::new`] checks the inputs and the tools, [`Build::build`] runs the steps.
pub struct Build<'a> {
    run: &'a dyn Runner,
    args: &'a BuildArgs,
    arch: &'static Arch,
    /// `--out`: the outputs and `manifest.txt`.
    out: PathBuf,
    /// `<out>/work`: staged trees and partition images.
    work: PathBuf,
    /// SOURCE_DATE_EPOCH as the 32 bits cpio headers and the PE time stamp hold.
    epoch32: u32,
    /// The key that signs `os-update.bundle` (its public half is pinned in the root).
    key: BundleKey,
}

pub fn build(args: &BuildArgs) -> Result<Outputs> {
    build_with(&System, args)
}

pub fn build_with(run: &dyn Runner, args: &BuildArgs) -> Result<Outputs> {
    Build::new(run, args)?.build()
}

fn step(n: u32, what: &str) {
    println!("==> [{n}/9] {what}");
}

fn show_size(p: &Path) -> String {
    std::fs::metadata(p)
        .map(|m| human_bytes(m.len()))
        .unwrap_or_else(|_| "?".into())
}

fn file_len(p: &Path) -> Result<u64> {
    Ok(std::fs::metadata(p)
        .map_err(|e| ImageError::io(p, e))?
        .len())
}

/// The tools a build needs, with the Debian package of each.
fn check_tools(a: &Arch, build_binaries: bool, containerd: bool) -> Result<()> {
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
    if containerd {
        // The Python runtime image: python3 unpacks the grpcio wheel.
        tools.push(("python3", "python3"));
    }
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
    require(&tools)
}

/// Adds the file `dir/rel` to the initramfs entries as `into/rel`.
fn push_file(dir: &Path, rel: &str, into: &str, mode: u32, out: &mut Vec<Entry>) -> Result<()> {
    let data = read(&dir.join(rel))?;
    out.push(Entry::file(&format!("{into}/{rel}"), mode, data));
    Ok(())
}

impl<'a> Build<'a> {
    /// Checks the arguments (architecture, data size, `--app`, the time stamp) and that the tools are installed,
    /// and makes the output's work directory.
    pub fn new(run: &'a dyn Runner, args: &'a BuildArgs) -> Result<Self> {
        let a = arch(&args.arch)?;
        if let Some(board) = args.board
            && a.name != "aarch64"
        {
            return Err(ImageError::Input(format!(
                "--board {}: the Raspberry Pi card is an aarch64 image: add --arch aarch64",
                board.spec().name
            )));
        }
        if args.data_mib() < 16 {
            return Err(ImageError::Input(format!(
                "--data-mib {}: the data partition needs at least 16 MiB",
                args.data_mib()
            )));
        }
        if let Some(app) = &args.app {
            check_app(app)?;
        }
        args.cloud.fleet()?;
        let epoch = args.source_date_epoch;
        let epoch32 = u32::try_from(epoch).map_err(|_| {
            ImageError::Input(format!(
                "SOURCE_DATE_EPOCH {epoch} does not fit a cpio header"
            ))
        })?;
        check_tools(
            a,
            args.binary.is_none() || args.init_binary.is_none(),
            args.engine == Engine::Containerd,
        )?;
        let out = args
            .out
            .clone()
            .unwrap_or_else(|| PathBuf::from("out").join(a.name));
        let work = out.join("work");
        std::fs::create_dir_all(&work).map_err(|e| ImageError::io(&work, e))?;
        let key = BundleKey::load_or_create(
            &args
                .sign_key
                .clone()
                .unwrap_or_else(|| out.join(bundle::DEFAULT_KEY)),
        )?;
        if key.created {
            println!(
                "    made the OS update signing key {} (0600): keep it, every later update must be signed with it",
                key.path.display()
            );
        }
        if args.sign_key.is_none() {
            println!(
                "    warning: no --sign-key: OS updates are signed with {}, beside the outputs (development only)",
                key.path.display()
            );
        }
        Ok(Build {
            run,
            args,
            arch: a,
            out,
            work,
            epoch32,
            key,
        })
    }

    /// Every step in order; the outputs' names, sizes and checksums.
    pub fn build(&self) -> Result<Outputs> {
        let a = self.arch;
        step(1, &format!("static binaries for {}", a.name));
        let bins = self.binaries()?;
        step(
            2,
            &format!(
                "Debian packages for {} (cache {})",
                a.debarch,
                self.args.cache.display()
            ),
        );
        let pkgs = self.packages()?;
        if let Some(board) = self.args.board {
            // Before anything is built: a kernel without the board's device tree cannot make its card.
            crate::rpi::device_trees(board.spec(), &pkgs.kernel.root, &pkgs.kver)?;
        }
        step(3, "kernel modules in dependency order");
        let modules = self.modules(&pkgs)?;
        step(4, "initramfs (baetyl-init as /init, modules, init.yml)");
        self.initramfs(&bins, &pkgs, &modules)?;
        step(
            5,
            &format!(
                "read-only root filesystem (squashfs, with Debian's e2fsck{})",
                if self.containerd() {
                    ", containerd, runc and the services' OCI images"
                } else {
                    ""
                }
            ),
        );
        let squash = self.rootfs(&bins)?;
        step(
            6,
            "unified kernel image (systemd EFI stub + kernel + initramfs + command line)",
        );
        let [efi, efi_b] = self.uki(&pkgs)?;
        step(
            7,
            "partitions: ESP (FAT, systemd-boot) and data (ext4 with the application)",
        );
        let layout = Layout {
            // Two UKIs (the running slot's and, during an OS update, the new one's), 50 % spare each.
            boot_mib: disk::size_mib(2 * file_len(&efi)?, 50, 48),
            root_mib: disk::size_mib(file_len(&squash)?, 100, 64),
            data_mib: self.args.data_mib(),
        };
        self.esp(&pkgs, &efi, &layout)?;
        self.data_partition()?;
        step(8, "GPT disk (genimage): boot, root-a, root-b, baetyl-data");
        self.disk(&squash, &layout)?;
        step(
            9,
            "OS update bundle (signed manifest, each slot's UKI, the root)",
        );
        self.bundle(&efi, &efi_b, &squash)?;
        if let Some(board) = self.args.board {
            println!(
                "==> {} SD card (genimage, image/genimage/rpi.cfg) and its block map",
                board.spec().title
            );
            self.card(board, &pkgs, &squash)?;
        }
        self.manifest(&layout)
    }

    /// A containerd image (`--engine containerd`).
    fn containerd(&self) -> bool {
        self.args.engine == Engine::Containerd
    }

    /// The modules init loads: the architecture's, and overlay for containerd's overlayfs snapshotter.
    fn module_names(&self) -> Vec<&'static str> {
        let mut m = self.arch.modules.to_vec();
        if self.containerd() {
            m.push("overlay");
        }
        if let Some(board) = self.args.board {
            m.extend_from_slice(board.spec().modules);
        }
        m
    }

    fn epoch(&self) -> u64 {
        u64::from(self.epoch32)
    }

    /// Where the partition images are made (genimage's input path).
    fn parts(&self) -> PathBuf {
        self.work.join("parts")
    }

    /// Step 1: the given static binaries, or ones built from the source tree with cargo; both checked to be
    /// static executables for the target.
    pub fn binaries(&self) -> Result<Binaries> {
        let args = self.args;
        let (baetyl, init) = if args.binary.is_none() || args.init_binary.is_none() {
            let source = args.source.clone().or_else(default_source).ok_or_else(|| {
                ImageError::Input(
                    "no source tree to build the binaries from: give --source DIR or --binary and --init-binary"
                        .into(),
                )
            })?;
            let (b, i) = cargo_build(self.run, self.arch, &source)?;
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
        elf::check_static(&baetyl, self.arch.elf_machine, "--binary (baetyl)")?;
        elf::check_static(&init, self.arch.elf_machine, "--init-binary (baetyl-init)")?;
        println!(
            "    baetyl {}, baetyl-init {}",
            show_size(&baetyl),
            show_size(&init)
        );
        Ok(Binaries { baetyl, init })
    }

    /// Step 2: Debian's kernel and systemd's EFI stub for the target, from the package cache or apt.
    pub fn packages(&self) -> Result<Packages> {
        let (run, a, cache) = (self.run, self.arch, &self.args.cache);
        let kpkg = apt::resolve_kernel(run, a.kernel_meta, a.debarch)?;
        let kernel = apt::fetch(run, cache, &kpkg, a.debarch)?;
        let stub = apt::fetch(run, cache, "systemd-boot-efi", a.debarch)?;
        for p in [&kernel, &stub] {
            println!(
                "    {} {}",
                if p.cached { "cached    " } else { "downloaded" },
                p.deb.display()
            );
        }
        let modules = kernel.root.join("lib/modules");
        let kver = std::fs::read_dir(&modules)
            .map_err(|e| ImageError::io(&modules, e))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .next()
            .ok_or_else(|| {
                ImageError::Input(format!("{}: no kernel modules", kernel.root.display()))
            })?;
        println!("    kernel {kver}");
        Ok(Packages { kernel, stub, kver })
    }

    /// Step 3: the modules init loads and their dependencies, in load order (paths under the modules dir).
    pub fn modules(&self, pkgs: &Packages) -> Result<Vec<String>> {
        let (kroot, kver) = (&pkgs.kernel.root, &pkgs.kver);
        let mdir = pkgs.modules_dir();
        if !mdir.join("modules.dep").is_file() {
            self.run
                .output(Command::new("depmod").arg("-b").arg(kroot).arg(kver))?;
        }
        let mut order = Vec::new();
        for m in self.module_names() {
            let dep = self
                .run
                .output(Command::new("modprobe").arg("-d").arg(kroot).args([
                    "-S",
                    kver,
                    "--show-depends",
                    m,
                ]))?;
            module_order(&dep, &mdir.display().to_string(), &mut order);
        }
        println!("    {}", order.join(" "));
        Ok(order)
    }

    /// Step 4: `initramfs.img` (`baetyl-init` as `/init`, /dev/console, the modules, `init.yml`) and `vmlinuz`.
    pub fn initramfs(&self, bins: &Binaries, pkgs: &Packages, order: &[String]) -> Result<()> {
        let kver = &pkgs.kver;
        let mut entries = vec![
            Entry::file("init", 0o755, read(&bins.init)?),
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
        let mdir = pkgs.modules_dir();
        for rel in order {
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
            init_config(&self.args.hostname, kver, order).into_bytes(),
        ));
        let img = self.out.join("initramfs.img");
        let cpio = initramfs::write(&initramfs::with_parents(entries), self.epoch32)
            .map_err(|e| ImageError::io(&img, e))?;
        write(&img, cpio)?;
        let vmlinuz = pkgs.kernel.root.join(format!("boot/vmlinuz-{kver}"));
        write(&self.out.join("vmlinuz"), read(&vmlinuz)?)
    }

    /// Step 5: `rootfs.squashfs`, the read-only root. Returns its path.
    pub fn rootfs(&self, bins: &Binaries) -> Result<PathBuf> {
        let rootdir = self.work.join("rootfs");
        stage_rootfs(&rootdir, &bins.baetyl, self.args)?;
        // The key OS updates must be signed with (the master reads it there).
        write(
            &rootdir.join(baetyl_sdk::os::UPDATE_KEY.trim_start_matches('/')),
            self.key.public_text(),
        )?;
        let mut sets = vec![&debbins::E2FSCK];
        if self.containerd() {
            sets.push(&debbins::CONTAINERD);
        }
        let (items, bytes) =
            debbins::add_to_root(self.run, &self.args.cache, self.arch, &sets, &rootdir)?;
        let what: Vec<&str> = sets.iter().map(|s| s.what).collect();
        println!(
            "    {}: {} files and links from Debian, {}",
            what.join("; "),
            items.len(),
            human_bytes(bytes)
        );
        if self.containerd() {
            // The services' OCI images, from the static binary of step 1 (not built again).
            let source = self.args.source.clone().or_else(default_source);
            let pip = find_pip(self.args.pip.as_deref(), source.as_deref());
            let inputs = LayoutInputs {
                binary: &bins.baetyl,
                cache: &self.args.cache,
                pip: Some(&pip),
                epoch: self.epoch(),
            };
            let layout = rootdir.join(OCI_LAYOUT.trim_start_matches('/'));
            crate::oci::write_layouts(self.run, self.arch, &inputs, &layout)?;
        }
        touch_tree(&rootdir, self.epoch())?;
        let squash = self.out.join("rootfs.squashfs");
        let _ = std::fs::remove_file(&squash);
        self.run.output(
            Command::new("mksquashfs")
                .arg(&rootdir)
                .arg(&squash)
                .args(SQUASHFS_OPTIONS)
                // sets the filesystem's and every inode's time
                .env("SOURCE_DATE_EPOCH", self.epoch().to_string()),
        )?;
        Ok(squash)
    }

    /// Step 6: each slot's unified kernel image: `boot.efi` (slot a, the disk's) and `work/boot-b.efi` (for the
    /// update bundle), the same but for the root partition their command lines name. Their os-release names
    /// no version, so systemd-boot orders them by file name alone (newest generation first).
    pub fn uki(&self, pkgs: &Packages) -> Result<[PathBuf; 2]> {
        let osrel = self.work.join("uki-os-release");
        write(
            &osrel,
            format!(
                "ID=baetyl\nNAME=baetyl\nPRETTY_NAME=\"baetyl {}\"\n",
                env!("CARGO_PKG_VERSION")
            ),
        )?;
        let mut out = Vec::new();
        for slot in baetyl_sdk::os::SLOTS {
            let cmdline = self.work.join(format!("cmdline-{slot}"));
            write(
                &cmdline,
                format!(
                    "console={} quiet panic=10 baetyl.root=root-{slot}",
                    self.arch.console
                ),
            )?;
            let efi = if slot == 'a' {
                self.out.join("boot.efi")
            } else {
                self.work.join(format!("boot-{slot}.efi"))
            };
            uki::build(
                self.run,
                self.arch.objcopy,
                &uki::Parts {
                    stub: &pkgs.stub.root.join(self.arch.stub),
                    kernel: &self.out.join("vmlinuz"),
                    initrd: &self.out.join("initramfs.img"),
                    cmdline: &cmdline,
                    osrel: &osrel,
                    epoch: self.epoch32,
                },
                &efi,
            )?;
            out.push(efi);
        }
        let [a, b]: [PathBuf; 2] = out
            .try_into()
            .map_err(|_| ImageError::Input("two slots, two UKIs".into()))?;
        Ok([a, b])
    }

    /// Step 7a: the ESP's image (`boot.vfat`): systemd-boot at the removable-media path, its `loader.conf`, and
    /// slot a's UKI as the first boot entry (blessed: no tries counter).
    pub fn esp(&self, pkgs: &Packages, efi: &Path, layout: &Layout) -> Result<()> {
        let parts = self.parts();
        std::fs::create_dir_all(&parts).map_err(|e| ImageError::io(&parts, e))?;
        let espdir = self.work.join("esp");
        let _ = std::fs::remove_dir_all(&espdir);
        write(
            &espdir.join("EFI/BOOT").join(self.arch.efi_name),
            read(&pkgs.stub.root.join(self.arch.loader))?,
        )?;
        write(&espdir.join("loader/loader.conf"), disk::LOADER_CONF)?;
        let entry = baetyl_sdk::os::BootEntry {
            generation: 1,
            slot: 'a',
            tries_left: None,
            tries_done: None,
        };
        write(
            &espdir.join("EFI/Linux").join(entry.file_name()),
            read(efi)?,
        )?;
        touch_tree(&espdir, self.epoch())?;
        disk::esp(self.run, &parts.join("boot.vfat"), layout.boot_mib, &espdir)
    }

    /// Step 7b: the data partition's image (`data.ext4`) with the application.
    pub fn data_partition(&self) -> Result<()> {
        let datadir = self.work.join("data");
        crate::cloud::stage_data(&datadir, self.args)?;
        touch_tree(&datadir, self.epoch())?;
        disk::data_ext4(
            self.run,
            &self.parts().join("data.ext4"),
            self.args.data_mib(),
            &datadir,
            self.arch.tag,
            self.epoch(),
        )
    }

    /// Step 8: `disk.img`, laid out by genimage from the partition images and the squashfs.
    pub fn disk(&self, squash: &Path, layout: &Layout) -> Result<()> {
        let parts = self.parts();
        std::fs::copy(squash, parts.join("rootfs.squashfs"))
            .map_err(|e| ImageError::io(&parts, e))?;
        disk::genimage(
            self.run,
            &disk::genimage_env(self.arch.tag, layout),
            &parts,
            &self.out,
            &self.work,
        )
    }

    /// Step 9: `os-update.bundle`, signed with the build's key.
    pub fn bundle(&self, efi_a: &Path, efi_b: &Path, squash: &Path) -> Result<()> {
        use baetyl_sdk::os_bundle::{ROOTFS, UKI_A, UKI_B};
        let payloads = [(UKI_A, efi_a), (UKI_B, efi_b), (ROOTFS, squash)];
        let m = bundle::manifest(self.arch.name, env!("CARGO_PKG_VERSION"), &payloads)?;
        let out = self.out.join("os-update.bundle");
        let len = bundle::write(&out, &self.key.key, &m, &payloads)?;
        println!(
            "    os-update.bundle {} (build {}), signed by {}",
            human_bytes(len),
            m.build,
            self.key.public()
        );
        Ok(())
    }

    /// With `--board`: `sdcard.img` and `sdcard.img.bmap` from this build's kernel, initramfs, root and data
    /// partition ([`crate::rpi`]).
    pub fn card(&self, board: crate::rpi::Board, pkgs: &Packages, squash: &Path) -> Result<()> {
        let inputs = crate::rpi::CardInputs {
            board,
            kernel_root: &pkgs.kernel.root,
            kver: &pkgs.kver,
            vmlinuz: &self.out.join("vmlinuz"),
            initramfs: &self.out.join("initramfs.img"),
            squashfs: squash,
            data: &self.parts().join("data.ext4"),
            data_mib: self.args.data_mib(),
            cache: &self.args.cache,
            epoch: self.epoch(),
        };
        crate::rpi::card(self.run, &inputs, &self.work, &self.out).map(|_| ())
    }

    /// Last: `manifest.txt` (name, size and SHA-256 of each output), printed too, with the disk's layout.
    pub fn manifest(&self, layout: &Layout) -> Result<Outputs> {
        let mut files = Vec::new();
        let mut manifest = String::new();
        let card: &[&str] = if self.args.board.is_some() {
            &crate::rpi::OUTPUTS
        } else {
            &[]
        };
        for name in OUTPUTS.iter().chain(card) {
            let p = self.out.join(name);
            let len = file_len(&p)?;
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
        write(&self.out.join("manifest.txt"), manifest)?;
        println!(
            "    disk layout: boot {} MiB, root-a/root-b {} MiB each, data {} MiB",
            layout.boot_mib, layout.root_mib, layout.data_mib
        );
        Ok(Outputs {
            dir: self.out.clone(),
            files,
        })
    }
}
