//! `baetyl image oci`: OCI image layouts of the services, with no registry and no container tool.
//!
//! One layer holds the static `baetyl` binary (and the empty directories a container's mounts need); every
//! service image runs a role of that binary, so the hub, function manager, remote, timer, SQL runtime and
//! cloud agent images share it and a store holds it once. The Python runtime image adds a second layer with Debian's
//! python3 for the target and grpcio ([`python`]). Image names follow Baetyl v1 (`baetyl-hub:latest`, ...), so
//! an application.yml runs unchanged on the native and the containerd engine.
//!
//! Everything is deterministic ([`layer`]): the same binary and packages give the same digests. [`layout`]
//! writes the layout directory and validates one.

pub mod layer;
pub mod layout;
pub mod python;

use std::path::{Path, PathBuf};

use baetyl_sdk::config::human_bytes;
use oci_spec::image::{Config, ConfigBuilder};

use crate::arch::{Arch, arch};
use crate::binaries::{cargo_build, default_source};
use crate::elf;
use crate::error::{ImageError, Result};
use crate::run::{Runner, System, require};
use layer::LayerBuilder;
use layout::{ImageDef, LayoutWriter, Written};

/// The tag of every image (v1's examples name `:latest`).
pub const TAG: &str = "latest";

/// A service image: its v1 name and the role of the `baetyl` binary it runs.
pub struct ServiceImage {
    pub name: &'static str,
    pub role: &'static str,
    /// Carries the Python layer.
    pub python: bool,
}

/// The images, in the order of the layout's index.
pub const IMAGES: &[ServiceImage] = &[
    ServiceImage {
        name: "baetyl-hub",
        role: "hub",
        python: false,
    },
    ServiceImage {
        name: "baetyl-function-manager",
        role: "function",
        python: false,
    },
    ServiceImage {
        name: "baetyl-function-sql",
        role: "runtime-sql",
        python: false,
    },
    ServiceImage {
        name: "baetyl-function-python3",
        role: "runtime-python",
        python: true,
    },
    ServiceImage {
        name: "baetyl-remote-mqtt",
        role: "remote",
        python: false,
    },
    ServiceImage {
        name: "baetyl-timer",
        role: "timer",
        python: false,
    },
    // The cloud agent of a cloud-managed device (the bootstrap application's `image: baetyl-agent`).
    ServiceImage {
        name: "baetyl-agent",
        role: "agent",
        python: false,
    },
];

/// Where the binary sits in every image.
pub const BINARY: &str = "/bin/baetyl";

const PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(clap::Args, Debug, Clone)]
pub struct OciArgs {
    /// Target architecture: x86_64 or aarch64.
    #[arg(long, default_value = "x86_64")]
    pub arch: String,
    /// The layout directory (default: out/<arch>/oci under the current directory).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// A static `baetyl` binary for the target; without it, it is built from --source with cargo.
    #[arg(long)]
    pub binary: Option<PathBuf>,
    /// The baetyl source tree to build the binary from (default: the tree this binary was built from).
    #[arg(long)]
    pub source: Option<PathBuf>,
    /// The package cache (apt downloads, their unpacked trees and the wheels), reused by later builds.
    #[arg(
        long,
        env = "BAETYL_IMAGE_CACHE",
        default_value = "/var/cache/baetyl-image"
    )]
    pub cache: PathBuf,
    /// Leave out the Python runtime image (no Debian python3, no download from PyPI).
    #[arg(long)]
    pub no_python: bool,
    /// The pip that downloads grpcio for the target (default: .venv/bin/pip of the source tree, else pip3).
    #[arg(long)]
    pub pip: Option<PathBuf>,
    /// Timestamp of every file and of the images' creation (reproducible builds).
    #[arg(long, env = "SOURCE_DATE_EPOCH", default_value_t = 1_700_000_000)]
    pub source_date_epoch: u64,
}

/// The image configuration of a role: `/bin/baetyl <role>` as entrypoint (a service's `command` replaces
/// nothing of it, its `entrypoint` replaces it whole, as with native).
pub fn image_config(img: &ServiceImage) -> Result<Config> {
    let mut env = vec![PATH.to_string()];
    if img.python {
        // The root is read-only in a container: no byte-code caches.
        env.push("PYTHONDONTWRITEBYTECODE=1".to_string());
    }
    ConfigBuilder::default()
        .entrypoint(vec![BINARY.to_string(), img.role.to_string()])
        .env(env)
        .working_dir("/")
        .build()
        .map_err(|e| ImageError::Input(format!("{} config: {e}", img.name)))
}

/// The layer every image starts from: the binary and the mount points.
pub fn base_layer(binary: &Path) -> Result<LayerBuilder> {
    let mut b = LayerBuilder::new();
    b.file(BINARY, 0o755, binary)?;
    for d in ["dev", "proc", "sys", "run", "etc", "var", "usr/bin"] {
        b.dir(d, 0o755)?;
    }
    b.dir("tmp", 0o1777)?;
    Ok(b)
}

fn check_tools(python: bool, build_binary: bool, a: &Arch) -> Result<()> {
    let mut tools = Vec::new();
    if python {
        tools.extend([
            ("apt-get", "apt"),
            ("apt-cache", "apt"),
            ("dpkg", "dpkg"),
            ("python3", "python3"),
        ]);
    }
    if build_binary {
        tools.push(if a.name == "aarch64" {
            (
                "/usr/bin/cargo",
                "cargo-web rustc-web libstd-rust-web-dev:arm64",
            )
        } else {
            ("cargo", "rustup or cargo-web")
        });
    }
    require(&tools)
}

pub fn build(args: &OciArgs) -> Result<Vec<Written>> {
    build_with(&System, args)
}

pub fn build_with(run: &dyn Runner, args: &OciArgs) -> Result<Vec<Written>> {
    let a = arch(&args.arch)?;
    check_tools(!args.no_python, args.binary.is_none(), a)?;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("out").join(a.name).join("oci"));
    let source = args.source.clone().or_else(default_source);
    println!("==> [1/2] static baetyl binary for {}", a.name);
    let binary = match &args.binary {
        Some(b) => b.clone(),
        None => {
            let source = source.as_deref().ok_or_else(|| {
                ImageError::Input(
                    "no source tree to build the binary from: give --source DIR or --binary".into(),
                )
            })?;
            cargo_build(run, a, source)?.0
        }
    };
    elf::check_static(&binary, a.elf_machine, "--binary (baetyl)")?;
    let pip = (!args.no_python).then(|| python::find_pip(args.pip.as_deref(), source.as_deref()));
    println!("==> [2/2] OCI layout {}", out.display());
    let inputs = LayoutInputs {
        binary: &binary,
        cache: &args.cache,
        pip: pip.as_deref(),
        epoch: args.source_date_epoch,
    };
    write_layouts(run, a, &inputs, &out)
}

/// What the layout of the service images is made from.
#[derive(Clone, Copy)]
pub struct LayoutInputs<'a> {
    /// The static `baetyl` binary for the target (checked by the caller).
    pub binary: &'a Path,
    /// The package cache (Debian's python3, the wheels).
    pub cache: &'a Path,
    /// The pip that downloads grpcio; None: no Python runtime image.
    pub pip: Option<&'a Path>,
    /// SOURCE_DATE_EPOCH.
    pub epoch: u64,
}

/// Writes the layout of the service images into `out` (the Python runtime image when `inputs.pip` is given)
/// and validates it.
pub fn write_layouts(
    run: &dyn Runner,
    a: &Arch,
    inputs: &LayoutInputs<'_>,
    out: &Path,
) -> Result<Vec<Written>> {
    let LayoutInputs {
        binary,
        cache,
        pip,
        epoch,
    } = *inputs;
    let base = base_layer(binary)?.finish(epoch)?;
    println!(
        "    baetyl layer {} ({} uncompressed)",
        human_bytes(base.blob.len() as u64),
        human_bytes(base.tar_size)
    );
    let py = match pip {
        None => None,
        Some(pip) => {
            println!(
                "    Python layer: Debian's python3 for {} and grpcio (cache {})",
                a.debarch,
                cache.display()
            );
            let mut b = LayerBuilder::new();
            python::add(run, cache, a, pip, &mut b)?;
            let l = b.finish(epoch)?;
            println!(
                "    python layer {} ({} uncompressed)",
                human_bytes(l.blob.len() as u64),
                human_bytes(l.tar_size)
            );
            Some(l)
        }
    };
    let created = humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(epoch),
    )
    .to_string();
    let mut w = LayoutWriter::create(out)?;
    for img in IMAGES {
        let layers = match (&py, img.python) {
            (Some(p), true) => vec![&base, p],
            (None, true) => continue,
            _ => vec![&base],
        };
        let written = w.add(ImageDef {
            name: format!("{}:{TAG}", img.name),
            debarch: a.debarch,
            layers,
            config: image_config(img)?,
            created: created.clone(),
        })?;
        println!(
            "    {:<32} {}  {}",
            written.name,
            &written.manifest[..19.min(written.manifest.len())],
            human_bytes(written.size)
        );
    }
    let written = w.finish()?;
    layout::validate(out)?;
    println!(
        "    layout {} in {}",
        human_bytes(dir_size(&out.join("blobs"))),
        out.display()
    );
    Ok(written)
}

fn dir_size(dir: &Path) -> u64 {
    crate::fs::tree(dir)
        .map(|t| {
            t.iter()
                .filter(|(_, ty)| ty.is_file())
                .filter_map(|(rel, _)| std::fs::metadata(dir.join(rel)).ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_role_image_has_the_binary_as_entrypoint() {
        for img in IMAGES {
            let c = image_config(img).unwrap();
            assert_eq!(
                c.entrypoint().as_deref(),
                Some(&[BINARY.to_string(), img.role.to_string()][..])
            );
        }
        assert_eq!(IMAGES.iter().filter(|i| i.python).count(), 1);
    }

    #[test]
    fn the_base_layer_has_the_binary_and_mount_points() {
        let d = tempfile::tempdir().unwrap();
        let bin = d.path().join("baetyl");
        std::fs::write(&bin, "ELF").unwrap();
        let paths = base_layer(&bin).unwrap().paths();
        for p in ["bin/baetyl", "proc", "dev", "tmp", "etc"] {
            assert!(paths.iter().any(|x| x == p), "{p} in {paths:?}");
        }
    }
}
