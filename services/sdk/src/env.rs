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
];

/// The API version every master speaks.
pub const API_VERSION: &str = "v1";

/// Request headers carrying a service's credentials. v1 never renamed the `openedge` pair; we accept both.
pub const HEADER_USERNAME: &str = "x-openedge-username";
pub const HEADER_PASSWORD: &str = "x-openedge-password";
pub const HEADER_USERNAME_ALT: &str = "x-baetyl-username";
pub const HEADER_PASSWORD_ALT: &str = "x-baetyl-password";
