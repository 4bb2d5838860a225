//! Who may do what through the API, and what a dynamic start may put in an instance's environment.
//!
//! Roles, from the credentials of a request:
//! - the **operator** (`baetyl-operator` with the operator token) and **agents** (services named in
//!   conf.yml `server.agents`, with their service token: the cloud agent) manage everything: application
//!   updates, reboot and power off, every instance;
//! - any other **service** reads inspect, asks for a free port, reports for its own instances, and starts and
//!   stops dynamic instances: of its own service, or of a service with `replica: 0` (the function runtimes a
//!   function manager starts); it stops only those it started, and never touches a static instance.

use std::collections::BTreeMap;

use baetyl_sdk::env;

use crate::error::MasterError;

/// Who calls, as the credentials say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    Operator,
    /// A service with the agent role (conf.yml `server.agents`).
    Agent(String),
    Service(String),
}

impl Caller {
    /// The user name of the credentials (`baetyl-operator` or the service's name).
    pub fn name(&self) -> &str {
        match self {
            Caller::Operator => crate::api::OPERATOR,
            Caller::Agent(n) | Caller::Service(n) => n,
        }
    }

    /// Whether the caller manages the device: updates, OS actions, every instance.
    pub fn manages(&self) -> bool {
        !matches!(self, Caller::Service(_))
    }

    /// Refuses `action` unless the caller manages the device.
    pub fn must_manage(&self, action: &'static str) -> Result<(), MasterError> {
        match self {
            Caller::Service(name) => Err(MasterError::NeedsManager {
                caller: name.clone(),
                action,
            }),
            _ => Ok(()),
        }
    }
}

impl std::fmt::Display for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Caller::Operator => write!(f, "the operator"),
            Caller::Agent(n) => write!(f, "agent `{n}`"),
            Caller::Service(n) => write!(f, "service `{n}`"),
        }
    }
}

/// Most variables a dynamic start may set.
pub const MAX_DYNAMIC_VARIABLES: usize = 128;
/// Longest value of one of them, in bytes.
pub const MAX_DYNAMIC_VALUE: usize = 32 << 10;

/// Names that change what an instance's program loads or runs, by prefix, with the reason given.
const DENIED_PREFIXES: &[(&str, &str)] = &[
    ("LD_", "a dynamic loader variable"),
    ("BAETYL_", "reserved for the master"),
    ("PYTHON", "an interpreter variable (it can load code)"),
    ("PERL", "an interpreter variable (it can load code)"),
    ("RUBY", "an interpreter variable (it can load code)"),
    ("NODE_", "an interpreter variable (it can load code)"),
    ("LUA_", "an interpreter variable (it can load code)"),
    ("MALLOC_", "a C library variable"),
    ("GCONV_", "a C library variable (it can load code)"),
    ("OPENSSL_", "an OpenSSL variable (it can load code)"),
    ("BASH_FUNC_", "a shell function (shell code)"),
];

/// Names that change what an instance's program loads or runs, exactly, with the reason given.
const DENIED_NAMES: &[(&str, &str)] = &[
    ("GLIBC_TUNABLES", "a dynamic loader variable"),
    ("LOCPATH", "a C library variable"),
    ("NLSPATH", "a C library variable"),
    ("HOSTALIASES", "a resolver variable"),
    ("RES_OPTIONS", "a resolver variable"),
    ("LOCALDOMAIN", "a resolver variable"),
    (
        "JAVA_TOOL_OPTIONS",
        "an interpreter variable (it can load code)",
    ),
    (
        "_JAVA_OPTIONS",
        "an interpreter variable (it can load code)",
    ),
    (
        "JDK_JAVA_OPTIONS",
        "an interpreter variable (it can load code)",
    ),
    ("CLASSPATH", "an interpreter variable (it can load code)"),
    ("TCLLIBPATH", "an interpreter variable (it can load code)"),
    ("SSL_CERT_FILE", "it chooses which TLS peers are trusted"),
    ("SSL_CERT_DIR", "it chooses which TLS peers are trusted"),
    ("PATH", "it chooses which program runs"),
    ("IFS", "a shell variable (shell code)"),
    ("ENV", "a shell variable (shell code)"),
    ("BASH_ENV", "a shell variable (shell code)"),
    ("SHELLOPTS", "a shell variable (shell code)"),
    ("BASHOPTS", "a shell variable (shell code)"),
    ("PS4", "a shell variable (shell code)"),
    ("PROMPT_COMMAND", "a shell variable (shell code)"),
    ("CDPATH", "a shell variable"),
];

/// The variables a dynamic start of `service/instance` asked for, checked: a name that could make the
/// program load or run other code is refused (400), as are malformed names and values. The v1 contract
/// variables are the master's to set: a value given for one of them is ignored, as v1 did, except
/// `BAETYL_SERVICE_INSTANCE_ADDRESS`, which the starter chooses (the address the instance serves on).
pub fn dynamic_env(
    service: &str,
    instance: &str,
    asked: BTreeMap<String, String>,
) -> Result<Vec<(String, String)>, MasterError> {
    let refuse = |name: &str, why: String| MasterError::DeniedVariable {
        service: service.to_string(),
        instance: instance.to_string(),
        name: name.to_string(),
        why,
    };
    if asked.len() > MAX_DYNAMIC_VARIABLES {
        return Err(refuse(
            "*",
            format!("more than {MAX_DYNAMIC_VARIABLES} variables"),
        ));
    }
    let mut out = Vec::with_capacity(asked.len());
    for (name, value) in asked {
        if !valid_variable_name(&name) {
            return Err(refuse(
                &name,
                "is not a variable name (letters, digits and `_`, not starting with a digit)"
                    .into(),
            ));
        }
        if value.len() > MAX_DYNAMIC_VALUE || value.contains('\0') {
            return Err(refuse(
                &name,
                format!("its value must be at most {MAX_DYNAMIC_VALUE} bytes without NUL"),
            ));
        }
        if name == env::SERVICE_INSTANCE_ADDRESS {
            out.push((name, value));
            continue;
        }
        if env::CONTRACT.contains(&name.as_str()) {
            tracing::debug!(service, instance, variable = %name, "ignored: a contract variable is the master's to set");
            continue;
        }
        if let Some(why) = denied(&name) {
            return Err(refuse(
                &name,
                format!("may not be set by a dynamic start: {why}"),
            ));
        }
        out.push((name, value));
    }
    Ok(out)
}

fn valid_variable_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && name.len() <= 256
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Why `name` may not be set, if it may not (compared without case: `ld_preload` is refused too).
fn denied(name: &str) -> Option<&'static str> {
    let upper = name.to_ascii_uppercase();
    DENIED_PREFIXES
        .iter()
        .find(|(p, _)| upper.starts_with(p))
        .or_else(|| DENIED_NAMES.iter().find(|(n, _)| upper == *n))
        .map(|(_, why)| *why)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asked(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn ordinary_variables_pass_and_dangerous_ones_do_not() {
        let ok = dynamic_env("rt", "rt-1", asked(&[("A", "1"), ("_X1", "")])).expect("ok");
        assert_eq!(ok.len(), 2);
        for name in ["ld_preload", "Ld_Audit", "PYTHONWARNINGS", "BASH_FUNC_x%%"] {
            assert!(
                dynamic_env("rt", "rt-1", asked(&[(name, "x")])).is_err(),
                "{name}"
            );
        }
        let many: BTreeMap<String, String> = (0..=MAX_DYNAMIC_VARIABLES)
            .map(|i| (format!("V{i}"), String::new()))
            .collect();
        assert!(dynamic_env("rt", "rt-1", many).is_err());
        let big = "x".repeat(MAX_DYNAMIC_VALUE + 1);
        assert!(dynamic_env("rt", "rt-1", asked(&[("V", &big)])).is_err());
    }
}
