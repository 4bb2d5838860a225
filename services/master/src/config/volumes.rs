//! Volumes: the application's named volumes (`volumes:`), how a service mounts them (`services.*.volumes`,
//! short `source:target[:ro]` or long form), and where each one lives on the host.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::Application;
use crate::engine::ResolvedMount;

/// A volume mounted into a service: `"source:target[:ro|:rw]"` or `{source, target, read_only}`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct VolumeMount {
    pub source: String,
    pub target: String,
    pub read_only: bool,
}

impl<'de> Deserialize<'de> for VolumeMount {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Long {
            source: String,
            target: String,
            #[serde(default)]
            read_only: bool,
            /// `volume` or `bind` (compose); the source is resolved the same way for both.
            #[serde(default, rename = "type")]
            _kind: Option<super::v1::MountType>,
        }
        #[derive(Deserialize)]
        #[serde(
            untagged,
            expecting = "\"source:target[:ro]\" or {source, target, read_only}"
        )]
        enum Form {
            Short(String),
            Long(Long),
        }
        match Form::deserialize(d)? {
            Form::Long(l) => Ok(VolumeMount {
                source: l.source,
                target: l.target,
                read_only: l.read_only,
            }),
            Form::Short(s) => parse_short_mount(&s).map_err(serde::de::Error::custom),
        }
    }
}

fn parse_short_mount(s: &str) -> Result<VolumeMount, String> {
    let parts: Vec<&str> = s.split(':').collect();
    let (source, target, mode) = match parts.as_slice() {
        [src, dst] => (*src, *dst, "rw"),
        [src, dst, mode] => (*src, *dst, *mode),
        _ => {
            return Err(format!(
                "volume `{s}` is not \"source:target\" or \"source:target:ro\""
            ));
        }
    };
    if source.is_empty() || target.is_empty() {
        return Err(format!("volume `{s}` has an empty source or target"));
    }
    let read_only = match mode {
        "ro" => true,
        "rw" => false,
        other => {
            return Err(format!(
                "volume `{s}`: mode `{other}` is unknown; use ro or rw"
            ));
        }
    };
    Ok(VolumeMount {
        source: source.to_string(),
        target: target.to_string(),
        read_only,
    })
}

/// A named volume of the application: a directory on the device.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct VolumeSpec {
    /// Where its data lives, relative to the work dir; default `var/db/baetyl/volumes/<name>`.
    #[serde(default)]
    pub path: Option<String>,
    /// A dataset: mounted read-only into every service that uses it.
    #[serde(default)]
    pub read_only: bool,
    /// Compose keys Baetyl v1 accepted; accepted and reported as ignored (volumes are local directories).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub driver_opts: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

impl VolumeSpec {
    /// Where the volume `name` keeps its data, relative to the work dir.
    pub fn path_or_default(&self, name: &str) -> String {
        self.path
            .clone()
            .unwrap_or_else(|| format!("var/db/baetyl/volumes/{name}"))
    }
}

/// Whether a mount's source is a path (`./dir`, `/dir`, `a/b`) rather than the name of a volume.
pub(super) fn looks_like_path(s: &str) -> bool {
    s.starts_with('/') || s.starts_with("./") || s.starts_with("../") || s.contains('/')
}

impl Application {
    /// The volume specs a service uses, by name, for change detection.
    pub fn volumes_of(&self, service: &str) -> BTreeMap<String, Option<VolumeSpec>> {
        self.services
            .get(service)
            .map(|s| {
                s.volumes
                    .iter()
                    .map(|m| (m.source.clone(), self.volumes.get(&m.source).cloned()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Where a mount of this application lives on the host, and whether it is read-only: relative paths
    /// are under `workdir`; a declared volume that is read-only is mounted read-only whatever the service
    /// asks.
    pub fn host_of(&self, m: &VolumeMount, workdir: &Path) -> (PathBuf, bool) {
        match self.volumes.get(&m.source) {
            Some(vol) => (
                workdir.join(vol.path_or_default(&m.source)),
                m.read_only || vol.read_only,
            ),
            None => (workdir.join(m.source.trim_start_matches("./")), m.read_only),
        }
    }

    /// The other services that mount the host directory `host`, each with whether it mounts it read-only.
    pub fn others_mounting(
        &self,
        service: &str,
        host: &Path,
        workdir: &Path,
    ) -> Vec<(String, bool)> {
        self.others_overlapping(service, host, workdir)
            .into_iter()
            .filter(|(_, h, _)| h == host)
            .map(|(name, _, ro)| (name, ro))
            .collect()
    }

    /// The other services' mounts whose host directory is `host`, lies inside it or contains it: (service,
    /// its host directory, read-only). Two of them that are writable share files whatever their paths.
    pub fn others_overlapping(
        &self,
        service: &str,
        host: &Path,
        workdir: &Path,
    ) -> Vec<(String, PathBuf, bool)> {
        self.services
            .iter()
            .filter(|(name, _)| name.as_str() != service)
            .flat_map(|(name, spec)| {
                spec.volumes.iter().filter_map(move |m| {
                    let (h, ro) = self.host_of(m, workdir);
                    (h.starts_with(host) || host.starts_with(&h)).then(|| (name.clone(), h, ro))
                })
            })
            .collect()
    }

    /// The host directories of the mounts of `service`: an absolute one must lie in the work dir or under
    /// one of `allowed_roots`.
    pub fn resolve_mounts(
        &self,
        service: &str,
        workdir: &Path,
        allowed_roots: &[PathBuf],
    ) -> Result<Vec<ResolvedMount>, VolumeOutside> {
        let mounts = self
            .services
            .get(service)
            .map(|s| s.volumes.as_slice())
            .unwrap_or_default();
        mounts
            .iter()
            .map(|m| {
                let (host, read_only) = self.host_of(m, workdir);
                let inside =
                    host.starts_with(workdir) || allowed_roots.iter().any(|r| host.starts_with(r));
                if !inside {
                    return Err(VolumeOutside {
                        source: m.source.clone(),
                        host,
                    });
                }
                let shared = !self.others_mounting(service, &host, workdir).is_empty();
                let mut nested: Vec<PathBuf> = self
                    .others_overlapping(service, &host, workdir)
                    .into_iter()
                    .map(|(_, h, _)| h)
                    .filter(|h| h != &host && h.starts_with(&host))
                    .collect();
                nested.sort();
                nested.dedup();
                Ok(ResolvedMount {
                    host,
                    target: m.target.clone(),
                    read_only,
                    shared,
                    nested,
                })
            })
            .collect()
    }
}

/// A mount whose host directory is outside the work dir and every allowed root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeOutside {
    /// The mount's source as written (a volume name or a path).
    pub source: String,
    pub host: PathBuf,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_app as app;

    #[test]
    fn short_mounts_take_an_optional_mode() {
        let m = |s: &str| parse_short_mount(s);
        assert_eq!(
            m("data:/d:ro"),
            Ok(VolumeMount {
                source: "data".into(),
                target: "/d".into(),
                read_only: true
            })
        );
        assert!(!m("data:/d").unwrap().read_only);
        assert!(m("data:/d:rx").unwrap_err().contains("mode `rx`"));
        assert!(m(":/d").unwrap_err().contains("empty source"));
    }

    #[test]
    fn mounts_resolve_under_the_work_dir_and_datasets_stay_read_only() {
        let a = app(
            "services:\n  s:\n    image: x\n    volumes: [\"data:/data\", \"set:/set\", \"./raw:/raw:ro\"]\nvolumes:\n  data: {}\n  set: {path: var/db/sets/one, read_only: true}\n",
        )
        .unwrap();
        let got = a.resolve_mounts("s", Path::new("/w"), &[]).expect("inside");
        let want = [
            ("/w/var/db/baetyl/volumes/data", "/data", false),
            ("/w/var/db/sets/one", "/set", true),
            ("/w/raw", "/raw", true),
        ];
        let got: Vec<(PathBuf, &str, bool)> = got
            .iter()
            .map(|m| (m.host.clone(), m.target.as_str(), m.read_only))
            .collect();
        let want: Vec<(PathBuf, &str, bool)> = want
            .iter()
            .map(|(h, t, r)| (PathBuf::from(h), *t, *r))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn volumes_inside_another_services_volume_are_nested_in_it() {
        let a = app(
            "services:\n  agent:\n    image: x\n    volumes: [\"deploy:/d\"]\n  hub:\n    image: x\n    volumes: [\"conf:/c:ro\", \"deploy:/all:ro\"]\nvolumes:\n  deploy: {path: var/db/deploy}\n  conf: {path: var/db/deploy/volumes/conf-1}\n",
        )
        .unwrap();
        let w = Path::new("/w");
        let agent = a.resolve_mounts("agent", w, &[]).expect("inside");
        assert_eq!(
            agent[0].nested,
            [PathBuf::from("/w/var/db/deploy/volumes/conf-1")]
        );
        assert!(agent[0].shared, "the hub mounts it too");
        let hub = a.resolve_mounts("hub", w, &[]).expect("inside");
        assert!(
            hub[0].nested.is_empty(),
            "its own volumes are not nested in it"
        );
        let over: Vec<String> = a
            .others_overlapping("hub", Path::new("/w/var/db/deploy/volumes/conf-1"), w)
            .into_iter()
            .map(|(s, h, ro)| format!("{s} {} {ro}", h.display()))
            .collect();
        assert_eq!(over, ["agent /w/var/db/deploy false"]);
    }
}
