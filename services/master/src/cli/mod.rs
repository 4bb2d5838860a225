//! The master's subcommands of the `baetyl` binary: [`master`] (`baetyl master`: arguments, work-dir lock,
//! logging, engine, listeners, then [`crate::run`]) and [`inspect`] (`baetyl inspect`).

mod inspect;
mod master;

use std::path::Path;

use baetyl_sdk::config::ConfigFile;

use crate::config::MasterConfig;

pub use inspect::{InspectArgs, run_inspect};
pub use master::{MasterArgs, run_master};

/// The master config at `path`, or the built-in defaults when there is no such file.
fn load_config(path: &Path) -> anyhow::Result<MasterConfig> {
    if path.exists() {
        Ok(MasterConfig::load(path)?)
    } else {
        Ok(MasterConfig::default())
    }
}
