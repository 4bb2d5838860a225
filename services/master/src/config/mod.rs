//! The master's two config files, both YAML that rejects unknown keys and is validated at load:
//! `etc/baetyl/conf.yml` ([`master`]: how the master runs) and `application.yml` ([`application`]: what it
//! runs, in Baetyl v1's compose-like form), with its [`volumes`] and its dependency [`graph`] (start order,
//! update diff). Everything is re-exported here, so users write `config::Application`.

pub mod application;
pub mod graph;
pub mod master;
pub mod v1;
pub mod volumes;

pub use application::*;
pub use graph::*;
pub use master::*;
pub use v1::{AppForm, LoadedApplication, load_application, parse_application};
pub use volumes::*;

/// Parses an application from YAML text, as a file named `application.yml` would be.
#[cfg(test)]
pub(crate) fn test_app(text: &str) -> Result<Application, baetyl_sdk::ConfigError> {
    use baetyl_sdk::config::ConfigFile;
    Application::parse(text, std::path::Path::new("application.yml"))
}
