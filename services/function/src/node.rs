//! `baetyl runtime-node`: Baetyl v1's Node.js function runtime (images `baetyl-function-node8`, `-node85`,
//! `-node`), the same runtime contract as the Python one.
//!
//! The config is validated here (the runtime schema of [`crate::runtime`], handlers `MODULE.FUNCTION`), then
//! this process is replaced by Node.js running the program of `runtimes/node/runtime.js`, embedded in the
//! binary so that the binary and the program always agree, with the config as JSON and the Function proto's
//! text (the file the manager is built from). Its third-party modules (@grpc/grpc-js, @grpc/proto-loader,
//! protobufjs) come from a `node_modules` directory installed ahead of time (scripts/setup.sh runs `npm ci` on
//! `runtimes/node/package-lock.json`), found as [`node_modules`] says: nothing is downloaded at run time.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use baetyl_sdk::config::ConfigFile;

use crate::error::FunctionError;
use crate::runtime::{
    RuntimeArgs, RuntimeConfig, check_handlers, listen_address, python_config_json,
};

/// The Node.js program, embedded so the binary alone can start it.
pub const NODE_RUNTIME: &str = include_str!("../runtimes/node/runtime.js");
/// The Function protocol, handed to the program (which builds its codec from it with protobufjs).
pub const FUNCTION_PROTO: &str = include_str!("../proto/function.proto");

/// The Node.js interpreter to run (default `node`).
pub const NODE_ENV: &str = "BAETYL_NODE";
/// The `node_modules` directory holding the runtime's modules.
pub const NODE_MODULES_ENV: &str = "BAETYL_NODE_MODULES";

/// Where the runtime's modules are looked for when [`NODE_MODULES_ENV`] is not set: beside an installed
/// binary (`<prefix>/bin/baetyl` and `<prefix>/lib/baetyl/node_modules`), then the system-wide place an image
/// puts them.
fn default_places() -> Vec<PathBuf> {
    let mut places = Vec::new();
    if let Ok(exe) = std::env::current_exe()
        && let Some(prefix) = exe.parent().and_then(Path::parent)
    {
        places.push(prefix.join("lib/baetyl/node_modules"));
    }
    places.push(PathBuf::from("/usr/lib/baetyl/node_modules"));
    places
}

/// True if `dir` holds the runtime's gRPC module.
fn has_modules(dir: &Path) -> bool {
    dir.join("@grpc/grpc-js/package.json").is_file()
}

/// The `node_modules` directory to give the runtime: `$BAETYL_NODE_MODULES` (which must hold the modules),
/// else the first of the default places that holds them.
pub fn node_modules(env: Option<OsString>) -> Result<PathBuf, FunctionError> {
    let places = match env.filter(|v| !v.is_empty()) {
        Some(dir) => vec![PathBuf::from(dir)],
        None => default_places(),
    };
    places
        .iter()
        .find(|p| has_modules(p))
        .cloned()
        .ok_or_else(|| FunctionError::NodeModules {
            searched: places
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// The arguments after `node`: the program, then its own arguments.
pub fn node_args(listen: &str, config_json: &str) -> Vec<String> {
    [
        "-e",
        NODE_RUNTIME,
        "--",
        "--listen",
        listen,
        "--config-json",
        config_json,
        "--proto",
        FUNCTION_PROTO,
    ]
    .map(str::to_string)
    .to_vec()
}

/// Loads and checks a Node.js runtime config (`baetyl check --kind runtime-node` too).
pub fn load_config(path: &Path) -> Result<RuntimeConfig, FunctionError> {
    let cfg = RuntimeConfig::load(path)?;
    check_handlers(&cfg, path)?;
    Ok(cfg)
}

/// `baetyl runtime-node`: validates the config, then replaces this process with the Node.js runtime
/// (interpreter: `$BAETYL_NODE`, else `node`; modules: see [`node_modules`]), `logger` included with
/// `--log-format` applied: it logs in the same line format as every other role.
pub fn run_node_cli(args: RuntimeArgs) -> Result<(), FunctionError> {
    use std::os::unix::process::CommandExt;
    let mut cfg = load_config(&args.config)?;
    let addr = listen_address(&args, &cfg)?;
    let modules = node_modules(std::env::var_os(NODE_MODULES_ENV))?;
    let node = std::env::var(NODE_ENV).unwrap_or_else(|_| "node".to_string());
    cfg.logger.format = args.log_format.unwrap_or(cfg.logger.format);
    let json = python_config_json(&cfg)?;
    let err = std::process::Command::new(&node)
        .args(node_args(&addr.to_string(), &json))
        .env("NODE_PATH", &modules)
        .exec();
    Err(FunctionError::Node { node, source: err })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modules_come_from_the_variable_or_a_default_place() {
        let dir = tempfile::tempdir().expect("dir");
        let e = node_modules(Some(dir.path().into()))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&dir.path().display().to_string()) && e.contains("scripts/setup.sh"),
            "{e}"
        );
        std::fs::create_dir_all(dir.path().join("@grpc/grpc-js")).expect("mkdir");
        std::fs::write(dir.path().join("@grpc/grpc-js/package.json"), "{}").expect("write");
        assert_eq!(
            node_modules(Some(dir.path().into())).expect("found"),
            dir.path()
        );
        // Unset (or empty): the default places, all named when none holds the modules.
        if !default_places().iter().any(|p| has_modules(p)) {
            let e = node_modules(Some(OsString::new())).unwrap_err().to_string();
            assert!(e.contains("/usr/lib/baetyl/node_modules"), "{e}");
        }
    }

    #[test]
    fn handlers_must_name_a_module_and_a_function() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("service.yml");
        std::fs::write(
            &path,
            "functions: [{name: f, handler: index.handler, codedir: code}]\n",
        )
        .expect("write");
        assert_eq!(load_config(&path).expect("valid").functions.len(), 1);
        std::fs::write(&path, "functions: [{name: f, handler: handler}]\n").expect("write");
        let e = load_config(&path).unwrap_err().to_string();
        assert!(e.contains("MODULE.FUNCTION"), "{e}");
    }

    #[test]
    fn the_program_gets_the_config_and_the_proto() {
        let args = node_args("127.0.0.1:1", "{}");
        assert_eq!(args[0], "-e");
        assert!(args[1].contains("baetyl.Function/Call"));
        assert_eq!(args[2], "--", "node's own options end before the program's");
        assert!(
            args.last()
                .expect("proto")
                .contains("message FunctionMessage")
        );
    }
}
