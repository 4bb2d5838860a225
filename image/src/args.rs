//! The command line of `baetyl image`: what to build, for which architecture, from which binaries and
//! application, and where.

use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct ImageArgs {
    #[command(subcommand)]
    pub command: ImageCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum ImageCommand {
    /// Build the kernel + initramfs, the unified kernel image, the squashfs root and the GPT disk image.
    // Boxed: the build's arguments are much larger than the other commands'.
    Build(Box<BuildArgs>),
    /// Build the OCI image layout of the services (no registry, no container tool).
    Oci(crate::oci::OciArgs),
    /// Make a built disk image cloud-managed: rewrite its data partition with the agent's bootstrap (cloud URL,
    /// fleet CA and signing key, provisioning key or device token), without rebuilding anything else.
    Configure(crate::cloud::ConfigureArgs),
}

/// The master's engine in the image (`mode` in its conf.yml).
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Containerd,
    Native,
}

impl Engine {
    pub fn as_str(self) -> &'static str {
        match self {
            Engine::Containerd => "containerd",
            Engine::Native => "native",
        }
    }
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
    #[arg(long, value_name = "DIR", conflicts_with = "provisioning_key")]
    pub app: Option<PathBuf>,
    /// A cloud-managed image (`--cloud URL --provisioning-key FILE`; conflicts with --app).
    #[command(flatten)]
    pub cloud: crate::cloud::CloudArgs,
    /// How the image's master runs its services: `containerd` (each service a container of containerd, from
    /// the services' OCI images baked into the root, with Debian's containerd and runc) or `native` (each a
    /// process of the static binary; no container runtime in the image, no Python).
    #[arg(long, value_enum, default_value_t = Engine::Containerd)]
    pub engine: Engine,
    /// containerd images: the pip that downloads grpcio for the Python runtime image (default: .venv/bin/pip
    /// of the source tree, else pip3).
    #[arg(long)]
    pub pip: Option<PathBuf>,
    /// Size of the data partition in the image, MiB (init grows it to fill a larger medium on first boot);
    /// default 64 for native images, 256 for containerd images (containerd's content store and snapshots).
    #[arg(long)]
    pub data_mib: Option<u64>,
    /// The device's hostname.
    #[arg(long, default_value = "baetyl")]
    pub hostname: String,
    /// Development images only: also serve the master API on this TCP address (e.g. 0.0.0.0:9990).
    #[arg(long, value_name = "ADDR:PORT")]
    pub dev_api: Option<String>,
    /// Development images only: the operator token for --dev-api (a file with one token of 16+ characters).
    #[arg(long, value_name = "FILE", requires = "dev_api")]
    pub dev_api_token: Option<PathBuf>,
    /// The ed25519 key that signs `os-update.bundle` (base64 of a PKCS#8 document, as the fleet server's
    /// signing.key); made (0600) when the file does not exist. The image pins its public key and installs only
    /// OS updates signed with it. Default: `os-update.key` in the output directory (development only).
    #[arg(long, value_name = "FILE")]
    pub sign_key: Option<PathBuf>,
    /// Also write a Raspberry Pi SD card (`sdcard.img` and its `sdcard.img.bmap`) for this board; aarch64 only.
    /// The initramfs then also loads the board's SD card, Ethernet and RNG modules.
    #[arg(long, value_enum)]
    pub board: Option<crate::rpi::Board>,
    /// Timestamp of every file in the outputs (reproducible builds).
    #[arg(long, env = "SOURCE_DATE_EPOCH", default_value_t = 1_700_000_000)]
    pub source_date_epoch: u64,
}

impl BuildArgs {
    /// The data partition's size in MiB: `--data-mib`, else the engine's default.
    pub fn data_mib(&self) -> u64 {
        self.data_mib.unwrap_or(match self.engine {
            Engine::Containerd => 256,
            Engine::Native => 64,
        })
    }
}
