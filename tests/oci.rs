//! The OCI image layouts of `baetyl image oci`, both architectures. `scripts/test.sh` builds them into
//! `$BAETYL_IMAGES/<arch>.oci` (after the OS images, whose static binaries they reuse) and runs these tests
//! with `--ignored`: each layout validates (every blob's size and digest, every layer's diff_id), its seven v1
//! images share the one binary layer, the binary is a static executable for the architecture, and the Python
//! image's root runs Python with grpcio for its architecture: on x86_64 it serves a v1 function call from the
//! runtime's code (chroot, as root), on aarch64 it imports grpc under qemu-aarch64. The x86_64 layout also
//! imports into a real containerd 1.6 (the test kit's, as root), where the Python image runs under runc and a
//! read-only bind mount refuses writes with EROFS. The containerd engine's runtime spec runs the Python image
//! under runc (as root): a dataset refuses writes (EROFS), a volume takes them, the root is read-only, the
//! process sees only itself (PID 1), runs as the service's user without capabilities and with no_new_privs,
//! cannot see the host's files, reaches the host's 127.0.0.1; over its memory limit it is OOM-killed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use baetyl_function::proto::FunctionMessage;
use baetyl_function::proto::function_client::FunctionClient;
use baetyl_function::runtime::PYTHON_RUNTIME;
use baetyl_image::oci::layout::{Found, validate};
use baetyl_master::engine::child::Credentials;
use baetyl_master::engine::containerd::import;
use baetyl_master::engine::containerd::spec::{ImageProcess, SpecParams, runtime_spec};
use baetyl_master::engine::{InstanceSpec, ResolvedMount};
use baetyl_testkit::containerd::Containerd;
use baetyl_testkit::process::Process;
use baetyl_testkit::{eventually_async, free_port, test_dir, workspace_dir};

fn layout(arch: &str) -> PathBuf {
    let dir = std::env::var_os("BAETYL_IMAGES")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_dir().join("target/images"))
        .join(format!("{arch}.oci"));
    assert!(
        dir.join("index.json").is_file(),
        "{}/index.json is missing: build it with `baetyl image oci --arch {arch} --out {}` (scripts/test.sh does)",
        dir.display(),
        dir.display()
    );
    dir
}

fn image<'a>(found: &'a [Found], name: &str) -> &'a Found {
    found
        .iter()
        .find(|f| f.name == format!("{name}:latest"))
        .unwrap_or_else(|| panic!("{name}:latest in the layout"))
}

/// The image's layers unpacked in order into a new directory.
fn unpack(dir: &Path, img: &Found, into: &Path) {
    for l in &img.layers {
        let blob = dir
            .join("blobs/sha256")
            .join(l.as_digest_sha256().expect("sha256"));
        let st = Command::new("tar")
            .arg("-xzf")
            .arg(&blob)
            .arg("-C")
            .arg(into)
            .status()
            .expect("tar");
        assert!(st.success(), "tar -xzf {}", blob.display());
    }
}

fn check_layout(arch: &str, debarch: &str, elf_machine: u16) {
    let dir = layout(arch);
    let found = validate(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let names: Vec<&str> = found.iter().map(|f| f.name.as_str()).collect();
    for n in [
        "baetyl-hub",
        "baetyl-function-manager",
        "baetyl-function-sql",
        "baetyl-function-python3",
        "baetyl-remote-mqtt",
        "baetyl-timer",
        "baetyl-agent",
    ] {
        assert!(
            names.contains(&format!("{n}:latest").as_str()),
            "{n} in {names:?}"
        );
    }
    let base = &found[0].layers[0];
    for f in &found {
        assert_eq!(f.arch, debarch, "{}", f.name);
        assert_eq!(&f.layers[0], base, "{} shares the binary layer", f.name);
        let want = if f.name.starts_with("baetyl-function-python3") {
            2
        } else {
            1
        };
        assert_eq!(f.layers.len(), want, "{}", f.name);
    }
    let root = test_dir("oci-hub");
    unpack(&dir, image(&found, "baetyl-hub"), root.path());
    let bin = std::fs::read(root.path().join("bin/baetyl")).expect("/bin/baetyl in the hub image");
    assert_eq!(&bin[..4], b"\x7fELF");
    assert_eq!(u16::from_le_bytes([bin[18], bin[19]]), elf_machine);
    let blobs = std::fs::read_dir(dir.join("blobs/sha256"))
        .expect("blobs")
        .count();
    // A config and a manifest per image + 2 layers: the binary layer is stored once
    assert_eq!(blobs, 2 * baetyl_image::oci::IMAGES.len() + 2);
}

#[test]
#[ignore = "needs the layouts scripts/test.sh builds"]
fn oci_layouts_validate_and_share_the_binary_layer() {
    check_layout("x86_64", "amd64", 62);
    check_layout("aarch64", "arm64", 183);
}

#[tokio::test]
#[ignore = "needs the layouts scripts/test.sh builds"]
async fn oci_python_image_serves_a_function_x86_64() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: chroot into the Python image needs root");
        return;
    }
    let dir = layout("x86_64");
    let found = validate(&dir).expect("valid layout");
    let root = test_dir("oci-python");
    unpack(&dir, image(&found, "baetyl-function-python3"), root.path());
    // What a container runtime gives every container (grpc reads /dev/urandom).
    for (node, minor) in [("dev/null", 3), ("dev/urandom", 9)] {
        use nix::sys::stat::{Mode, SFlag, makedev, mknod};
        mknod(
            &root.path().join(node),
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            makedev(1, minor),
        )
        .expect("mknod");
    }
    std::fs::create_dir_all(root.path().join("code")).expect("mkdir");
    std::fs::write(
        root.path().join("code/index.py"),
        "import sys\n\ndef handler(event, context):\n    return {'event': event, 'python': sys.executable}\n",
    )
    .expect("write");
    let port = free_port();
    let cfg = serde_json::json!({"functions": [{"name": "f", "handler": "index.handler", "codedir": "/code"}]});
    // The image's interpreter and grpcio, nothing of the host's: the root is the image's.
    let _rt = Process::spawn(
        Command::new("/usr/sbin/chroot")
            .arg(root.path())
            .args(["/usr/bin/python3", "-c", PYTHON_RUNTIME, "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--config-json")
            .arg(cfg.to_string())
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("PYTHONDONTWRITEBYTECODE", "1"),
        "python runtime in the image's root",
    )
    .expect("spawn");
    let mut c = eventually_async(Duration::from_secs(60), "the runtime to serve", || {
        FunctionClient::connect(format!("http://127.0.0.1:{port}"))
    })
    .await;
    let r = c
        .call(FunctionMessage {
            id: 1,
            qos: 0,
            topic: "t".into(),
            payload: br#"{"x":1}"#.to_vec(),
            timestamp: 0,
            function_name: "f".into(),
            function_invoke_id: "i".into(),
        })
        .await
        .expect("call")
        .into_inner();
    let v: serde_json::Value = serde_json::from_slice(&r.payload).expect("json");
    assert_eq!(v["event"], serde_json::json!({"x": 1}));
    assert_eq!(v["python"], "/usr/bin/python3");
}

#[test]
#[ignore = "needs the layouts scripts/test.sh builds"]
fn oci_python_image_imports_grpc_aarch64() {
    let dir = layout("aarch64");
    let found = validate(&dir).expect("valid layout");
    let root = test_dir("oci-python-arm");
    unpack(&dir, image(&found, "baetyl-function-python3"), root.path());
    let out = Command::new("qemu-aarch64")
        .arg("-L")
        .arg(root.path())
        .arg(root.path().join("usr/bin/python3.11"))
        .args([
            "-c",
            "import grpc, platform; print(platform.machine(), grpc.__version__)",
        ])
        .env_clear()
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("qemu-aarch64 (qemu-user-static)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.starts_with("aarch64 "),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
#[ignore = "needs the layouts scripts/test.sh builds"]
fn oci_layouts_import_into_containerd_and_run_x86_64() {
    if let Some(why) = Containerd::unavailable() {
        eprintln!("skipped: {why}");
        return;
    }
    let dir = layout("x86_64");
    let ctd = Containerd::start().expect("containerd");
    // containerd 1.6 imports a layout as a tar archive; the names come from io.containerd.image.name.
    let tar = ctd.dir().join("layout.tar");
    let st = Command::new("tar")
        .arg("-cf")
        .arg(&tar)
        .arg("-C")
        .arg(&dir)
        .args(["oci-layout", "index.json", "blobs"])
        .status()
        .expect("tar");
    assert!(st.success());
    let tar = tar.display().to_string();
    ctd.ctr_ok(&["images", "import", "--all-platforms", &tar])
        .expect("import");
    let images = ctd.ctr_ok(&["images", "ls", "-q"]).expect("images ls");
    for n in [
        "baetyl-hub:latest",
        "baetyl-function-python3:latest",
        "baetyl-timer:latest",
    ] {
        assert!(images.lines().any(|l| l == n), "{n} in {images}");
    }
    // The Python image's interpreter and grpcio run under runc.
    let out = ctd
        .ctr_ok(&[
            "run",
            "--rm",
            "baetyl-function-python3:latest",
            "py",
            "/usr/bin/python3",
            "-c",
            "import grpc, sys; print('grpc', grpc.__version__)",
        ])
        .expect("python in a container");
    assert!(out.starts_with("grpc 1."), "{out}");
    // A read-only bind (what a dataset is) refuses writes with EROFS.
    let data = test_dir("oci-dataset");
    let mount = format!(
        "type=bind,src={},dst=/data,options=rbind:ro",
        data.path().display()
    );
    let out = ctd
        .ctr(&[
            "run",
            "--rm",
            "--mount",
            &mount,
            "baetyl-function-python3:latest",
            "ro",
            "/usr/bin/python3",
            "-c",
            "import errno\ntry:\n  open('/data/x', 'w')\nexcept OSError as e:\n  print(errno.errorcode[e.errno])",
        ])
        .expect("ctr");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "EROFS");
    assert!(!data.path().join("x").exists());
}

/// The python3 image's root, unpacked for runc.
fn python_bundle(prefix: &str) -> tempfile::TempDir {
    let dir = layout("x86_64");
    let found = validate(&dir).expect("valid layout");
    let bundle = test_dir(prefix);
    std::fs::create_dir_all(bundle.path().join("rootfs")).expect("mkdir");
    unpack(
        &dir,
        image(&found, "baetyl-function-python3"),
        &bundle.path().join("rootfs"),
    );
    bundle
}

/// Runs the bundle with runc, the container's spec from the containerd engine's spec builder.
fn runc(bundle: &Path, inst: &InstanceSpec, argv: &[&str]) -> std::process::Output {
    let image = ImageProcess {
        entrypoint: argv.iter().map(|s| s.to_string()).collect(),
        env: vec![
            "PATH=/usr/bin:/bin".into(),
            "PYTHONDONTWRITEBYTECODE=1".into(),
        ],
        ..Default::default()
    };
    let id = format!("baetyl-e2e-{}-{}", std::process::id(), inst.instance);
    let spec = runtime_spec(
        inst,
        &SpecParams {
            image: &image,
            api_socket: None,
            cgroups_path: format!("/{id}"),
            rootfs: "rootfs".into(),
            nofile: (1024, 4096),
        },
    )
    .expect("spec");
    spec.save(bundle.join("config.json")).expect("config.json");
    Command::new("runc")
        .arg("--root")
        .arg(bundle.join("runc-state"))
        .args(["run", "--bundle"])
        .arg(bundle)
        .arg(&id)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("runc")
}

fn instance(name: &str, spec: serde_json::Value, mounts: Vec<ResolvedMount>) -> InstanceSpec {
    InstanceSpec {
        service: name.into(),
        instance: name.into(),
        spec: serde_json::from_value(spec).expect("service spec"),
        env: [("BAETYL_SERVICE_NAME".to_string(), name.to_string())]
            .into_iter()
            .collect(),
        mounts,
        views: Vec::new(),
        user: Some(Credentials {
            uid: 4321,
            gid: 4321,
            groups: vec![],
            log_gid: 4321,
        }),
    }
}

const ISOLATION_PY: &str = r#"
import errno, json, os, socket, sys
def attempt(path):
    try:
        with open(path, "w") as f:
            f.write("x")
        return "ok"
    except OSError as e:
        return errno.errorcode[e.errno]
status = dict(l.split(":\t", 1) for l in open("/proc/self/status").read().splitlines() if ":\t" in l)
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5)
s.sendall(b"hello from the container")
s.close()
print(json.dumps({
    "dataset": attempt("/etc/baetyl/new"),
    "volume": attempt("/var/db/new"),
    "root": attempt("/usr/new"),
    "dataset_read": open("/etc/baetyl/conf").read(),
    "uid": os.getuid(),
    "pid": os.getpid(),
    "processes": len([d for d in os.listdir("/proc") if d.isdigit()]),
    "no_new_privs": status["NoNewPrivs"].strip(),
    "cap_eff": status["CapEff"].strip(),
    "cap_bnd": status["CapBnd"].strip(),
    "host_root_hidden": not os.path.exists("/work") and not os.path.exists("/root/.cargo"),
}))
"#;

#[test]
#[ignore = "needs the layouts scripts/test.sh builds"]
fn container_spec_isolates_under_runc() {
    if let Some(why) = Containerd::unavailable() {
        eprintln!("skipped: {why}");
        return;
    }
    let bundle = python_bundle("runc-isolation");
    let data = test_dir("runc-dataset");
    std::fs::write(data.path().join("conf"), "dataset content").expect("write");
    let vol = test_dir("runc-volume");
    std::os::unix::fs::chown(vol.path(), Some(4321), Some(4321)).expect("chown");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
    let port = listener.local_addr().expect("addr").port();
    let mounts = vec![
        ResolvedMount {
            host: data.path().to_path_buf(),
            target: "etc/baetyl".into(),
            read_only: true,
            shared: false,
            nested: Vec::new(),
        },
        ResolvedMount {
            host: vol.path().to_path_buf(),
            target: "/var/db".into(),
            read_only: false,
            shared: false,
            nested: Vec::new(),
        },
    ];
    let inst = instance(
        "iso",
        serde_json::json!({"image": "baetyl-function-python3"}),
        mounts,
    );
    let port_arg = port.to_string();
    let out = runc(
        bundle.path(),
        &inst,
        &["/usr/bin/python3", "-c", ISOLATION_PY, &port_arg],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "runc: {}{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(text.trim()).expect("json");
    assert_eq!(v["dataset"], "EROFS", "{v}");
    assert_eq!(v["volume"], "ok", "{v}");
    assert_eq!(v["root"], "EROFS", "{v}");
    assert_eq!(v["dataset_read"], "dataset content");
    assert!(vol.path().join("new").is_file());
    assert!(!data.path().join("new").exists());
    assert_eq!(v["uid"], 4321);
    assert_eq!(v["pid"], 1, "own PID namespace");
    assert_eq!(v["processes"], 1, "sees no other process: {v}");
    assert_eq!(v["no_new_privs"], "1");
    assert_eq!(v["cap_eff"], "0000000000000000");
    assert_eq!(
        v["cap_bnd"], "0000000000000400",
        "CAP_NET_BIND_SERVICE only"
    );
    assert_eq!(v["host_root_hidden"], true);
    // The host's network: the container reached this listener at 127.0.0.1.
    let (mut conn, _) = listener.accept().expect("accept");
    let mut got = String::new();
    std::io::Read::read_to_string(&mut conn, &mut got).expect("read");
    assert_eq!(got, "hello from the container");
}

#[test]
#[ignore = "needs the layouts scripts/test.sh builds"]
fn container_over_its_memory_limit_is_oom_killed() {
    if let Some(why) = Containerd::unavailable() {
        eprintln!("skipped: {why}");
        return;
    }
    let bundle = python_bundle("runc-oom");
    let inst = instance(
        "oom",
        serde_json::json!({"image": "baetyl-function-python3", "resources": {"memory": {"limit": "48m", "swap": "0"}}}),
        vec![],
    );
    let out = runc(
        bundle.path(),
        &inst,
        &[
            "/usr/bin/python3",
            "-c",
            "b = bytearray(256 * 1024 * 1024); print('survived')",
        ],
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("survived"));
    // runc reports a container killed by a signal as 128 + the signal: SIGKILL from the OOM killer.
    assert_eq!(
        out.status.code(),
        Some(137),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
#[ignore = "needs the layouts scripts/test.sh builds"]
async fn engine_imports_the_layout_once_without_a_registry() {
    if let Some(why) = Containerd::unavailable() {
        eprintln!("skipped: {why}");
        return;
    }
    let dir = layout("x86_64");
    let ctd = Containerd::start().expect("containerd");
    let channel = import::connect(&ctd.socket()).await.expect("connect");
    let importer = import::Importer::new(channel, "baetyl");
    let first = importer.import(&dir).await.expect("import");
    let n = baetyl_image::oci::IMAGES.len();
    assert_eq!(first.images.len(), n, "{first:?}");
    assert_eq!(
        first.blobs_written,
        2 * n + 2,
        "a config and a manifest per image, one shared binary layer and the Python layer: {first:?}"
    );
    assert_eq!(first.layers_unpacked, 2, "{first:?}");
    let again = importer.import(&dir).await.expect("second import");
    assert_eq!(
        (again.blobs_written, again.layers_unpacked),
        (0, 0),
        "{again:?}"
    );
    // What containerd's own client sees: the images, unpacked, runnable.
    let images = ctd.ctr_ok(&["images", "ls", "-q"]).expect("images ls");
    assert!(images.lines().any(|l| l == "baetyl-hub:latest"), "{images}");
    let out = ctd
        .ctr_ok(&[
            "run",
            "--rm",
            "baetyl-function-python3:latest",
            "imported",
            "/usr/bin/python3",
            "-c",
            "import grpc; print('grpc', grpc.__version__)",
        ])
        .expect("run the imported image");
    assert!(out.starts_with("grpc 1."), "{out}");
    // The lease is gone and the garbage collector keeps everything (the labels hold it).
    let leases = ctd.ctr_ok(&["leases", "ls", "-q"]).expect("leases");
    assert!(leases.trim().is_empty(), "{leases}");
    // Deleting a lease with --sync runs the garbage collector before it answers.
    let lease = ctd.ctr_ok(&["leases", "create"]).expect("lease");
    let lease = lease
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    ctd.ctr_ok(&["leases", "delete", "--sync", &lease])
        .expect("gc");
    let content = ctd.ctr_ok(&["content", "ls", "-q"]).expect("content ls");
    assert_eq!(content.lines().count(), 2 * n + 2, "{content}");
}
