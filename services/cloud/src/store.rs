//! The fleet's storage: one layer over SQLite (embedded, the default) and PostgreSQL (several cloud processes on
//! one database), through sqlx's `Any` driver with portable SQL and versioned migrations
//! (`services/cloud/migrations/NNNN_*.sql`, applied at start under sqlx's migration lock).
//!
//! Times are unix milliseconds; documents are JSON text. Everything the server knows lives here, so cloud
//! processes are stateless apart from the key files.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{AnyPool, Row, SqlSafeStr};

use crate::error::CloudError;

type Result<T> = std::result::Result<T, CloudError>;

/// The migrations, in order. Add a file and a line here for a schema change; never edit an applied one.
const MIGRATIONS: &[(i64, &str, &str)] =
    &[(1, "fleet", include_str!("../migrations/0001_fleet.sql"))];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    url: String,
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn db(e: sqlx::Error) -> CloudError {
    CloudError::Database(e.to_string())
}

#[derive(Debug, Clone)]
pub struct Fleet {
    pub ca_cert: String,
    pub signing_public: String,
    pub provisioning_hash: String,
}

#[derive(Debug, Clone)]
pub struct Token {
    pub id: String,
    pub name: String,
    pub role: String,
    pub hash: String,
    pub created: i64,
    pub revoked: Option<i64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Device {
    pub id: String,
    pub name: String,
    pub tags: Vec<String>,
    /// `pending` (made by an operator, waiting for its token), `active`, `revoked`.
    pub state: String,
    #[serde(skip)]
    pub token_hash: Option<String>,
    #[serde(skip)]
    pub public_key: Option<String>,
    #[serde(skip)]
    pub cert_sha256: Option<String>,
    #[serde(skip)]
    pub cert_pem: Option<String>,
    pub facts: BTreeMap<String, String>,
    pub created: i64,
    pub provisioned: Option<i64>,
    pub revoked: Option<i64>,
    /// The cloud process holding its link (empty when offline).
    pub link_owner: Option<String>,
    pub last_seen: Option<i64>,
    #[serde(skip)]
    pub report: Option<String>,
    pub report_time: Option<i64>,
    pub app_version: Option<String>,
    pub applied_revision: i64,
    pub update_state: Option<String>,
    pub update_error: Option<String>,
    pub cpu_percent: Option<f64>,
    pub mem_used: Option<i64>,
    pub mem_total: Option<i64>,
}

const DEVICE_COLUMNS: &str = "id, name, tags, state, token_hash, public_key, cert_sha256, cert_pem, facts, created, \
    provisioned, revoked, link_owner, last_seen, report, report_time, app_version, applied_revision, update_state, \
    update_error, cpu_percent, mem_used, mem_total";

fn device_from(r: &AnyRow) -> Result<Device> {
    let tags: String = r.try_get("tags").map_err(db)?;
    let facts: String = r.try_get("facts").map_err(db)?;
    Ok(Device {
        id: r.try_get("id").map_err(db)?,
        name: r.try_get("name").map_err(db)?,
        tags: serde_json::from_str(&tags).unwrap_or_default(),
        state: r.try_get("state").map_err(db)?,
        token_hash: r.try_get("token_hash").map_err(db)?,
        public_key: r.try_get("public_key").map_err(db)?,
        cert_sha256: r.try_get("cert_sha256").map_err(db)?,
        cert_pem: r.try_get("cert_pem").map_err(db)?,
        facts: serde_json::from_str(&facts).unwrap_or_default(),
        created: r.try_get("created").map_err(db)?,
        provisioned: r.try_get("provisioned").map_err(db)?,
        revoked: r.try_get("revoked").map_err(db)?,
        link_owner: r.try_get("link_owner").map_err(db)?,
        last_seen: r.try_get("last_seen").map_err(db)?,
        report: r.try_get("report").map_err(db)?,
        report_time: r.try_get("report_time").map_err(db)?,
        app_version: r.try_get("app_version").map_err(db)?,
        applied_revision: r.try_get("applied_revision").map_err(db)?,
        update_state: r.try_get("update_state").map_err(db)?,
        update_error: r.try_get("update_error").map_err(db)?,
        cpu_percent: r.try_get("cpu_percent").map_err(db)?,
        mem_used: r.try_get("mem_used").map_err(db)?,
        mem_total: r.try_get("mem_total").map_err(db)?,
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct AppVersion {
    pub app: String,
    pub version: String,
    pub manifest: String,
    pub signature: String,
    pub created: i64,
    pub created_by: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Assignment {
    pub target: String,
    pub app: String,
    pub version: String,
    pub revision: i64,
    pub created: i64,
    pub created_by: String,
}

#[derive(Debug, Clone)]
pub struct DesiredRow {
    pub device_id: String,
    pub revision: i64,
    pub app: String,
    pub version: String,
    pub payload: String,
    pub signature: String,
    /// Digests of the blobs this device may download.
    pub blobs: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Deployment {
    pub device_id: String,
    pub revision: i64,
    pub app: String,
    pub version: String,
    pub created: i64,
    pub created_by: String,
    /// `pending`, a step name (`DOWNLOADING`, ..., `RESTARTED`, `FAILURE`), or `superseded`.
    pub state: String,
    pub error: Option<String>,
    pub steps: serde_json::Value,
    pub updated: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct AuditEntry {
    pub id: String,
    pub time: i64,
    pub actor: String,
    pub role: String,
    pub action: String,
    pub target: String,
    pub detail: String,
    pub outcome: String,
}

impl Store {
    /// Connects (creating a SQLite file when needed) and applies pending migrations.
    pub async fn open(url: &str, max_connections: u32) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            return Err(CloudError::Config(format!(
                "database `{}`: use postgres://user@host:port/db, or leave it empty for the embedded SQLite",
                redact(url)
            )));
        };
        let mut opts = AnyPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10));
        if backend == Backend::Sqlite {
            opts = opts.after_connect(|conn, _| {
                Box::pin(async move {
                    use sqlx::Executor;
                    conn.execute("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 10000;")
                        .await?;
                    Ok(())
                })
            });
        }
        let pool = opts
            .connect(url)
            .await
            .map_err(|e| CloudError::Database(format!("cannot open {}: {e}", redact(url))))?;
        let store = Store {
            pool,
            backend,
            url: url.to_string(),
        };
        store.migrate().await?;
        Ok(store)
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The connection URL (with any password), for the PostgreSQL notification listener.
    pub fn url(&self) -> &str {
        &self.url
    }

    async fn migrate(&self) -> Result<()> {
        let migrations = MIGRATIONS
            .iter()
            .map(|(v, d, sql)| {
                Migration::new(
                    *v,
                    (*d).into(),
                    MigrationType::Simple,
                    sql.into_sql_str(),
                    false,
                )
            })
            .collect();
        Migrator::with_migrations(migrations)
            .run(&self.pool)
            .await
            .map_err(|e| CloudError::Database(format!("migrating the schema: {e}")))
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    // ---- fleet ----

    pub async fn fleet(&self) -> Result<Option<Fleet>> {
        let row = sqlx::query(
            "SELECT ca_cert, signing_public, provisioning_hash FROM fleet WHERE id = 1",
        )
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        row.map(|r| {
            Ok(Fleet {
                ca_cert: r.try_get("ca_cert").map_err(db)?,
                signing_public: r.try_get("signing_public").map_err(db)?,
                provisioning_hash: r.try_get("provisioning_hash").map_err(db)?,
            })
        })
        .transpose()
    }

    /// Records the fleet's identity unless one is there; answers the one that is (first writer wins).
    pub async fn init_fleet(&self, f: &Fleet) -> Result<Fleet> {
        sqlx::query(
            "INSERT INTO fleet (id, ca_cert, signing_public, provisioning_hash, created) VALUES (1, $1, $2, $3, $4) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(f.ca_cert.clone())
        .bind(f.signing_public.clone())
        .bind(f.provisioning_hash.clone())
        .bind(now_ms())
        .execute(&self.pool)
        .await
        .map_err(db)?;
        self.fleet()
            .await?
            .ok_or_else(|| CloudError::Database("the fleet row vanished".into()))
    }

    pub async fn set_provisioning_hash(&self, hash: &str) -> Result<()> {
        sqlx::query("UPDATE fleet SET provisioning_hash = $1 WHERE id = 1")
            .bind(hash.to_string())
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(())
    }

    /// The next desired-state revision (shared by every process on the database).
    pub async fn next_revision(&self) -> Result<i64> {
        let row = sqlx::query(
            "UPDATE counters SET value = value + 1 WHERE name = 'revision' RETURNING value",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(db)?;
        row.try_get("value").map_err(db)
    }

    // ---- tokens ----

    pub async fn create_token(&self, t: &Token) -> Result<()> {
        sqlx::query(
            "INSERT INTO tokens (id, name, role, hash, created) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(t.id.clone())
        .bind(t.name.clone())
        .bind(t.role.clone())
        .bind(t.hash.clone())
        .bind(t.created)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(())
    }

    fn token_from(r: &AnyRow) -> Result<Token> {
        Ok(Token {
            id: r.try_get("id").map_err(db)?,
            name: r.try_get("name").map_err(db)?,
            role: r.try_get("role").map_err(db)?,
            hash: r.try_get("hash").map_err(db)?,
            created: r.try_get("created").map_err(db)?,
            revoked: r.try_get("revoked").map_err(db)?,
        })
    }

    pub async fn token(&self, id: &str) -> Result<Option<Token>> {
        let row =
            sqlx::query("SELECT id, name, role, hash, created, revoked FROM tokens WHERE id = $1")
                .bind(id.to_string())
                .fetch_optional(&self.pool)
                .await
                .map_err(db)?;
        row.as_ref().map(Self::token_from).transpose()
    }

    pub async fn tokens(&self) -> Result<Vec<Token>> {
        let rows = sqlx::query(
            "SELECT id, name, role, hash, created, revoked FROM tokens ORDER BY created",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        rows.iter().map(Self::token_from).collect()
    }

    pub async fn revoke_token(&self, id: &str) -> Result<bool> {
        let r = sqlx::query("UPDATE tokens SET revoked = $1 WHERE id = $2 AND revoked IS NULL")
            .bind(now_ms())
            .bind(id.to_string())
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(r.rows_affected() == 1)
    }

    // ---- devices ----

    pub async fn create_device(&self, d: &Device) -> Result<()> {
        sqlx::query(
            "INSERT INTO devices (id, name, tags, state, token_hash, facts, created, applied_revision) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, 0)",
        )
        .bind(d.id.clone())
        .bind(d.name.clone())
        .bind(serde_json::to_string(&d.tags).unwrap_or_else(|_| "[]".into()))
        .bind(d.state.clone())
        .bind(d.token_hash.clone())
        .bind(serde_json::to_string(&d.facts).unwrap_or_else(|_| "{}".into()))
        .bind(d.created)
        .execute(&self.pool)
        .await
        .map_err(|e| match &e {
            sqlx::Error::Database(d) if d.is_unique_violation() => {
                CloudError::Conflict("a device with this name exists already".into())
            }
            _ => db(e),
        })?;
        Ok(())
    }

    async fn device_where(&self, sql: &'static str, value: &str) -> Result<Option<Device>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {DEVICE_COLUMNS} FROM devices WHERE {sql}"
        )))
        .bind(value.to_string())
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        row.as_ref().map(device_from).transpose()
    }

    pub async fn device(&self, id: &str) -> Result<Option<Device>> {
        self.device_where("id = $1", id).await
    }

    pub async fn device_by_name(&self, name: &str) -> Result<Option<Device>> {
        self.device_where("name = $1", name).await
    }

    pub async fn device_by_cert(&self, sha256: &str) -> Result<Option<Device>> {
        self.device_where("cert_sha256 = $1", sha256).await
    }

    pub async fn devices(&self) -> Result<Vec<Device>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {DEVICE_COLUMNS} FROM devices ORDER BY name"
        )))
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        rows.iter().map(device_from).collect()
    }

    /// Ids of active devices carrying `tag`.
    pub async fn devices_with_tag(&self, tag: &str) -> Result<Vec<Device>> {
        Ok(self
            .devices()
            .await?
            .into_iter()
            .filter(|d| d.state == "active" && d.tags.iter().any(|t| t == tag))
            .collect())
    }

    /// A registered device gets its certificate: pending -> active (or a new active device).
    pub async fn activate_device(
        &self,
        id: &str,
        public_key: &str,
        cert_sha256: &str,
        cert_pem: &str,
        facts: &BTreeMap<String, String>,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE devices SET state = 'active', token_hash = NULL, public_key = $1, cert_sha256 = $2, cert_pem = $3, \
             facts = $4, provisioned = $5 WHERE id = $6",
        )
        .bind(public_key.to_string())
        .bind(cert_sha256.to_string())
        .bind(cert_pem.to_string())
        .bind(serde_json::to_string(facts).unwrap_or_else(|_| "{}".into()))
        .bind(now_ms())
        .bind(id.to_string())
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(())
    }

    pub async fn set_tags(&self, id: &str, tags: &[String]) -> Result<()> {
        sqlx::query("UPDATE devices SET tags = $1 WHERE id = $2")
            .bind(serde_json::to_string(tags).unwrap_or_else(|_| "[]".into()))
            .bind(id.to_string())
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(())
    }

    pub async fn revoke_device(&self, id: &str) -> Result<()> {
        sqlx::query("UPDATE devices SET state = 'revoked', revoked = $1, token_hash = NULL, link_owner = NULL WHERE id = $2")
            .bind(now_ms())
            .bind(id.to_string())
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(())
    }

    /// Who holds the device's link (None: offline).
    pub async fn set_link(&self, id: &str, owner: Option<&str>) -> Result<()> {
        match owner {
            Some(o) => {
                sqlx::query("UPDATE devices SET link_owner = $1, last_seen = $2 WHERE id = $3")
                    .bind(o.to_string())
                    .bind(now_ms())
                    .bind(id.to_string())
            }
            None => {
                sqlx::query("UPDATE devices SET link_owner = NULL, last_seen = $1 WHERE id = $2")
                    .bind(now_ms())
                    .bind(id.to_string())
            }
        }
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(())
    }

    /// Clears the link of a device only if `owner` still holds it (a newer link elsewhere stays).
    pub async fn clear_link(&self, id: &str, owner: &str) -> Result<()> {
        sqlx::query("UPDATE devices SET link_owner = NULL, last_seen = $1 WHERE id = $2 AND link_owner = $3")
            .bind(now_ms())
            .bind(id.to_string())
            .bind(owner.to_string())
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(())
    }

    /// Forgets the links a process held (at its start: links left by a crash of the same process id).
    pub async fn clear_links_of(&self, owner: &str) -> Result<()> {
        sqlx::query("UPDATE devices SET link_owner = NULL WHERE link_owner = $1")
            .bind(owner.to_string())
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(())
    }

    /// Records that process `id` is alive.
    pub async fn heartbeat(&self, id: &str, started: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO processes (id, started, heartbeat) VALUES ($1, $2, $3) \
             ON CONFLICT (id) DO UPDATE SET heartbeat = excluded.heartbeat",
        )
        .bind(id.to_string())
        .bind(started)
        .bind(now_ms())
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(())
    }

    /// Processes whose heartbeat is newer than `since` (ms).
    pub async fn live_processes(&self, since: i64) -> Result<std::collections::BTreeSet<String>> {
        let rows = sqlx::query("SELECT id FROM processes WHERE heartbeat > $1")
            .bind(since)
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        rows.iter().map(|r| r.try_get("id").map_err(db)).collect()
    }

    pub async fn remove_process(&self, id: &str) -> Result<()> {
        sqlx::query("DELETE FROM processes WHERE id = $1")
            .bind(id.to_string())
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(())
    }

    pub async fn record_report(
        &self,
        id: &str,
        report: &str,
        summary: &baetyl_agent::proto::Summary,
        applied_revision: i64,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE devices SET report = $1, report_time = $2, last_seen = $2, app_version = $3, applied_revision = $4, \
             cpu_percent = $5, mem_used = $6, mem_total = $7 WHERE id = $8",
        )
        .bind(report.to_string())
        .bind(now_ms())
        .bind(summary.app_version.clone())
        .bind(applied_revision)
        .bind(summary.cpu_percent)
        .bind(summary.mem_used.map(|v| v as i64))
        .bind(summary.mem_total.map(|v| v as i64))
        .bind(id.to_string())
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(())
    }

    pub async fn set_update_state(&self, id: &str, state: &str, error: Option<&str>) -> Result<()> {
        sqlx::query("UPDATE devices SET update_state = $1, update_error = $2 WHERE id = $3")
            .bind(state.to_string())
            .bind(error.map(str::to_string))
            .bind(id.to_string())
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(())
    }

    // ---- blobs ----

    /// Stores a blob (content-addressed: a second upload of the same content is a no-op).
    pub async fn put_blob(&self, sha256: &str, data: &[u8]) -> Result<()> {
        sqlx::query("INSERT INTO blobs (sha256, size, data, created) VALUES ($1, $2, $3, $4) ON CONFLICT (sha256) DO NOTHING")
            .bind(sha256.to_string())
            .bind(data.len() as i64)
            .bind(data.to_vec())
            .bind(now_ms())
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(())
    }

    pub async fn blob(&self, sha256: &str) -> Result<Option<Vec<u8>>> {
        let row = sqlx::query("SELECT data FROM blobs WHERE sha256 = $1")
            .bind(sha256.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        row.map(|r| r.try_get::<Vec<u8>, _>("data").map_err(db))
            .transpose()
    }

    pub async fn blob_size(&self, sha256: &str) -> Result<Option<u64>> {
        let row = sqlx::query("SELECT size FROM blobs WHERE sha256 = $1")
            .bind(sha256.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        row.map(|r| r.try_get::<i64, _>("size").map(|s| s as u64).map_err(db))
            .transpose()
    }

    // ---- applications ----

    pub async fn create_version(&self, v: &AppVersion) -> Result<()> {
        sqlx::query(
            "INSERT INTO app_versions (app, version, manifest, signature, created, created_by) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(v.app.clone())
        .bind(v.version.clone())
        .bind(v.manifest.clone())
        .bind(v.signature.clone())
        .bind(v.created)
        .bind(v.created_by.clone())
        .execute(&self.pool)
        .await
        .map_err(|e| match &e {
            sqlx::Error::Database(d) if d.is_unique_violation() => CloudError::Conflict(format!(
                "application {} version {} exists already; versions are immutable, upload a new version",
                v.app, v.version
            )),
            _ => db(e),
        })?;
        Ok(())
    }

    fn version_from(r: &AnyRow) -> Result<AppVersion> {
        Ok(AppVersion {
            app: r.try_get("app").map_err(db)?,
            version: r.try_get("version").map_err(db)?,
            manifest: r.try_get("manifest").map_err(db)?,
            signature: r.try_get("signature").map_err(db)?,
            created: r.try_get("created").map_err(db)?,
            created_by: r.try_get("created_by").map_err(db)?,
        })
    }

    pub async fn version(&self, app: &str, version: &str) -> Result<Option<AppVersion>> {
        let row = sqlx::query("SELECT app, version, manifest, signature, created, created_by FROM app_versions WHERE app = $1 AND version = $2")
            .bind(app.to_string())
            .bind(version.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        row.as_ref().map(Self::version_from).transpose()
    }

    pub async fn versions(&self) -> Result<Vec<AppVersion>> {
        let rows = sqlx::query("SELECT app, version, manifest, signature, created, created_by FROM app_versions ORDER BY app, created")
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        rows.iter().map(Self::version_from).collect()
    }

    // ---- assignments and desired state ----

    pub async fn assign(&self, a: &Assignment) -> Result<()> {
        sqlx::query(
            "INSERT INTO assignments (target, app, version, revision, created, created_by) VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (target) DO UPDATE SET app = excluded.app, version = excluded.version, revision = excluded.revision, \
             created = excluded.created, created_by = excluded.created_by",
        )
        .bind(a.target.clone())
        .bind(a.app.clone())
        .bind(a.version.clone())
        .bind(a.revision)
        .bind(a.created)
        .bind(a.created_by.clone())
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(())
    }

    pub async fn assignments(&self) -> Result<Vec<Assignment>> {
        let rows = sqlx::query("SELECT target, app, version, revision, created, created_by FROM assignments ORDER BY revision")
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        rows.iter()
            .map(|r| {
                Ok(Assignment {
                    target: r.try_get("target").map_err(db)?,
                    app: r.try_get("app").map_err(db)?,
                    version: r.try_get("version").map_err(db)?,
                    revision: r.try_get("revision").map_err(db)?,
                    created: r.try_get("created").map_err(db)?,
                    created_by: r.try_get("created_by").map_err(db)?,
                })
            })
            .collect()
    }

    /// Issues desired states, the secrets they introduce and their deployment rows, in transactions of a few
    /// hundred devices with multi-row statements (a deployment to a tag of 10,000 devices is a few dozen
    /// statements). An older unfinished deployment of the same device becomes `superseded`.
    pub async fn set_desired(
        &self,
        rows: &[DesiredRow],
        new_secrets: &[(String, String, String)],
        by: &str,
    ) -> Result<()> {
        let now = now_ms();
        const ROWS: usize = 200;
        let mut tx = self.pool.begin().await.map_err(db)?;
        for chunk in new_secrets.chunks(ROWS) {
            let sql = format!(
                "INSERT INTO secrets (device_id, name, value, rotated) VALUES {} \
                 ON CONFLICT (device_id, name) DO UPDATE SET value = excluded.value, rotated = excluded.rotated",
                placeholders(chunk.len(), 4)
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (device, name, value) in chunk {
                q = q
                    .bind(device.clone())
                    .bind(name.clone())
                    .bind(value.clone())
                    .bind(now);
            }
            q.execute(&mut *tx).await.map_err(db)?;
        }
        for chunk in rows.chunks(ROWS) {
            let sql = format!(
                "INSERT INTO desired (device_id, revision, app, version, payload, signature, blobs) VALUES {} \
                 ON CONFLICT (device_id) DO UPDATE SET revision = excluded.revision, app = excluded.app, version = excluded.version, \
                 payload = excluded.payload, signature = excluded.signature, blobs = excluded.blobs",
                placeholders(chunk.len(), 7)
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for d in chunk {
                q = q
                    .bind(d.device_id.clone())
                    .bind(d.revision)
                    .bind(d.app.clone())
                    .bind(d.version.clone())
                    .bind(d.payload.clone())
                    .bind(d.signature.clone())
                    .bind(serde_json::to_string(&d.blobs).unwrap_or_else(|_| "[]".into()));
            }
            q.execute(&mut *tx).await.map_err(db)?;
            let sql = format!(
                "UPDATE deployments SET state = 'superseded', updated = $1 WHERE state IN ('pending', 'ACCEPTED', 'DOWNLOADING', 'VERIFIED', 'STAGED') \
                 AND device_id IN ({})",
                (0..chunk.len())
                    .map(|i| format!("${}", i + 2))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(now);
            for d in chunk {
                q = q.bind(d.device_id.clone());
            }
            q.execute(&mut *tx).await.map_err(db)?;
            let sql = format!(
                "INSERT INTO deployments (device_id, revision, app, version, created, created_by, state, steps, updated) VALUES {} \
                 ON CONFLICT (device_id, revision) DO NOTHING",
                placeholders(chunk.len(), 9)
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for d in chunk {
                q = q
                    .bind(d.device_id.clone())
                    .bind(d.revision)
                    .bind(d.app.clone())
                    .bind(d.version.clone())
                    .bind(now)
                    .bind(by.to_string())
                    .bind("pending")
                    .bind("[]")
                    .bind(now);
            }
            q.execute(&mut *tx).await.map_err(db)?;
        }
        tx.commit().await.map_err(db)
    }

    /// The secrets of many devices at once: device -> name -> value.
    pub async fn secrets_of(
        &self,
        devices: &[String],
    ) -> Result<BTreeMap<String, BTreeMap<String, String>>> {
        let mut out: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        for chunk in devices.chunks(500) {
            let sql = format!(
                "SELECT device_id, name, value FROM secrets WHERE device_id IN ({})",
                (1..=chunk.len())
                    .map(|i| format!("${i}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for d in chunk {
                q = q.bind(d.clone());
            }
            for r in q.fetch_all(&self.pool).await.map_err(db)? {
                out.entry(r.try_get("device_id").map_err(db)?)
                    .or_default()
                    .insert(
                        r.try_get("name").map_err(db)?,
                        r.try_get("value").map_err(db)?,
                    );
            }
        }
        Ok(out)
    }

    fn desired_from(r: &AnyRow) -> Result<DesiredRow> {
        let blobs: String = r.try_get("blobs").map_err(db)?;
        Ok(DesiredRow {
            device_id: r.try_get("device_id").map_err(db)?,
            revision: r.try_get("revision").map_err(db)?,
            app: r.try_get("app").map_err(db)?,
            version: r.try_get("version").map_err(db)?,
            payload: r.try_get("payload").map_err(db)?,
            signature: r.try_get("signature").map_err(db)?,
            blobs: serde_json::from_str(&blobs).unwrap_or_default(),
        })
    }

    pub async fn desired(&self, device: &str) -> Result<Option<DesiredRow>> {
        let row = sqlx::query("SELECT device_id, revision, app, version, payload, signature, blobs FROM desired WHERE device_id = $1")
            .bind(device.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        row.as_ref().map(Self::desired_from).transpose()
    }

    /// Every desired state issued with `revision` (one operator action).
    pub async fn desired_at(&self, revision: i64) -> Result<Vec<DesiredRow>> {
        let rows = sqlx::query("SELECT device_id, revision, app, version, payload, signature, blobs FROM desired WHERE revision = $1")
            .bind(revision)
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        rows.iter().map(Self::desired_from).collect()
    }

    // ---- secrets ----

    pub async fn secrets(&self, device: &str) -> Result<BTreeMap<String, String>> {
        let rows = sqlx::query("SELECT name, value FROM secrets WHERE device_id = $1")
            .bind(device.to_string())
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("name").map_err(db)?,
                    r.try_get("value").map_err(db)?,
                ))
            })
            .collect()
    }

    pub async fn set_secret(&self, device: &str, name: &str, value: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO secrets (device_id, name, value, rotated) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (device_id, name) DO UPDATE SET value = excluded.value, rotated = excluded.rotated",
        )
        .bind(device.to_string())
        .bind(name.to_string())
        .bind(value.to_string())
        .bind(now_ms())
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(())
    }

    // ---- deployments ----

    /// Records a step the device reported for one of its deployments.
    pub async fn deployment_step(
        &self,
        device: &str,
        e: &baetyl_agent::proto::DeployEvent,
    ) -> Result<()> {
        let revision = e.revision as i64;
        let row = sqlx::query(
            "SELECT steps, state FROM deployments WHERE device_id = $1 AND revision = $2",
        )
        .bind(device.to_string())
        .bind(revision)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        let Some(row) = row else {
            return Ok(());
        };
        let steps: String = row.try_get("steps").map_err(db)?;
        let mut steps: Vec<serde_json::Value> = serde_json::from_str(&steps).unwrap_or_default();
        if steps.len() < 200 {
            steps.push(serde_json::to_value(e).unwrap_or_default());
        }
        let state = e.step.as_str();
        let error = e.failure();
        sqlx::query("UPDATE deployments SET steps = $1, state = $2, error = COALESCE($3, error), updated = $4 WHERE device_id = $5 AND revision = $6")
            .bind(serde_json::to_string(&steps).unwrap_or_else(|_| "[]".into()))
            .bind(state.to_string())
            .bind(error)
            .bind(now_ms())
            .bind(device.to_string())
            .bind(revision)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(())
    }

    pub async fn deployments(&self, device: &str, limit: i64) -> Result<Vec<Deployment>> {
        let rows = sqlx::query(
            "SELECT device_id, revision, app, version, created, created_by, state, error, steps, updated FROM deployments \
             WHERE device_id = $1 ORDER BY revision DESC LIMIT $2",
        )
        .bind(device.to_string())
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        rows.iter()
            .map(|r| {
                let steps: String = r.try_get("steps").map_err(db)?;
                Ok(Deployment {
                    device_id: r.try_get("device_id").map_err(db)?,
                    revision: r.try_get("revision").map_err(db)?,
                    app: r.try_get("app").map_err(db)?,
                    version: r.try_get("version").map_err(db)?,
                    created: r.try_get("created").map_err(db)?,
                    created_by: r.try_get("created_by").map_err(db)?,
                    state: r.try_get("state").map_err(db)?,
                    error: r.try_get("error").map_err(db)?,
                    steps: serde_json::from_str(&steps).unwrap_or_default(),
                    updated: r.try_get("updated").map_err(db)?,
                })
            })
            .collect()
    }

    // ---- audit ----

    pub async fn audit(&self, e: &AuditEntry) -> Result<()> {
        sqlx::query("INSERT INTO audit (id, time, actor, role, action, target, detail, outcome) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)")
            .bind(e.id.clone())
            .bind(e.time)
            .bind(e.actor.clone())
            .bind(e.role.clone())
            .bind(e.action.clone())
            .bind(e.target.clone())
            .bind(e.detail.clone())
            .bind(e.outcome.clone())
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(())
    }

    pub async fn audit_log(&self, limit: i64) -> Result<Vec<AuditEntry>> {
        let rows = sqlx::query("SELECT id, time, actor, role, action, target, detail, outcome FROM audit ORDER BY time DESC, id DESC LIMIT $1")
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        rows.iter()
            .map(|r| {
                Ok(AuditEntry {
                    id: r.try_get("id").map_err(db)?,
                    time: r.try_get("time").map_err(db)?,
                    actor: r.try_get("actor").map_err(db)?,
                    role: r.try_get("role").map_err(db)?,
                    action: r.try_get("action").map_err(db)?,
                    target: r.try_get("target").map_err(db)?,
                    detail: r.try_get("detail").map_err(db)?,
                    outcome: r.try_get("outcome").map_err(db)?,
                })
            })
            .collect()
    }

    /// Sends a PostgreSQL notification (after the caller's writes are committed).
    pub async fn notify(&self, channel: &str, payload: &str) -> Result<()> {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(channel.to_string())
            .bind(payload.to_string())
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(())
    }

    /// Keeps a message too large for a notification; old ones are dropped on the way.
    pub async fn relay_put(&self, id: &str, payload: &str) -> Result<()> {
        let now = now_ms();
        sqlx::query("DELETE FROM relay WHERE created < $1")
            .bind(now - 300_000)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        sqlx::query("INSERT INTO relay (id, payload, created) VALUES ($1, $2, $3)")
            .bind(id.to_string())
            .bind(payload.to_string())
            .bind(now)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(())
    }

    pub async fn relay_get(&self, id: &str) -> Result<Option<String>> {
        let row = sqlx::query("SELECT payload FROM relay WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        row.map(|r| r.try_get("payload").map_err(db)).transpose()
    }

    /// For tests and tools: runs one statement (used to tamper with rows in tests of the device's checks).
    pub async fn execute_raw(&self, sql: String) -> Result<u64> {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&self.pool)
            .await
            .map(|r| r.rows_affected())
            .map_err(db)
    }
}

/// `($1, $2, ...), (...)`: `rows` groups of `cols` placeholders.
fn placeholders(rows: usize, cols: usize) -> String {
    (0..rows)
        .map(|r| {
            format!(
                "({})",
                (1..=cols)
                    .map(|c| format!("${}", r * cols + c))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A database URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}
