//! Baetyl v1 compatibility of `application.yml`: its older *list* form (`version: v0`/`v1`, `services:` as a
//! list with `name`, `mounts`, `args`, `env`, and `volumes:` as a list of `{name, path}`), converted the way
//! v1's own loader converted it, and the compose keys v1 accepted that we only partly honour
//! (`container_name`, `runtime`, service `networks`, volume `type`, `driver`/`driver_opts`/`labels`).
//!
//! v1's conversion (`AppConfig.ToComposeAppConfig` at tag 1.0.2), which this module follows:
//! - `version` becomes the application's `app_version`; the compose `version` is `3`;
//! - each service depends on the one listed before it, so the list order is the start order;
//! - `args` becomes `command`, `env` becomes `environment`, an absent `replica` is 0 (as in v1);
//! - a mount `{name, path, readonly}` becomes the volume `<that volume's path>:/<path>[:ro]`.

use std::collections::BTreeMap;
use std::path::Path;

use baetyl_sdk::ConfigError;
use baetyl_sdk::config::{ConfigFile, parse_yaml};
use serde::{Deserialize, Serialize};

use super::application::{
    Application, EnvValue, Environment, Resources, RestartPolicy, ServiceSpec, StringOrList,
};
use super::volumes::VolumeMount;

/// Which of the two application forms a file was written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppForm {
    /// Today's compose-like form (`services:` is a map).
    Compose,
    /// Baetyl v1's older list form (`services:` and `volumes:` are lists).
    V1List,
}

impl std::fmt::Display for AppForm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AppForm::Compose => "compose form",
            AppForm::V1List => "Baetyl v1 list form",
        })
    }
}

/// An application as read from its file: which form it was written in and the keys it sets that this
/// version accepts but does not honour (each with the reason).
#[derive(Debug, Clone)]
pub struct LoadedApplication {
    pub app: Application,
    pub form: AppForm,
    pub ignored: Vec<String>,
}

impl LoadedApplication {
    /// The application, after logging the keys it sets that are accepted and ignored.
    pub fn logged(self) -> Application {
        for key in &self.ignored {
            tracing::warn!("application: accepted but ignored: {key}");
        }
        self.app
    }
}

/// Reads an `application.yml` of either form (after v1's `{{.ENV}}` templating, see
/// [`baetyl_sdk::template`]).
pub fn load_application(path: &Path) -> Result<LoadedApplication, ConfigError> {
    let text = baetyl_sdk::config::read_templated(path)?;
    parse_application(&text, path)
}

/// Parses an `application.yml` of either form; `origin` names the file in errors.
pub fn parse_application(text: &str, origin: &Path) -> Result<LoadedApplication, ConfigError> {
    let form = detect_form(text);
    let app = match form {
        AppForm::Compose => parse_yaml::<Application>(text, origin)?,
        AppForm::V1List => {
            let v1: V1Application = parse_yaml(text, origin)?;
            v1.into_compose(origin)?
        }
    };
    app.validate(origin)?;
    let ignored = ignored_keys(&app);
    Ok(LoadedApplication { app, form, ignored })
}

/// The list form is recognised by `services:` or `volumes:` being a YAML list; anything else (including text
/// that is not YAML at all) goes to the compose parser, whose errors name the key.
fn detect_form(text: &str) -> AppForm {
    let Ok(serde_yaml_ng::Value::Mapping(top)) = serde_yaml_ng::from_str(text) else {
        return AppForm::Compose;
    };
    let is_list = |k: &str| matches!(top.get(k), Some(serde_yaml_ng::Value::Sequence(_)));
    if is_list("services") || is_list("volumes") {
        AppForm::V1List
    } else {
        AppForm::Compose
    }
}

/// v1's list form (`AppConfig` in v1's SDK).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct V1Application {
    #[serde(default)]
    version: String,
    #[serde(default)]
    services: Vec<V1Service>,
    #[serde(default)]
    volumes: Vec<V1Volume>,
    #[serde(default)]
    networks: BTreeMap<String, serde_yaml_ng::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct V1Service {
    name: String,
    #[serde(default)]
    hostname: Option<String>,
    image: String,
    /// Absent means 0 in v1 (a Go int's zero value): the service only runs dynamic instances.
    #[serde(default)]
    replica: u32,
    #[serde(default)]
    mounts: Vec<V1Mount>,
    #[serde(default)]
    networks: Option<ServiceNetworks>,
    #[serde(default)]
    network_mode: Option<String>,
    #[serde(default)]
    ports: Vec<String>,
    #[serde(default)]
    devices: Vec<String>,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    entrypoint: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, EnvValue>,
    #[serde(default)]
    restart: RestartPolicy,
    #[serde(default)]
    resources: Resources,
    #[serde(default)]
    runtime: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct V1Mount {
    name: String,
    path: String,
    #[serde(default)]
    readonly: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct V1Volume {
    name: String,
    path: String,
    /// Where the cloud agent downloaded the volume from; kept by the agent, not by the master.
    #[serde(default)]
    #[allow(dead_code)]
    meta: Option<V1VolumeMeta>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct V1VolumeMeta {
    #[serde(default)]
    url: String,
    #[serde(default)]
    md5: String,
    #[serde(default)]
    version: String,
}

impl V1Application {
    /// v1's `ToComposeAppConfig`, with errors where v1 silently produced a broken service.
    fn into_compose(self, origin: &Path) -> Result<Application, ConfigError> {
        let bad = |m: String| ConfigError::invalid(origin, m);
        let mut paths: BTreeMap<&str, &str> = BTreeMap::new();
        for (i, v) in self.volumes.iter().enumerate() {
            if paths.insert(&v.name, &v.path).is_some() {
                return Err(bad(format!(
                    "key `volumes[{i}].name`: volume `{}` is declared twice",
                    v.name
                )));
            }
        }
        let mut services = BTreeMap::new();
        let mut previous: Option<&str> = None;
        for (i, s) in self.services.iter().enumerate() {
            let mut volumes = Vec::with_capacity(s.mounts.len());
            for (j, m) in s.mounts.iter().enumerate() {
                let Some(path) = paths.get(m.name.as_str()) else {
                    return Err(bad(format!(
                        "key `services[{i}].mounts[{j}].name`: service `{}` mounts `{}`, which is not declared under volumes (add `- name: {}` with its `path`)",
                        s.name, m.name, m.name
                    )));
                };
                volumes.push(VolumeMount {
                    source: as_path(path),
                    target: format!("/{}", m.path.trim_start_matches('/')),
                    read_only: m.readonly,
                });
            }
            let spec = ServiceSpec {
                image: s.image.clone(),
                replica: s.replica,
                volumes,
                ports: s.ports.clone(),
                devices: s.devices.clone(),
                depends_on: previous.map(|p| vec![p.to_string()]).unwrap_or_default(),
                command: (!s.args.is_empty()).then(|| StringOrList::List(s.args.clone())),
                entrypoint: (!s.entrypoint.is_empty())
                    .then(|| StringOrList::List(s.entrypoint.clone())),
                environment: Environment::Map(s.env.clone()),
                restart: s.restart.clone(),
                resources: s.resources.clone(),
                network_mode: s.network_mode.clone(),
                hostname: s.hostname.clone(),
                container_name: None,
                runtime: s.runtime.clone(),
                networks: s.networks.clone(),
                user: None,
                ulimits: Default::default(),
            };
            if services.insert(s.name.clone(), spec).is_some() {
                return Err(bad(format!(
                    "key `services[{i}].name`: service `{}` is listed twice",
                    s.name
                )));
            }
            previous = Some(s.name.as_str());
        }
        Ok(Application {
            version: "3".into(),
            app_version: self.version,
            services,
            volumes: BTreeMap::new(),
            networks: self.networks,
        })
    }
}

/// v1 mounted a volume by its path, relative to the work dir; a path without `/` would read as a volume
/// name in the compose form, so it gets a `./`.
fn as_path(p: &str) -> String {
    if p.contains('/') {
        p.to_string()
    } else {
        format!("./{p}")
    }
}

/// A service's `networks:` (compose): a list of network names, or a map of names to aliases and address.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(
    untagged,
    expecting = "a list of network names, or a map of network names to {aliases, ipv4_address}"
)]
pub enum ServiceNetworks {
    List(Vec<String>),
    Map(BTreeMap<String, Option<ServiceNetwork>>),
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct ServiceNetwork {
    #[serde(default)]
    pub aliases: Vec<String>,
    #[serde(default)]
    pub ipv4_address: Option<String>,
}

/// A volume mount's `type:` (compose long form): both behave the same here, since the source is resolved
/// as a declared volume or else a path.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MountType {
    Volume,
    Bind,
}

/// The keys of `app` that are accepted for compatibility but not honoured by this version, each with why.
pub fn ignored_keys(app: &Application) -> Vec<String> {
    let mut out = Vec::new();
    for (name, s) in &app.services {
        if s.container_name.is_some() {
            out.push(format!(
                "services.{name}.container_name: instances are named <service>, <service>.i1, ... by the master"
            ));
        }
        if let Some(r) = &s.runtime {
            out.push(format!(
                "services.{name}.runtime (`{r}`): the engine chooses the OCI runtime (runc)"
            ));
        }
        if s.networks.is_some() {
            out.push(format!(
                "services.{name}.networks: services share the host network"
            ));
        }
    }
    if !app.networks.is_empty() {
        out.push("networks: services share the host network".to_string());
    }
    for (name, v) in &app.volumes {
        if v.driver.is_some() || !v.driver_opts.is_empty() || !v.labels.is_empty() {
            out.push(format!(
                "volumes.{name}.driver/driver_opts/labels: volumes are local directories"
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn load(text: &str) -> LoadedApplication {
        parse_application(text, Path::new("application.yml")).unwrap()
    }

    fn mounts(app: &Application, svc: &str) -> Vec<(PathBuf, String, bool)> {
        app.resolve_mounts(svc, Path::new("/w"), &[])
            .unwrap()
            .into_iter()
            .map(|m| (m.host, m.target, m.read_only))
            .collect()
    }

    /// v1's own conversion case (`TestLoadComposeAppConfigCompatible`, sdk/baetyl-go/config_test.go at 1.0.2):
    /// the list form and the compose form must load to the same application.
    const V1_COMPOSE: &str = r#"
version: '3'
app_version: v2
services:
  test-hub:
    image: hub.test.com/baetyl/baetyl-hub
    networks:
      test-network:
        aliases:
          - test-net
        ipv4_address: 192.168.0.3
    replica: 1
    ports:
      - 1883:1883
    volumes:
      - var/db/baetyl/test-hub-conf:/etc/baetyl
    command:
      - '-c'
      - conf/conf.yml
    entrypoint: test
    environment:
      - version=v1
  test-timer:
    image: hub.test.com/baetyl/baetyl-timer
    depends_on:
      - test-hub
    replica: 1
    networks:
      - test-network
    volumes:
      - source: var/db/baetyl/test-timer-conf
        target: /etc/baetyl
        read_only: true
    environment:
      version: v2
    command: '/bin/sh'
    entrypoint: test

networks:
  test-network:
"#;

    const V1_LIST: &str = r#"
version: v2
services:
  - name: test-hub
    image: hub.test.com/baetyl/baetyl-hub
    networks:
      test-network:
        aliases:
          - test-net
        ipv4_address: 192.168.0.3
    replica: 1
    ports:
      - 1883:1883
    mounts:
      - name: test-hub-conf
        path: etc/baetyl
    args:
      - '-c'
      - conf/conf.yml
    entrypoint:
      - 'test'
    env:
      version: v1
  - name: test-timer
    image: hub.test.com/baetyl/baetyl-timer
    replica: 1
    networks:
      - test-network
    mounts:
      - name: test-timer-conf
        path: etc/baetyl
        readonly: true
    env:
      version: v2
    args:
      - '/bin/sh'
    entrypoint:
      - 'test'

networks:
  test-network:

volumes:
  - name: test-hub-conf
    path: var/db/baetyl/test-hub-conf
  - name: test-timer-conf
    path: var/db/baetyl/test-timer-conf"#;

    #[test]
    fn v1_conversion_case_loads_like_its_compose_twin() {
        let c = load(V1_COMPOSE);
        let l = load(V1_LIST);
        assert_eq!(c.form, AppForm::Compose);
        assert_eq!(l.form, AppForm::V1List);
        let (c, l) = (c.app, l.app);
        assert_eq!(l.version, "3");
        assert_eq!(l.app_version, "v2");
        assert_eq!(c.app_version, "v2");
        assert_eq!(c.start_order().unwrap(), vec!["test-hub", "test-timer"]);
        assert_eq!(l.start_order().unwrap(), vec!["test-hub", "test-timer"]);
        for svc in ["test-hub", "test-timer"] {
            let (cs, ls) = (&c.services[svc], &l.services[svc]);
            assert_eq!(cs.image, ls.image, "{svc}");
            assert_eq!(cs.replica, ls.replica, "{svc}");
            assert_eq!(cs.ports, ls.ports, "{svc}");
            assert_eq!(cs.depends_on, ls.depends_on, "{svc}");
            assert_eq!(cs.networks, ls.networks, "{svc}");
            assert_eq!(
                cs.command.as_ref().map(StringOrList::to_vec),
                ls.command.as_ref().map(StringOrList::to_vec),
                "{svc}"
            );
            assert_eq!(
                cs.entrypoint.as_ref().map(StringOrList::to_vec),
                ls.entrypoint.as_ref().map(StringOrList::to_vec),
                "{svc}"
            );
            assert_eq!(
                cs.environment.to_map().unwrap(),
                ls.environment.to_map().unwrap(),
                "{svc}"
            );
            assert_eq!(cs.volumes, ls.volumes, "{svc}");
            assert_eq!(mounts(&c, svc), mounts(&l, svc), "{svc}");
        }
        assert_eq!(
            mounts(&l, "test-timer"),
            vec![(
                PathBuf::from("/w/var/db/baetyl/test-timer-conf"),
                "/etc/baetyl".to_string(),
                true
            )]
        );
        assert_eq!(c.networks.keys().collect::<Vec<_>>(), vec!["test-network"]);
        assert_eq!(l.networks, c.networks);
        let hub_net = &l.services["test-hub"].networks;
        let Some(ServiceNetworks::Map(m)) = hub_net else {
            panic!("{hub_net:?}")
        };
        let net = m["test-network"].as_ref().unwrap();
        assert_eq!(net.aliases, vec!["test-net"]);
        assert_eq!(net.ipv4_address.as_deref(), Some("192.168.0.3"));
    }

    #[test]
    fn list_order_is_the_start_order_and_absent_replica_is_zero() {
        let l = load(
            "version: v0\nservices:\n  - {name: z, image: a, replica: 1}\n  - {name: a, image: b}\n  - {name: m, image: c, replica: 2}\n",
        );
        assert_eq!(l.form, AppForm::V1List);
        assert_eq!(l.app.start_order().unwrap(), vec!["z", "a", "m"]);
        assert_eq!(l.app.services["a"].replica, 0);
        assert_eq!(l.app.services["m"].replica, 2);
        assert_eq!(l.app.app_version, "v0");
    }

    #[test]
    fn list_form_errors_name_the_key() {
        let e = parse_application(
            "services:\n  - name: a\n    image: x\n    mounts: [{name: ghost, path: etc}]\n",
            Path::new("application.yml"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("services[0].mounts[0].name") && e.contains("ghost"),
            "{e}"
        );
        let e = parse_application(
            "services:\n  - name: a\n    image: x\n    mount: []\n",
            Path::new("application.yml"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("services[0]") && e.contains("mount"), "{e}");
        let e = parse_application(
            "services:\n  - {name: a, image: x}\n  - {name: a, image: y}\n",
            Path::new("application.yml"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("listed twice"), "{e}");
        // The compose checks still run on the converted application.
        let e = parse_application(
            "services:\n  - {name: 'bad name', image: x}\n",
            Path::new("application.yml"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("bad name"), "{e}");
    }

    #[test]
    fn v1_example_native_application_loads() {
        let text =
            include_str!("../../../../tests/fixtures/v1/native/var/db/baetyl/application.yml");
        let l = load(text);
        assert_eq!(l.form, AppForm::V1List);
        assert_eq!(
            l.app.start_order().unwrap(),
            vec![
                "localhub",
                "function-manager",
                "function-python2-sayhi",
                "function-python3-sayhi",
                "function-node8-sayhi",
                "timer"
            ]
        );
        assert_eq!(l.app.services["function-python3-sayhi"].replica, 0);
        assert_eq!(
            mounts(&l.app, "localhub")[0],
            (
                PathBuf::from("/w/var/db/baetyl/localhub-conf"),
                "/etc/baetyl".to_string(),
                true
            )
        );
        assert!(l.ignored.is_empty(), "{:?}", l.ignored);
    }

    #[test]
    fn compose_keys_v1_accepted_are_accepted_and_reported() {
        let l = load(
            r#"
services:
  a:
    image: x
    container_name: my-a
    runtime: nvidia
    networks: [n]
    volumes:
      - {type: bind, source: ./d, target: /d}
      - {type: volume, source: v, target: /v, read_only: true}
volumes:
  v: {driver: local, driver_opts: {o: bind}, labels: {k: v}}
networks:
  n: {driver: bridge}
"#,
        );
        assert_eq!(l.form, AppForm::Compose);
        let a = &l.app.services["a"];
        assert_eq!(a.container_name.as_deref(), Some("my-a"));
        assert_eq!(a.volumes[1].source, "v");
        assert!(a.volumes[1].read_only);
        let joined = l.ignored.join("\n");
        for k in [
            "services.a.container_name",
            "services.a.runtime",
            "services.a.networks",
            "volumes.v.driver",
            "networks:",
        ] {
            assert!(joined.contains(k), "{k} not in {joined}");
        }
        let e = parse_application(
            "services:\n  a:\n    image: x\n    volumes: [{type: tmpfs, source: ./d, target: /d}]\n",
            Path::new("application.yml"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("services.a.volumes"), "{e}");
    }
}
