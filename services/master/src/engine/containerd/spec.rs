//! The OCI runtime spec of an instance's container: the image's root read-only; datasets (`read_only`
//! volumes) as read-only binds and volumes read-write; the master's API socket at the device's path with
//! `BAETYL_MASTER_API_ADDRESS` pointing there; the v1 environment; `resources` as cgroup limits; the host's
//! network (a container reaches the hub at 127.0.0.1 as a process does); the service's user; no capability but
//! `CAP_NET_BIND_SERVICE` (v1 applications may listen on ports below 1024) and `no_new_privileges`.
//!
//! Command line, as a container runtime does it: the service's `entrypoint` or else the image's, followed by
//! the service's `command` or else (when the entrypoint is the image's) the image's `Cmd`.

use std::path::Path;

use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxMemoryBuilder,
    LinuxNamespaceType, LinuxPidsBuilder, LinuxResourcesBuilder, Mount, MountBuilder,
    PosixRlimitBuilder, PosixRlimitType, ProcessBuilder, RootBuilder, Spec, UserBuilder,
};

use crate::engine::InstanceSpec;

/// Where the master's API socket appears inside every container (the device's path, DESIGN.md).
pub const API_SOCKET: &str = "/run/baetyl/baetyl.sock";
/// The capabilities a container keeps (bounding, permitted, effective).
pub const CAPABILITIES: &[Capability] = &[Capability::NetBindService];
/// The CFS period CPU limits are expressed in (µs), as the native engine's cgroups.
const CPU_PERIOD: u64 = 100_000;
/// The runc v2 shim's grouping annotation: every container of a spec naming the same group shares one shim
/// process. A shim is a Go program: under emulation starting one costs about a second, and each idles at
/// several MiB; one shim for all the master's containers pays that once. Namespaces, cgroups and the
/// container's own processes are per container as before; the shared shim is containerd's, not the services'.
pub const SHIM_GROUP_ANNOTATION: &str = "io.containerd.runc.v2.group";
/// The group of every container of the master.
pub const SHIM_GROUP: &str = "baetyl";

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error(
        "service `{service}`: no command to run (neither the service nor its image gives an entrypoint)"
    )]
    NoCommand { service: String },
    #[error("service `{service}`: volume target `{target}` must be a path inside the container")]
    BadTarget { service: String, target: String },
    #[error("service `{service}`: resources.memory.swap needs resources.memory.limit")]
    SwapWithoutLimit { service: String },
    #[error("service `{service}`: {what} is out of range")]
    OutOfRange { service: String, what: &'static str },
    #[error("service `{service}`: runtime spec: {detail}")]
    Build { service: String, detail: String },
}

/// What the image says about running it.
#[derive(Debug, Clone, Default)]
pub struct ImageProcess {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `KEY=VALUE` entries (PATH, ...).
    pub env: Vec<String>,
    pub working_dir: Option<String>,
}

/// What the engine decides for a container.
#[derive(Debug, Clone)]
pub struct SpecParams<'a> {
    pub image: &'a ImageProcess,
    /// The master's API socket on the host, bound to [`API_SOCKET`].
    pub api_socket: Option<&'a Path>,
    /// The container's cgroup (runc's cgroupfs path, e.g. `/baetyl/hub.hub`).
    pub cgroups_path: String,
    /// The root filesystem, relative to the bundle (containerd: `rootfs`).
    pub rootfs: String,
    /// The descriptor limit (soft, hard): `ulimits.nofile` or the native engine's default
    /// ([`crate::limits::service_nofile`]), so a service gets the same on both engines.
    pub nofile: (u64, u64),
}

/// The process's command line (see the module's doc).
pub fn argv(inst: &InstanceSpec, image: &ImageProcess) -> Result<Vec<String>, SpecError> {
    let spec = &inst.spec;
    let mut argv = match &spec.entrypoint {
        Some(ep) => ep.to_vec(),
        None => image.entrypoint.clone(),
    };
    match &spec.command {
        Some(c) => argv.extend(c.to_vec()),
        None if spec.entrypoint.is_none() => argv.extend(image.cmd.iter().cloned()),
        None => {}
    }
    if argv.is_empty() {
        return Err(SpecError::NoCommand {
            service: inst.service.clone(),
        });
    }
    Ok(argv)
}

fn bind(source: &Path, target: &str, read_only: bool) -> Result<Mount, String> {
    let mode = if read_only { "ro" } else { "rw" };
    MountBuilder::default()
        .destination(target)
        .typ("bind")
        .source(source)
        .options(vec![
            "rbind".to_string(),
            mode.to_string(),
            "nosuid".to_string(),
            "nodev".to_string(),
        ])
        .build()
        .map_err(|e| e.to_string())
}

/// The container's target of a volume: absolute, without `..` (the config layer checked this already; a
/// container runtime must not be given anything else).
fn target(inst: &InstanceSpec, t: &str) -> Result<String, SpecError> {
    let p = Path::new(t);
    let bad = p
        .components()
        .any(|c| matches!(c, std::path::Component::ParentDir));
    if bad || t.trim_matches('/').is_empty() {
        return Err(SpecError::BadTarget {
            service: inst.service.clone(),
            target: t.to_string(),
        });
    }
    Ok(if t.starts_with('/') {
        t.to_string()
    } else {
        format!("/{t}")
    })
}

/// The runtime spec of `inst`'s container.
pub fn runtime_spec(inst: &InstanceSpec, p: &SpecParams<'_>) -> Result<Spec, SpecError> {
    let service = inst.service.clone();
    let build = |detail: String| SpecError::Build {
        service: service.clone(),
        detail,
    };
    let range = |what: &'static str| SpecError::OutOfRange {
        service: service.clone(),
        what,
    };

    // Environment: the image's, then the instance's (the v1 contract included), the API address last.
    let mut env: Vec<String> = p.image.env.clone();
    let mut set = |k: &str, v: &str| {
        env.retain(|e| e.split('=').next() != Some(k));
        env.push(format!("{k}={v}"));
    };
    for (k, v) in &inst.env {
        set(k, v);
    }
    if p.api_socket.is_some() {
        set(
            baetyl_sdk::env::MASTER_API_ADDRESS,
            &format!("unix://{API_SOCKET}"),
        );
    }

    let caps: std::collections::HashSet<Capability> = CAPABILITIES.iter().copied().collect();
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(caps.clone())
        .permitted(caps.clone())
        .effective(caps)
        .inheritable(std::collections::HashSet::new())
        .ambient(std::collections::HashSet::new())
        .build()
        .map_err(|e| build(e.to_string()))?;
    let (uid, gid, groups) = match &inst.user {
        Some(c) => (c.uid, c.gid, c.groups.clone()),
        None => (0, 0, Vec::new()),
    };
    let user = UserBuilder::default()
        .uid(uid)
        .gid(gid)
        .additional_gids(groups)
        .build()
        .map_err(|e| build(e.to_string()))?;
    let process = ProcessBuilder::default()
        .terminal(false)
        .args(argv(inst, p.image)?)
        .env(env)
        .cwd(p.image.working_dir.clone().unwrap_or_else(|| "/".into()))
        .user(user)
        .rlimits(vec![
            PosixRlimitBuilder::default()
                .typ(PosixRlimitType::RlimitNofile)
                .soft(p.nofile.0)
                .hard(p.nofile.1)
                .build()
                .map_err(|e| build(e.to_string()))?,
        ])
        .capabilities(capabilities)
        .no_new_privileges(true)
        .build()
        .map_err(|e| build(e.to_string()))?;

    let mut mounts = oci_spec::runtime::get_default_mounts();
    // /tmp and /run are the container's own, in memory (the root is read-only).
    for dir in ["/tmp", "/run"] {
        mounts.push(
            MountBuilder::default()
                .destination(dir)
                .typ("tmpfs")
                .source("tmpfs")
                .options(
                    ["nosuid", "nodev", "mode=1777", "size=65536k"]
                        .map(String::from)
                        .to_vec(),
                )
                .build()
                .map_err(|e| build(e.to_string()))?,
        );
    }
    for m in &inst.mounts {
        mounts.push(bind(&m.host, &target(inst, &m.target)?, m.read_only).map_err(&build)?);
    }
    if let Some(sock) = p.api_socket {
        mounts.push(bind(sock, API_SOCKET, false).map_err(&build)?);
    }
    for v in &inst.views {
        let at = v.to_str().filter(|t| t.starts_with('/')).ok_or_else(|| {
            build(format!(
                "{} cannot be a container path (not absolute UTF-8)",
                v.display()
            ))
        })?;
        mounts.push(bind(v, at, true).map_err(&build)?);
    }

    let res = &inst.spec.resources;
    let mut resources = LinuxResourcesBuilder::default();
    if let Some(mem) = &res.memory {
        let mut m = LinuxMemoryBuilder::default();
        let limit = mem
            .limit
            .map(|l| i64::try_from(l.0).map_err(|_| range("resources.memory.limit")))
            .transpose()?;
        if let Some(l) = limit {
            m = m.limit(l);
        }
        if let Some(swap) = mem.swap {
            // OCI's swap is memory + swap.
            let l = limit.ok_or_else(|| SpecError::SwapWithoutLimit {
                service: service.clone(),
            })?;
            let s = i64::try_from(swap.0).map_err(|_| range("resources.memory.swap"))?;
            m = m.swap(
                l.checked_add(s)
                    .ok_or_else(|| range("resources.memory.swap"))?,
            );
        }
        resources = resources.memory(m.build().map_err(|e| build(e.to_string()))?);
    }
    if let Some(cpu) = &res.cpu {
        let mut c = LinuxCpuBuilder::default();
        if let Some(cpus) = cpu.cpus {
            if !(cpus.is_finite() && cpus > 0.0) {
                return Err(range("resources.cpu.cpus"));
            }
            let quota = ((cpus * CPU_PERIOD as f64) as i64).max(1000);
            c = c.quota(quota).period(CPU_PERIOD);
        }
        if let Some(set) = &cpu.setcpus {
            c = c.cpus(set.clone());
        }
        resources = resources.cpu(c.build().map_err(|e| build(e.to_string()))?);
    }
    if let Some(l) = res.pids.as_ref().and_then(|p| p.limit) {
        let l = i64::try_from(l).map_err(|_| range("resources.pids.limit"))?;
        resources = resources.pids(
            LinuxPidsBuilder::default()
                .limit(l)
                .build()
                .map_err(|e| build(e.to_string()))?,
        );
    }
    let resources = resources.build().map_err(|e| build(e.to_string()))?;

    // The host's network: every namespace of the default but the network one.
    let namespaces: Vec<_> = oci_spec::runtime::get_default_namespaces()
        .into_iter()
        .filter(|n| n.typ() != LinuxNamespaceType::Network)
        .collect();
    let linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .resources(resources)
        .cgroups_path(std::path::PathBuf::from(&p.cgroups_path))
        .masked_paths(oci_spec::runtime::get_default_maskedpaths())
        .readonly_paths(oci_spec::runtime::get_default_readonly_paths())
        .build()
        .map_err(|e| build(e.to_string()))?;
    let root = RootBuilder::default()
        .path(&p.rootfs)
        .readonly(true)
        .build()
        .map_err(|e| build(e.to_string()))?;
    let mut spec = Spec::default();
    spec.set_version("1.0.2".to_string())
        .set_process(Some(process))
        .set_root(Some(root))
        .set_hostname(Some(
            inst.spec
                .hostname
                .clone()
                .unwrap_or_else(|| inst.service.clone()),
        ))
        .set_mounts(Some(mounts))
        .set_annotations(Some(
            [(SHIM_GROUP_ANNOTATION.to_string(), SHIM_GROUP.to_string())].into(),
        ))
        .set_linux(Some(linux));
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ResolvedMount;
    use std::path::PathBuf;

    fn instance(yaml: &str) -> InstanceSpec {
        let spec = serde_yaml_ng::from_str(yaml).unwrap();
        InstanceSpec {
            service: "svc".into(),
            instance: "svc".into(),
            spec,
            env: [("BAETYL_SERVICE_NAME".to_string(), "svc".to_string())]
                .into_iter()
                .collect(),
            mounts: vec![
                ResolvedMount {
                    host: PathBuf::from("/data/ds"),
                    target: "etc/baetyl".into(),
                    read_only: true,
                    shared: false,
                    nested: Vec::new(),
                },
                ResolvedMount {
                    host: PathBuf::from("/data/vol"),
                    target: "/var/db".into(),
                    read_only: false,
                    shared: false,
                    nested: Vec::new(),
                },
            ],
            views: vec![PathBuf::from("/w/var/log/baetyl/services")],
            user: Some(crate::engine::child::Credentials {
                uid: 1001,
                gid: 1001,
                groups: vec![900],
                log_gid: 1001,
            }),
        }
    }

    fn image() -> ImageProcess {
        ImageProcess {
            entrypoint: vec!["/bin/baetyl".into(), "hub".into()],
            cmd: vec![],
            env: vec!["PATH=/usr/bin:/bin".into(), "BAETYL_SERVICE_NAME=x".into()],
            working_dir: None,
        }
    }

    fn spec_of(yaml: &str) -> Spec {
        let img = image();
        runtime_spec(
            &instance(yaml),
            &SpecParams {
                image: &img,
                api_socket: Some(Path::new("/w/var/run/baetyl.sock")),
                cgroups_path: "/baetyl/svc.svc".into(),
                rootfs: "rootfs".into(),
                nofile: (1000, 2000),
            },
        )
        .unwrap()
    }

    #[test]
    fn mounts_env_user_and_privileges() {
        let s = spec_of("image: baetyl-hub");
        let p = s.process().as_ref().unwrap();
        assert_eq!(p.args().as_deref().unwrap(), ["/bin/baetyl", "hub"]);
        let env = p.env().as_ref().unwrap();
        assert!(
            env.contains(&"BAETYL_SERVICE_NAME=svc".to_string()),
            "{env:?}"
        );
        assert!(env.contains(&format!("BAETYL_MASTER_API_ADDRESS=unix://{API_SOCKET}")));
        assert_eq!(
            env.iter()
                .filter(|e| e.starts_with("BAETYL_SERVICE_NAME="))
                .count(),
            1
        );
        assert_eq!((p.user().uid(), p.user().gid()), (1001, 1001));
        assert_eq!(p.no_new_privileges(), Some(true));
        let rl = p.rlimits().as_ref().unwrap();
        assert_eq!(rl.len(), 1);
        assert_eq!(
            (rl[0].typ(), rl[0].soft(), rl[0].hard()),
            (PosixRlimitType::RlimitNofile, 1000, 2000)
        );
        let caps = p.capabilities().as_ref().unwrap();
        assert_eq!(caps.effective().as_ref().unwrap().len(), 1);
        assert!(caps.ambient().as_ref().unwrap().is_empty());
        assert_eq!(s.root().as_ref().unwrap().readonly(), Some(true));
        let mounts = s.mounts().as_ref().unwrap();
        let find = |d: &str| {
            mounts
                .iter()
                .find(|m| m.destination() == Path::new(d))
                .unwrap_or_else(|| panic!("{d} in {mounts:?}"))
        };
        assert!(
            find("/etc/baetyl")
                .options()
                .as_ref()
                .unwrap()
                .contains(&"ro".to_string())
        );
        assert!(
            find("/var/db")
                .options()
                .as_ref()
                .unwrap()
                .contains(&"rw".to_string())
        );
        assert_eq!(
            s.annotations().as_ref().unwrap()[SHIM_GROUP_ANNOTATION],
            SHIM_GROUP
        );
        // A view of the master's files (the agent's instance logs) at the master's own path, read-only.
        let view = find("/w/var/log/baetyl/services");
        assert_eq!(
            view.source().as_deref(),
            Some(Path::new("/w/var/log/baetyl/services"))
        );
        assert!(view.options().as_ref().unwrap().contains(&"ro".to_string()));
        assert_eq!(
            find(API_SOCKET).source().as_deref(),
            Some(Path::new("/w/var/run/baetyl.sock"))
        );
        let ns = s.linux().as_ref().unwrap().namespaces().as_ref().unwrap();
        assert!(
            ns.iter().all(|n| n.typ() != LinuxNamespaceType::Network),
            "host network"
        );
        assert!(ns.iter().any(|n| n.typ() == LinuxNamespaceType::Pid));
        assert_eq!(s.hostname().as_deref(), Some("svc"));
    }

    #[test]
    fn resources_become_cgroup_limits() {
        let s = spec_of(
            "image: x\nresources: {cpu: {cpus: 0.5, setcpus: '0'}, memory: {limit: 64m, swap: 16m}, pids: {limit: 32}}",
        );
        let r = s.linux().as_ref().unwrap().resources().as_ref().unwrap();
        let m = r.memory().as_ref().unwrap();
        assert_eq!(m.limit(), Some(64 << 20));
        assert_eq!(m.swap(), Some(80 << 20), "OCI swap is memory + swap");
        let c = r.cpu().as_ref().unwrap();
        assert_eq!((c.quota(), c.period()), (Some(50_000), Some(100_000)));
        assert_eq!(c.cpus().as_deref(), Some("0"));
        assert_eq!(r.pids().as_ref().unwrap().limit(), 32);
    }

    #[test]
    fn command_and_entrypoint_as_a_container_runtime_does() {
        let s = spec_of("image: x\ncommand: [-c, conf.yml]");
        assert_eq!(
            s.process().as_ref().unwrap().args().as_deref().unwrap(),
            ["/bin/baetyl", "hub", "-c", "conf.yml"]
        );
        let s = spec_of("image: x\nentrypoint: /usr/bin/python3 -V");
        assert_eq!(
            s.process().as_ref().unwrap().args().as_deref().unwrap(),
            ["/usr/bin/python3", "-V"]
        );
    }

    #[test]
    fn bad_input_is_refused_with_the_service_named() {
        let img = ImageProcess::default();
        let params = SpecParams {
            image: &img,
            api_socket: None,
            cgroups_path: String::new(),
            rootfs: "rootfs".into(),
            nofile: (1024, 1024),
        };
        let err = runtime_spec(&instance("image: x"), &params).unwrap_err();
        assert!(err.to_string().contains("no command"), "{err}");
        let mut inst = instance("image: x\nentrypoint: [a]");
        inst.mounts[0].target = "../../etc".into();
        let err = runtime_spec(&inst, &params).unwrap_err();
        assert!(err.to_string().contains("`../../etc`"), "{err}");
        let err = runtime_spec(
            &instance("image: x\nentrypoint: [a]\nresources: {memory: {swap: 1m}}"),
            &params,
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("needs resources.memory.limit"),
            "{err}"
        );
    }
}
