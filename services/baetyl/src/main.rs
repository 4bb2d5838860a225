//! `baetyl`: one static binary for every role, so images stay small and containers share one layer.
//!
//! Each role lives in its own library crate; this file only parses the command line and dispatches.
//! Roles that need no async runtime (init, check, version) never start one.

use baetyl_sdk::config::ConfigFile;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod alloc;
mod v1;

/// jemalloc, with large blocks left to the system allocator (see [`alloc`]): measured faster than glibc's
/// malloc on the hub's message path without raising its resident memory.
#[global_allocator]
static GLOBAL: alloc::Allocator = alloc::Allocator;

#[derive(Parser)]
#[command(name = "baetyl", version = version_line(), about = "baetyl: an edge computing system (master, hub, functions, OS)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the master: start the application's services, supervise them, serve the API.
    Master(baetyl_master::cli::MasterArgs),
    /// Baetyl v1's `start`: the master, with the work dir defaulting to the binary's `../` and `-c` relative to it.
    Start(v1::StartArgs),
    /// Validate a config file (conf.yml, application.yml, a service config) without starting anything.
    Check(CheckArgs),
    /// Ask a running master for its state (same JSON as GET /v1/system/inspect).
    Inspect(baetyl_master::cli::InspectArgs),
    /// Run the MQTT hub (Baetyl v1's hub config: listeners, principals, ACL, routing, persistence).
    Hub(baetyl_hub::HubArgs),
    /// Run the function manager: rules subscribe to the hub, call functions, publish results.
    Function(baetyl_function::manager::FunctionArgs),
    /// Serve SQL functions over gRPC (a function runtime; also standalone with --listen).
    RuntimeSql(baetyl_function::runtime::RuntimeArgs),
    /// Serve Python functions over gRPC (a function runtime; needs Python 3 with grpcio, see BAETYL_PYTHON).
    RuntimePython(baetyl_function::runtime::RuntimeArgs),
    /// Serve Node.js functions over gRPC (v1's Node runtime; needs Node.js 18+ and its modules, see
    /// BAETYL_NODE and BAETYL_NODE_MODULES).
    RuntimeNode(baetyl_function::runtime::RuntimeArgs),
    /// Run the bridge between the hub and remote brokers (store-and-forward while a remote is down).
    Remote(baetyl_remote::RemoteArgs),
    /// Publish a templated message to the hub on an interval.
    Timer(baetyl_remote::timer::TimerArgs),
    /// Run as PID 1 of the baetyl OS (mounts, modules, master supervision, orderly shutdown).
    Init(baetyl_init::InitArgs),
    /// Build the OS image (kernel + initramfs, unified kernel image, squashfs root, GPT disk) for QEMU.
    #[cfg(feature = "image-builder")]
    Image(baetyl_image::ImageArgs),
    /// Not in this build: the OS image builder needs the `image-builder` feature.
    #[cfg(not(feature = "image-builder"))]
    Image(LeftOut),
    /// Run the device agent (v1's baetyl-agent): the device's link to its fleet server.
    Agent(baetyl_agent::cli::AgentArgs),
    /// Run the fleet server: devices, signed deployments, operations, the web dashboard.
    #[cfg(feature = "cloud")]
    Cloud(baetyl_cloud::cli::CloudArgs),
    /// Not in this build: the fleet server needs the `cloud` feature.
    #[cfg(not(feature = "cloud"))]
    Cloud(LeftOut),
    /// Manage a fleet through its cloud: devices, apps, deployments, logs, restart, reboot.
    #[cfg(feature = "cloud")]
    Ctl(baetyl_cloud::ctl::CtlArgs),
    /// Not in this build: the fleet's operator CLI needs the `cloud` feature.
    #[cfg(not(feature = "cloud"))]
    Ctl(LeftOut),
    /// Print version, git revision and build target.
    Version,
}

/// The arguments of a subcommand this build left out (the device build: `--no-default-features`), taken whole so
/// that the answer is "not in this binary" rather than a parse error.
#[derive(clap::Args)]
#[cfg_attr(all(feature = "cloud", feature = "image-builder"), allow(dead_code))]
struct LeftOut {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    _args: Vec<std::ffi::OsString>,
}

/// The Cargo features this binary was built with (`baetyl version`).
const FEATURES: &[&str] = &[
    #[cfg(feature = "cloud")]
    "cloud",
    #[cfg(feature = "image-builder")]
    "image-builder",
];

/// The answer of a subcommand that this build left out: which feature brings it back and how to build it.
#[cfg_attr(all(feature = "cloud", feature = "image-builder"), allow(dead_code))]
fn left_out(command: &str, feature: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "`baetyl {command}` is not in this binary: it was built without the `{feature}` feature (the OS image's \
         device build leaves it out); use a full build (`cargo build -p baetyl`, default features) or add \
         `--features {feature}`"
    )
}

#[derive(clap::Args)]
struct CheckArgs {
    /// The file to check. Its kind is found from its name, or given with --kind. Without it, Baetyl v1's
    /// `check`: the master config of the work dir (-w, -c) is checked and `OK!` printed.
    file: Option<PathBuf>,
    /// v1: the work dir (default: the directory above the one holding this binary).
    #[arg(short = 'w', long)]
    workdir: Option<PathBuf>,
    /// v1: the master config, relative to the work dir (default: etc/baetyl/conf.yml).
    #[arg(short = 'c', long)]
    config: Option<PathBuf>,
    /// What the file is: master (conf.yml), application, or a service role's config.
    #[arg(long)]
    kind: Option<String>,
}

const fn version_line() -> &'static str {
    concat!(
        env!("CARGO_PKG_VERSION"),
        " (git ",
        env!("BAETYL_GIT_REVISION"),
        ", ",
        env!("BAETYL_BUILD_TARGET"),
        ")"
    )
}

fn main() -> ExitCode {
    // The kernel starts PID 1 with no arguments (as /init or /sbin/init): that is the init role.
    let argv0 = std::env::args().next().unwrap_or_default();
    let as_init = std::process::id() == 1 || argv0.rsplit('/').next() == Some("init");
    if as_init && std::env::args().len() == 1 {
        let args = baetyl_init::InitArgs {
            cmdline: "/proc/cmdline".into(),
            ..Default::default()
        };
        let code = baetyl_init::run_cli(args);
        return ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Version => {
            println!("baetyl {}", env!("CARGO_PKG_VERSION"));
            println!("git revision: {}", env!("BAETYL_GIT_REVISION"));
            println!("build target: {}", env!("BAETYL_BUILD_TARGET"));
            println!("features: {}", features_line());
            Ok(())
        }
        Command::Check(args) => check(&args),
        Command::Remote(args) => baetyl_remote::run_cli(args).map_err(Into::into),
        Command::Timer(args) => baetyl_remote::timer::run_cli(args).map_err(Into::into),
        Command::Init(args) => {
            let code = baetyl_init::run_cli(args);
            return ExitCode::from(u8::try_from(code).unwrap_or(1));
        }
        Command::Master(args) => baetyl_master::cli::run_master(args, software_info(), roles()),
        Command::Start(args) => v1::start_args(args)
            .and_then(|args| baetyl_master::cli::run_master(args, software_info(), roles())),
        Command::Inspect(args) => baetyl_master::cli::run_inspect(args),
        #[cfg(feature = "image-builder")]
        Command::Image(args) => match args.command {
            baetyl_image::ImageCommand::Build(b) => {
                baetyl_image::build(&b).map(|_| ()).map_err(Into::into)
            }
            baetyl_image::ImageCommand::Oci(o) => {
                baetyl_image::oci::build(&o).map(|_| ()).map_err(Into::into)
            }
            baetyl_image::ImageCommand::Configure(c) => {
                baetyl_image::cloud::configure(&c).map_err(Into::into)
            }
        },
        #[cfg(not(feature = "image-builder"))]
        Command::Image(_) => Err(left_out("image", "image-builder")),
        Command::Hub(args) => baetyl_hub::run_cli(args).map_err(Into::into),
        Command::Agent(args) => baetyl_agent::cli::run_cli(args).map_err(Into::into),
        #[cfg(feature = "cloud")]
        Command::Cloud(args) => baetyl_cloud::cli::run_cli(args).map_err(Into::into),
        #[cfg(feature = "cloud")]
        Command::Ctl(args) => baetyl_cloud::ctl::run_cli(args),
        #[cfg(not(feature = "cloud"))]
        Command::Cloud(_) => Err(left_out("cloud", "cloud")),
        #[cfg(not(feature = "cloud"))]
        Command::Ctl(_) => Err(left_out("ctl", "cloud")),
        Command::Function(args) => baetyl_function::manager::run_cli(args).map_err(Into::into),
        Command::RuntimeSql(args) => {
            baetyl_function::runtime::run_sql_cli(args).map_err(Into::into)
        }
        Command::RuntimePython(args) => {
            baetyl_function::runtime::run_python_cli(args).map_err(Into::into)
        }
        Command::RuntimeNode(args) => baetyl_function::node::run_node_cli(args).map_err(Into::into),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("baetyl: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn features_line() -> String {
    if FEATURES.is_empty() {
        "none (device build: no fleet server, no image builder)".to_string()
    } else {
        FEATURES.join(", ")
    }
}

fn software_info() -> baetyl_master::BuildInfo {
    baetyl_master::BuildInfo {
        version: env!("CARGO_PKG_VERSION"),
        git_revision: env!("BAETYL_GIT_REVISION"),
        target: env!("BAETYL_BUILD_TARGET"),
    }
}

/// Each config kind this binary knows: its name, how to recognise its file, and its validator.
type Checker = fn(&std::path::Path) -> anyhow::Result<String>;

fn checkers() -> Vec<(&'static str, &'static [&'static str], Checker)> {
    vec![
        ("master", &["conf.yml", "conf.yaml"], |p| {
            baetyl_master::config::MasterConfig::load(p)?;
            Ok("master config".into())
        }),
        (
            "application",
            &["application.yml", "application.yaml", "application.yml.old"],
            |p| {
                let l = baetyl_master::config::load_application(p)?;
                let mut what = format!(
                    "application {} with {} service(s), read in the {}",
                    l.app.app_version,
                    l.app.services.len(),
                    l.form
                );
                for key in &l.ignored {
                    what.push_str(&format!("\n  accepted but ignored: {key}"));
                }
                Ok(what)
            },
        ),
        ("hub", &[], |p| {
            let c = baetyl_hub::HubConfig::load(p)?;
            Ok(format!(
                "hub config with {} listener(s), {} principal(s)",
                c.listen.len(),
                c.principals.len()
            ))
        }),
        ("function", &[], |p| {
            let c = baetyl_function::manager::ManagerConfig::load(p)?;
            Ok(format!(
                "function manager config with {} rule(s)",
                c.rules.len()
            ))
        }),
        ("runtime-sql", &[], |p| {
            let c = baetyl_function::runtime::RuntimeConfig::load(p)?;
            baetyl_function::runtime::SqlRuntime::new(&c, p)?;
            Ok(format!(
                "SQL runtime config with {} function(s)",
                c.functions.len()
            ))
        }),
        ("remote", &[], |p| {
            let c = baetyl_remote::BridgeConfig::load(p)?;
            Ok(format!(
                "remote bridge config with {} remote(s)",
                c.remotes.len()
            ))
        }),
        ("timer", &[], |p| {
            baetyl_remote::timer::TimerConfig::load(p)?;
            Ok("timer config".into())
        }),
        ("agent", &[], |p| {
            baetyl_agent::config::AgentConfig::load(p)?;
            Ok("agent config".into())
        }),
        ("cloud", &["cloud.yml", "cloud.yaml"], |_p| {
            #[cfg(feature = "cloud")]
            {
                baetyl_cloud::CloudConfig::load(_p)?;
                Ok("cloud config".into())
            }
            #[cfg(not(feature = "cloud"))]
            Err(left_out("check --kind cloud", "cloud"))
        }),
        ("runtime-node", &[], |p| {
            let c = baetyl_function::node::load_config(p)?;
            Ok(format!(
                "Node.js runtime config with {} function(s)",
                c.functions.len()
            ))
        }),
        ("runtime-python", &[], |p| {
            let c = baetyl_function::runtime::RuntimeConfig::load(p)?;
            Ok(format!(
                "Python runtime config with {} function(s)",
                c.functions.len()
            ))
        }),
    ]
}

fn check(args: &CheckArgs) -> anyhow::Result<()> {
    let Some(file) = &args.file else {
        return v1::check_master(args.workdir.as_deref(), args.config.as_deref());
    };
    let checkers = checkers();
    let name = file
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let chosen = match &args.kind {
        Some(kind) => checkers.iter().find(|(k, _, _)| k == kind).ok_or_else(|| {
            let kinds: Vec<_> = checkers.iter().map(|(k, _, _)| *k).collect();
            anyhow::anyhow!("unknown kind `{kind}`; use one of: {}", kinds.join(", "))
        })?,
        None => checkers.iter().find(|(_, names, _)| names.contains(&name)).ok_or_else(|| {
            let kinds: Vec<_> = checkers.iter().map(|(k, _, _)| *k).collect();
            anyhow::anyhow!(
                "cannot tell what kind of config `{}` is from its name; pass --kind with one of: {}",
                file.display(),
                kinds.join(", ")
            )
        })?,
    };
    let what = (chosen.2)(file)?;
    println!("{}: ok ({what})", file.display());
    Ok(())
}

/// Roles of this binary that an application can name as a service image (`image: baetyl-<role>`): the same
/// names and roles as the OCI images of `baetyl image oci`, so an application runs on either engine.
fn roles() -> Vec<baetyl_master::engine::native::Role> {
    // Baetyl v1's Python image names run on the Python 3 runtime (v1 code that is Python 2 only fails at
    // import with Python's own error).
    let v1_python = [
        "baetyl-function-python2",
        "baetyl-function-python27",
        "baetyl-function-python36",
    ];
    // The Node.js runtime: v1.0.2's example names `baetyl-function-node8`, its docs `-node85`.
    let node = [
        "baetyl-function-node",
        "baetyl-function-node8",
        "baetyl-function-node85",
    ];
    baetyl_image::oci::IMAGES
        .iter()
        .map(|img| (img.name.to_string(), img.role.to_string()))
        .chain(
            v1_python
                .iter()
                .map(|n| (n.to_string(), "runtime-python".to_string())),
        )
        .chain(
            node.iter()
                .map(|n| (n.to_string(), "runtime-node".to_string())),
        )
        // The device agent: no OCI image of its own yet (image/ lists the others).
        .chain([("baetyl-agent".to_string(), "agent".to_string())])
        .map(|(image, role)| baetyl_master::engine::native::Role {
            image,
            args: vec![role],
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_left_out_subcommand_names_its_feature_and_the_fix() {
        let text = left_out("cloud", "cloud").to_string();
        assert!(
            text.starts_with("`baetyl cloud` is not in this binary"),
            "{text}"
        );
        assert!(text.contains("without the `cloud` feature"), "{text}");
        assert!(text.contains("--features cloud"), "{text}");
    }

    /// The device build (`--no-default-features`): the left-out subcommands take any arguments, so that they
    /// reach their answer instead of a parse error.
    #[test]
    #[cfg(not(any(feature = "cloud", feature = "image-builder")))]
    fn left_out_subcommands_parse_whatever_follows() {
        for args in [
            &["baetyl", "cloud", "--config", "x.yml"][..],
            &["baetyl", "ctl", "devices", "list"],
            &["baetyl", "image", "build", "--arch", "x86_64"],
        ] {
            let parsed = Cli::try_parse_from(args);
            assert!(parsed.is_ok(), "{args:?}: {:?}", parsed.err());
        }
    }
}
