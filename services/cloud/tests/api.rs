//! The fleet server in-process on a free port, against SQLite and against a PostgreSQL cluster the test starts:
//! keys and tokens, roles and the audit log, uploads and signatures, registration, desired state on the link,
//! revocation, and two processes on one PostgreSQL.

// The scenarios are async helpers shared by the SQLite and PostgreSQL tests; a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use baetyl_agent::proto::{Desired, Down, Manifest, Op, Up};
use common::*;
use serde_json::{Value, json};

const APP_V1: &str = "version: v1\napp_version: v1\nservices:\n  hub:\n    image: baetyl-hub\n    volumes: [hub-conf:/etc/baetyl]\nvolumes:\n  hub-conf: {path: var/db/baetyl/conf/hub}\n";
const HUB_CONF: &str = "listen: [tcp://127.0.0.1:1883]\nprincipals:\n  - {username: sensor, password: '${secret.hub-sensor}', permissions: [{action: pub, permit: ['#']}]}\n";

#[tokio::test]
async fn keys_tokens_roles_and_audit_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    keys_tokens_roles_and_audit(dir.path(), None).await;
}

#[tokio::test]
async fn keys_tokens_roles_and_audit_postgres() {
    let pg = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    keys_tokens_roles_and_audit(dir.path(), Some(pg.url.clone())).await;
}

async fn keys_tokens_roles_and_audit(root: &std::path::Path, db: Option<String>) {
    let data = root.join("data");
    let cloud = Cloud::start(&data, db.clone()).await;
    for f in ["ca.key", "signing.key", "provisioning.key", "admin.token"] {
        let mode = std::fs::metadata(data.join(f))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{f} must be private");
    }
    let (status, fleet) = call(&cloud.admin(), "GET", "/api/v1/fleet", None).await;
    assert_eq!(status, 200, "{fleet}");
    assert_eq!(fleet["signing_key"], cloud.signing_key().to_string());

    let (status, body) = call(&cloud.client(None), "GET", "/api/v1/devices", None).await;
    assert_eq!(status, 401, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("Authorization: Bearer"),
        "{body}"
    );
    let (status, _) = call(
        &cloud.client(Some("bct_0000_nope")),
        "GET",
        "/api/v1/devices",
        None,
    )
    .await;
    assert_eq!(status, 401);

    let (status, t) = call(
        &cloud.admin(),
        "POST",
        "/api/v1/tokens",
        Some(json!({"name": "viewer", "role": "read-only"})),
    )
    .await;
    assert_eq!(status, 200, "{t}");
    let viewer = cloud.client(t["token"].as_str());
    let (status, _) = call(&viewer, "GET", "/api/v1/devices", None).await;
    assert_eq!(status, 200);
    let (status, body) = call(
        &viewer,
        "POST",
        "/api/v1/devices",
        Some(json!({"name": "x"})),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(body["error"].as_str().unwrap().contains("admin"), "{body}");
    let (status, _) = call(&viewer, "GET", "/api/v1/fleet/provisioning-key", None).await;
    assert_eq!(status, 403);

    let (status, audit) = call(&viewer, "GET", "/api/v1/audit", None).await;
    assert_eq!(status, 200);
    let actions: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert!(actions.contains(&"token.create"), "{audit}");
    let created = audit
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "token.create")
        .unwrap();
    assert!(
        created["actor"].as_str().unwrap().starts_with("admin"),
        "{created}"
    );
    assert_eq!(created["outcome"], "ok");

    let (status, _) = call(
        &cloud.admin(),
        "DELETE",
        &format!("/api/v1/tokens/{}", t["id"].as_str().unwrap()),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = call(&viewer, "GET", "/api/v1/devices", None).await;
    assert_eq!(status, 401, "a revoked token stops working");

    // A restart keeps the keys and the tokens.
    let ca = cloud.ca();
    cloud.stop().await;
    let cloud = Cloud::start(&data, db).await;
    assert_eq!(cloud.ca(), ca);
    let (status, _) = call(&cloud.admin(), "GET", "/api/v1/devices", None).await;
    assert_eq!(status, 200);
    cloud.stop().await;
}

#[tokio::test]
async fn uploads_are_checked_and_manifests_signed_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let cloud = Cloud::start(&dir.path().join("data"), None).await;
    let admin = cloud.admin();
    let app = app_dir(
        dir.path(),
        "demo",
        APP_V1,
        &[("conf/hub/service.yml", HUB_CONF)],
    );
    let (status, v) = push(&admin, &app, "demo").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["version"], "v1");
    assert_eq!(v["secrets"], json!(["hub-sensor"]));
    let (status, again) = push(&admin, &app, "demo").await;
    assert_eq!(status, 409, "{again}");
    assert!(
        again["error"].as_str().unwrap().contains("immutable"),
        "{again}"
    );

    let (_, shown) = call(&admin, "GET", "/api/v1/apps/demo/versions/v1", None).await;
    let signed = baetyl_agent::proto::Signed {
        payload: shown["payload"].as_str().unwrap().to_string(),
        signature: shown["signature"].as_str().unwrap().to_string(),
    };
    let m: Manifest = signed
        .open(&cloud.signing_key())
        .expect("the manifest verifies with signing.pub");
    assert_eq!(m.volumes["hub-conf"][0].path, "service.yml");

    let bad = app_dir(
        dir.path(),
        "bad",
        "version: v1\napp_version: b1\nservices:\n  hub: {image: baetyl-hub, restart: {policy: sometimes}}\n",
        &[],
    );
    let (status, v) = push(&admin, &bad, "bad").await;
    assert_eq!(status, 400, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("services.hub.restart.policy"),
        "{v}"
    );
    let agent = app_dir(
        dir.path(),
        "agent",
        "version: v1\napp_version: a1\nservices:\n  agent: {image: baetyl-agent}\n",
        &[],
    );
    let (status, v) = push(&admin, &agent, "agent").await;
    assert_eq!(status, 400, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("carries its own agent"),
        "{v}"
    );
    let (status, v) = call(
        &admin,
        "POST",
        "/api/v1/apps/demo/versions",
        Some(json!({"application": {"sha256": "0".repeat(64), "size": 3}})),
    )
    .await;
    assert_eq!(status, 400, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("was not uploaded"),
        "{v}"
    );
    let body = b"hello".to_vec();
    let err = admin
        .call(
            "PUT",
            &format!("/api/v1/blobs/{}", "a".repeat(64)),
            &[],
            body,
            1000,
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("hashes to"), "{err}");
    cloud.stop().await;
}

#[tokio::test]
async fn devices_register_once_with_their_own_key_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let cloud = Cloud::start(&dir.path().join("data"), None).await;
    let cfg = agent_config(&cloud, &dir.path().join("dev1"), Some("pump-1"), None);
    let id = baetyl_agent::identity::register(&cfg, &cloud.ca())
        .await
        .unwrap();
    assert!(id.device.starts_with('d'));
    let key = std::fs::metadata(dir.path().join("dev1/state/device.key")).unwrap();
    assert_eq!(key.permissions().mode() & 0o777, 0o600);
    // The same device again (an answer lost): the same certificate.
    let again = baetyl_agent::identity::register(&cfg, &cloud.ca())
        .await
        .unwrap();
    assert_eq!(again.cert_pem, id.cert_pem);
    // Another card asking for the same name: refused.
    let other = agent_config(&cloud, &dir.path().join("dev2"), Some("pump-1"), None);
    let err = baetyl_agent::identity::register(&other, &cloud.ca())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("registers once"), "{err}");
    // A wrong fleet key.
    std::fs::write(dir.path().join("dev2/provisioning.key"), "bpk_wrong").unwrap();
    let renamed = agent_config(&cloud, &dir.path().join("dev3"), Some("pump-3"), None);
    std::fs::write(dir.path().join("dev3/provisioning.key"), "bpk_wrong").unwrap();
    let err = baetyl_agent::identity::register(&renamed, &cloud.ca())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("401"), "{err}");
    // A device made by an operator, with a one-time token.
    let (status, made) = call(
        &cloud.admin(),
        "POST",
        "/api/v1/devices",
        Some(json!({"name": "gate", "tags": ["east"]})),
    )
    .await;
    assert_eq!(status, 200, "{made}");
    let token = made["token"].as_str().unwrap();
    let with_token = agent_config(&cloud, &dir.path().join("dev4"), None, Some(token));
    let gate = baetyl_agent::identity::register(&with_token, &cloud.ca())
        .await
        .unwrap();
    assert_eq!(gate.name, "gate");
    let reuse = agent_config(&cloud, &dir.path().join("dev5"), None, Some(token));
    let err = baetyl_agent::identity::register(&reuse, &cloud.ca())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("401"),
        "a used token does not register another device: {err}"
    );
    let fleet_key_for_gate = agent_config(&cloud, &dir.path().join("dev6"), Some("gate"), None);
    assert!(
        baetyl_agent::identity::register(&fleet_key_for_gate, &cloud.ca())
            .await
            .is_err()
    );
    let (_, devices) = call(&cloud.admin(), "GET", "/api/v1/devices", None).await;
    let names: Vec<&str> = devices
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["gate", "pump-1"]);
    let (_, audit) = call(&cloud.admin(), "GET", "/api/v1/audit", None).await;
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "device.register" && e["target"] == id.device.as_str())
    );
    cloud.stop().await;
}

#[tokio::test]
async fn desired_state_on_the_link_and_revocation_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    desired_state_on_the_link_and_revocation(dir.path(), None).await;
}

#[tokio::test]
async fn desired_state_on_the_link_and_revocation_postgres() {
    let pg = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    desired_state_on_the_link_and_revocation(dir.path(), Some(pg.url.clone())).await;
}

async fn desired_state_on_the_link_and_revocation(root: &std::path::Path, db: Option<String>) {
    let cloud = Cloud::start(&root.join("data"), db).await;
    let admin = cloud.admin();
    let app = app_dir(root, "demo", APP_V1, &[("conf/hub/service.yml", HUB_CONF)]);
    assert_eq!(push(&admin, &app, "demo").await.0, 200);
    let dev = FakeDevice::register(&cloud, &root.join("dev1"), "pump-1").await;
    let other = FakeDevice::register(&cloud, &root.join("dev2"), "pump-2").await;
    let mut link = dev.link().await;

    let started = Instant::now();
    let (status, d) = call(
        &admin,
        "POST",
        "/api/v1/deployments",
        Some(json!({"app": "demo", "version": "v1", "device": "pump-1"})),
    )
    .await;
    assert_eq!(status, 200, "{d}");
    let desired = match link.next().await {
        Some(Down::Desired { desired }) => desired,
        other => panic!("expected the desired state, got {other:?}"),
    };
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "desired state took {:?}",
        started.elapsed()
    );
    let doc: Desired = desired.open(&cloud.signing_key()).unwrap();
    assert_eq!(doc.device, dev.identity.device);
    assert_eq!(doc.revision, d["revision"].as_u64().unwrap());
    let secret = doc.secrets["hub-sensor"].clone();
    assert_eq!(secret.len(), 32);
    let manifest: Manifest = doc.manifest.open(&cloud.signing_key()).unwrap();

    // Blobs: whole, resumed with Range, and only for the device they were issued to.
    let sha = &manifest.volumes["hub-conf"][0].blob.sha256;
    let whole = dev
        .client
        .call(
            "GET",
            &format!("/device/v1/blobs/{sha}"),
            &[],
            vec![],
            1 << 20,
        )
        .await
        .unwrap();
    assert_eq!(whole, HUB_CONF.as_bytes());
    let part = dev
        .client
        .call(
            "GET",
            &format!("/device/v1/blobs/{sha}"),
            &[("range", "bytes=10-")],
            vec![],
            1 << 20,
        )
        .await
        .unwrap();
    assert_eq!(part, &HUB_CONF.as_bytes()[10..]);
    let err = other
        .client
        .call(
            "GET",
            &format!("/device/v1/blobs/{sha}"),
            &[],
            vec![],
            1 << 20,
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("404"), "{err}");
    let err = cloud
        .client(None)
        .call(
            "GET",
            &format!("/device/v1/blobs/{sha}"),
            &[],
            vec![],
            1 << 20,
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("401"), "{err}");

    // A report and deployment steps show in the device's view.
    link.send(&Up::Events {
        events: vec![baetyl_agent::proto::DeployEvent {
            revision: doc.revision,
            trace: "t".into(),
            step: baetyl_agent::proto::Step::Restarted,
            message: "running".into(),
            error: None,
            time: baetyl_agent::proto::now(),
        }],
    })
    .await;
    link.send(&Up::Report(Box::new(baetyl_agent::proto::Report {
        time: baetyl_agent::proto::now(),
        applied_revision: doc.revision,
        last: None,
        summary: baetyl_agent::proto::Summary {
            app_version: "v1".into(),
            services: 1,
            running: 1,
            cpu_percent: Some(3.5),
            mem_used: Some(1),
            mem_total: Some(2),
            error: String::new(),
        },
        inspect: json!({"services": []}),
    })))
    .await;
    let view = eventually(
        Duration::from_secs(5),
        "the report to be recorded",
        || async {
            let (_, v) = call(&admin, "GET", "/api/v1/devices/pump-1", None).await;
            (v["app_version"] == "v1" && v["update_state"] == "RESTARTED").then_some(v)
        },
    )
    .await;
    assert_eq!(view["online"], true, "{view}");
    assert_eq!(view["deployments"][0]["state"], "RESTARTED");
    assert_eq!(view["cpu_percent"], 3.5);

    // A tag deployment reaches every device of the tag, and a reconnecting device gets its desired state.
    let (status, _) = call(
        &admin,
        "PUT",
        &format!("/api/v1/devices/{}/tags", other.identity.device),
        Some(json!({"tags": ["east"]})),
    )
    .await;
    assert_eq!(status, 200);
    let mut link2 = other.link().await;
    let (status, d) = call(
        &admin,
        "POST",
        "/api/v1/deployments",
        Some(json!({"app": "demo", "version": "v1", "tag": "east"})),
    )
    .await;
    assert_eq!(status, 200, "{d}");
    assert_eq!(d["devices"], 1);
    assert!(matches!(link2.next().await, Some(Down::Desired { .. })));

    // Commands: the device answers an inspect.
    let admin2 = admin.clone();
    let asked =
        tokio::spawn(
            async move { call(&admin2, "POST", "/api/v1/devices/pump-1/inspect", None).await },
        );
    let id = match link.next().await {
        Some(Down::Command {
            id,
            op: Op::Inspect,
        }) => id,
        other => panic!("expected an inspect command, got {other:?}"),
    };
    link.send(&Up::Result {
        id,
        ok: true,
        body: json!({"answer": 42}),
        error: None,
    })
    .await;
    let (status, v) = asked.await.unwrap();
    assert_eq!((status, v), (200, json!({"answer": 42})));

    // Revocation cuts the link at once, and the certificate stops working.
    let (status, _) = call(&admin, "POST", "/api/v1/devices/pump-1/revoke", None).await;
    assert_eq!(status, 200);
    let cut = Instant::now();
    loop {
        match link.next_within(Duration::from_secs(3)).await {
            None => break,
            Some(_) => assert!(
                cut.elapsed() < Duration::from_secs(3),
                "the link stayed open"
            ),
        }
    }
    assert!(
        cut.elapsed() < Duration::from_secs(2),
        "cut after {:?}",
        cut.elapsed()
    );
    let Err(err) = dev
        .client
        .websocket(baetyl_agent::proto::LINK_PATH, 1 << 20)
        .await
    else {
        panic!("a revoked device cannot link");
    };
    assert!(err.is_refusal(), "{err}");
    let err = dev
        .client
        .call(
            "GET",
            &format!("/device/v1/blobs/{sha}"),
            &[],
            vec![],
            1 << 20,
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("403"), "{err}");
    let (status, v) = call(&admin, "POST", "/api/v1/devices/pump-1/inspect", None).await;
    assert_eq!(status, 409, "{v}");
    drop(link2);
    cloud.stop().await;
}

/// Two cloud processes on one PostgreSQL serve one fleet: a deployment through one reaches a device linked to
/// the other within 2 s; commands and their (large) answers travel between them; revocation through one cuts
/// the link held by the other. A process with other keys is refused.
#[tokio::test]
async fn two_processes_on_one_postgres() {
    let pg = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    let a = Cloud::start(&dir.path().join("a"), Some(pg.url.clone())).await;
    let b_dir = dir.path().join("b");
    std::fs::create_dir_all(&b_dir).unwrap();
    for f in ["ca.key", "ca.crt", "signing.key"] {
        std::fs::copy(dir.path().join("a").join(f), b_dir.join(f)).unwrap();
    }
    let b = Cloud::start(&b_dir, Some(pg.url.clone())).await;
    let admin_a = a.admin();
    let app = app_dir(
        dir.path(),
        "demo",
        APP_V1,
        &[("conf/hub/service.yml", HUB_CONF)],
    );
    assert_eq!(push(&admin_a, &app, "demo").await.0, 200);
    let dev = FakeDevice::register(&a, &dir.path().join("dev"), "far").await;
    let mut link = dev.via(&b).link().await;
    eventually(
        Duration::from_secs(5),
        "the device to show online",
        || async {
            let (_, v) = call(&admin_a, "GET", "/api/v1/devices/far", None).await;
            (v["online"] == true).then_some(())
        },
    )
    .await;

    let started = Instant::now();
    let (status, _) = call(
        &admin_a,
        "POST",
        "/api/v1/deployments",
        Some(json!({"app": "demo", "version": "v1", "device": "far"})),
    )
    .await;
    assert_eq!(status, 200);
    assert!(matches!(link.next().await, Some(Down::Desired { .. })));
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "desired state through the other process took {took:?}"
    );

    let admin2 = admin_a.clone();
    let asked =
        tokio::spawn(
            async move { call(&admin2, "POST", "/api/v1/devices/far/inspect", None).await },
        );
    let id = match link.next().await {
        Some(Down::Command { id, .. }) => id,
        other => panic!("expected a command, got {other:?}"),
    };
    let big: Value = json!({"padding": "x".repeat(20_000)});
    link.send(&Up::Result {
        id,
        ok: true,
        body: big.clone(),
        error: None,
    })
    .await;
    let (status, v) = asked.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(v, big, "a large answer comes back through the relay");

    let (status, _) = call(&admin_a, "POST", "/api/v1/devices/far/revoke", None).await;
    assert_eq!(status, 200);
    let cut = Instant::now();
    while link.next_within(Duration::from_secs(3)).await.is_some() {}
    assert!(
        cut.elapsed() < Duration::from_secs(2),
        "the other process cut the link after {:?}",
        cut.elapsed()
    );

    // A process with keys of its own cannot join this fleet's database.
    let stranger = tokio::spawn({
        let url = pg.url.clone();
        let d = dir.path().join("c");
        async move {
            let cfg = baetyl_cloud::CloudConfig {
                data_dir: d,
                database: Some(url),
                ..Default::default()
            };
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            baetyl_cloud::run(cfg, l, std::future::pending()).await
        }
    });
    let err = tokio::time::timeout(Duration::from_secs(30), stranger)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err()
        .to_string();
    assert!(err.contains("other keys"), "{err}");
    a.stop().await;
    b.stop().await;
}
