//! Environment variables the master gives every service instance. Names are Baetyl v1's.

pub const HOST_ID: &str = "BAETYL_HOST_ID";
pub const HOST_OS: &str = "BAETYL_HOST_OS";
pub const HOST_SN: &str = "BAETYL_HOST_SN";
pub const MASTER_API_ADDRESS: &str = "BAETYL_MASTER_API_ADDRESS";
pub const MASTER_API_VERSION: &str = "BAETYL_MASTER_API_VERSION";
pub const SERVICE_MODE: &str = "BAETYL_SERVICE_MODE";
pub const SERVICE_NAME: &str = "BAETYL_SERVICE_NAME";
pub const SERVICE_TOKEN: &str = "BAETYL_SERVICE_TOKEN";
pub const SERVICE_INSTANCE_NAME: &str = "BAETYL_SERVICE_INSTANCE_NAME";
pub const SERVICE_INSTANCE_ADDRESS: &str = "BAETYL_SERVICE_INSTANCE_ADDRESS";

/// Set by `baetyl init` for the master it starts: the pid to signal for reboot (SIGTERM) or power off (SIGUSR2).
pub const INIT_PID: &str = "BAETYL_INIT_PID";

/// Baetyl v1's names, given alongside ours (v1 kept them for programs written against OpenEdge):
/// `(v1 name, our name)`; see [`add_v1_aliases`].
pub const V1_ALIASES: &[(&str, &str)] = &[
    ("OPENEDGE_HOST_ID", HOST_ID),
    ("OPENEDGE_HOST_OS", HOST_OS),
    ("OPENEDGE_MASTER_API", MASTER_API_ADDRESS),
    ("OPENEDGE_MASTER_API_VERSION", MASTER_API_VERSION),
    ("OPENEDGE_RUNNING_MODE", SERVICE_MODE),
    ("OPENEDGE_SERVICE_NAME", SERVICE_NAME),
    ("OPENEDGE_SERVICE_TOKEN", SERVICE_TOKEN),
    ("OPENEDGE_SERVICE_INSTANCE_NAME", SERVICE_INSTANCE_NAME),
    (
        "OPENEDGE_SERVICE_INSTANCE_ADDRESS",
        SERVICE_INSTANCE_ADDRESS,
    ),
];

/// v1: the master API's unix socket as a host path (v1's docker engine mounted it into containers).
pub const MASTER_API_SOCKET: &str = "BAETYL_MASTER_API_SOCKET";

/// Adds v1's names to an instance's environment: each `OPENEDGE_*` alias of a contract variable that is set
/// (and only those: an alias of an unset variable, such as a dynamic instance's token, is removed), and
/// `BAETYL_MASTER_API_SOCKET` when the API is a unix socket.
pub fn add_v1_aliases(env: &mut std::collections::BTreeMap<String, String>) {
    for (alias, name) in V1_ALIASES {
        match env.get(*name).cloned() {
            Some(v) => env.insert(alias.to_string(), v),
            None => env.remove(*alias),
        };
    }
    match env
        .get(MASTER_API_ADDRESS)
        .and_then(|a| a.strip_prefix("unix://"))
        .map(str::to_string)
    {
        Some(sock) => env.insert(MASTER_API_SOCKET.to_string(), sock),
        None => env.remove(MASTER_API_SOCKET),
    };
}

/// Set by `baetyl init` when the data partition cannot be used: the path of a JSON file saying why. The master
/// then runs no application and reports safe mode in inspect.
pub const SAFE_MODE: &str = "BAETYL_SAFE_MODE";

/// Every variable of the contract: a service never inherits these from the master's own environment.
pub const CONTRACT: &[&str] = &[
    HOST_ID,
    HOST_OS,
    HOST_SN,
    MASTER_API_ADDRESS,
    MASTER_API_VERSION,
    SERVICE_MODE,
    SERVICE_NAME,
    SERVICE_TOKEN,
    SERVICE_INSTANCE_NAME,
    SERVICE_INSTANCE_ADDRESS,
    INIT_PID,
    MASTER_API_SOCKET,
    "OPENEDGE_HOST_ID",
    "OPENEDGE_HOST_OS",
    "OPENEDGE_MASTER_API",
    "OPENEDGE_MASTER_API_VERSION",
    "OPENEDGE_RUNNING_MODE",
    "OPENEDGE_SERVICE_NAME",
    "OPENEDGE_SERVICE_TOKEN",
    "OPENEDGE_SERVICE_INSTANCE_NAME",
    "OPENEDGE_SERVICE_INSTANCE_ADDRESS",
    SAFE_MODE,
    crate::os::STATE_ENV,
];

/// The API version every master speaks.
pub const API_VERSION: &str = "v1";

/// Request headers carrying a service's credentials. v1 never renamed the `openedge` pair; we accept both.
pub const HEADER_USERNAME: &str = "x-openedge-username";
pub const HEADER_PASSWORD: &str = "x-openedge-password";
pub const HEADER_USERNAME_ALT: &str = "x-baetyl-username";
pub const HEADER_PASSWORD_ALT: &str = "x-baetyl-password";

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn v1_aliases_follow_the_contract_variables() {
        let mut env: BTreeMap<String, String> = [
            (SERVICE_NAME, "hub"),
            (SERVICE_TOKEN, "t0k"),
            (MASTER_API_ADDRESS, "unix:///w/var/run/baetyl.sock"),
            (SERVICE_MODE, "native"),
            ("OPENEDGE_SERVICE_INSTANCE_ADDRESS", "stale"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        add_v1_aliases(&mut env);
        assert_eq!(env["OPENEDGE_SERVICE_NAME"], "hub");
        assert_eq!(env["OPENEDGE_SERVICE_TOKEN"], "t0k");
        assert_eq!(env["OPENEDGE_RUNNING_MODE"], "native");
        assert_eq!(env["OPENEDGE_MASTER_API"], "unix:///w/var/run/baetyl.sock");
        assert_eq!(env[MASTER_API_SOCKET], "/w/var/run/baetyl.sock");
        assert!(!env.contains_key("OPENEDGE_SERVICE_INSTANCE_ADDRESS"));
        // A dynamic instance has no token: nor may it get one under the old name.
        env.remove(SERVICE_TOKEN);
        env.insert("OPENEDGE_SERVICE_TOKEN".into(), "smuggled".into());
        env.insert(MASTER_API_ADDRESS.into(), "tcp://127.0.0.1:50050".into());
        add_v1_aliases(&mut env);
        assert!(!env.contains_key("OPENEDGE_SERVICE_TOKEN"));
        assert!(!env.contains_key(MASTER_API_SOCKET));
        for (alias, _) in V1_ALIASES {
            assert!(
                CONTRACT.contains(alias),
                "{alias} must not leak from the master's env"
            );
        }
    }
}
