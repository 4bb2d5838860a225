//! Imports an OCI image layout into containerd with no registry and no transfer service (containerd 1.6):
//! every blob written into the content store under a lease (with the labels that keep it from garbage
//! collection), an image record per name, and each image's layers unpacked into committed snapshots through
//! `Snapshots.Prepare` + `Diff.Apply` + `Snapshots.Commit`. What is already there is not written again: a
//! second import of the same layout only reads.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, PrepareSnapshotRequest, StatSnapshotRequest,
};
use containerd_client::services::v1::{
    ApplyRequest, CreateImageRequest, CreateRequest, DeleteRequest, GetImageRequest, Image,
    InfoRequest, UpdateImageRequest, WriteAction, WriteContentRequest,
    content_client::ContentClient, diff_client::DiffClient, images_client::ImagesClient,
    leases_client::LeasesClient,
};
use containerd_client::tonic::transport::Channel;
use containerd_client::tonic::{Code, Request, Status};
use containerd_client::types::Descriptor;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The snapshotter the images are unpacked for.
pub const SNAPSHOTTER: &str = "overlayfs";
/// The largest piece of a blob sent in one message (containerd accepts 16 MiB).
const CHUNK: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {detail}")]
    Layout { path: PathBuf, detail: String },
    #[error("containerd: {what}: {status}")]
    Containerd { what: String, status: Status },
}

type Result<T> = std::result::Result<T, ImportError>;

/// What an import did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Imported {
    /// Image names, in the layout's order.
    pub images: Vec<String>,
    /// Blobs written (0 when everything was there).
    pub blobs_written: usize,
    /// Layers unpacked into new snapshots.
    pub layers_unpacked: usize,
}

struct Blob {
    media_type: String,
    digest: String,
    size: i64,
}

impl Blob {
    fn of(v: &Value, path: &Path) -> Result<Blob> {
        let s = |k: &str| v[k].as_str().map(str::to_string);
        match (s("mediaType"), s("digest"), v["size"].as_i64()) {
            (Some(media_type), Some(digest), Some(size)) if digest.starts_with("sha256:") => {
                Ok(Blob {
                    media_type,
                    digest,
                    size,
                })
            }
            _ => Err(ImportError::Layout {
                path: path.to_path_buf(),
                detail: format!("not a sha256 descriptor: {v}"),
            }),
        }
    }

    fn descriptor(&self) -> Descriptor {
        Descriptor {
            media_type: self.media_type.clone(),
            digest: self.digest.clone(),
            size: self.size,
            annotations: Default::default(),
        }
    }
}

fn gone(what: impl Into<String>) -> impl FnOnce(Status) -> ImportError {
    let what = what.into();
    move |status| ImportError::Containerd { what, status }
}

/// The chain id of a layer stack (OCI image spec): the first diff_id, then sha256("<parent> <diff_id>").
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(parent) => {
                let h = Sha256::digest(format!("{parent} {d}").as_bytes());
                let hex: String = h.iter().map(|b| format!("{b:02x}")).collect();
                format!("sha256:{hex}")
            }
        };
        out.push(next);
    }
    out
}

/// A request in namespace `ns` (and lease `lease`, when given).
pub(crate) fn req<T>(msg: T, ns: &str, lease: Option<&str>) -> Request<T> {
    let mut r = Request::new(msg);
    if let Ok(v) = ns.parse() {
        r.metadata_mut().insert("containerd-namespace", v);
    }
    if let Some(l) = lease.and_then(|l| l.parse().ok()) {
        r.metadata_mut().insert("containerd-lease", l);
    }
    r
}

/// A channel to containerd's socket.
pub async fn connect(socket: &Path) -> Result<Channel> {
    containerd_client::connect(socket)
        .await
        .map_err(|e| ImportError::Io {
            path: socket.to_path_buf(),
            source: std::io::Error::other(e),
        })
}

/// A JSON document of a layout.
pub(crate) fn read_json(path: &Path) -> Result<Value> {
    let data = std::fs::read(path).map_err(|source| ImportError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_slice(&data).map_err(|e| ImportError::Layout {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })
}

pub struct Importer {
    channel: Channel,
    ns: String,
}

impl Importer {
    pub fn new(channel: Channel, namespace: &str) -> Self {
        Importer {
            channel,
            ns: namespace.to_string(),
        }
    }

    fn blob_path(dir: &Path, b: &Blob) -> PathBuf {
        dir.join("blobs/sha256")
            .join(b.digest.trim_start_matches("sha256:"))
    }

    /// Writes `b` into the content store unless it is there; answers whether it wrote.
    async fn put(
        &self,
        dir: &Path,
        b: &Blob,
        labels: BTreeMap<String, String>,
        lease: &str,
    ) -> Result<bool> {
        let mut content = ContentClient::new(self.channel.clone());
        let info = content
            .info(req(
                InfoRequest {
                    digest: b.digest.clone(),
                },
                &self.ns,
                None,
            ))
            .await;
        match info {
            Ok(_) => return Ok(false),
            Err(s) if s.code() == Code::NotFound => {}
            Err(s) => return Err(gone(format!("content info {}", b.digest))(s)),
        }
        let path = Self::blob_path(dir, b);
        let data = std::fs::read(&path).map_err(|source| ImportError::Io {
            path: path.clone(),
            source,
        })?;
        if data.len() as i64 != b.size {
            return Err(ImportError::Layout {
                path,
                detail: format!("{} bytes, its descriptor says {}", data.len(), b.size),
            });
        }
        let reference = format!("baetyl-import-{}", b.digest);
        let chunks: Vec<&[u8]> = if data.is_empty() {
            vec![&[][..]]
        } else {
            data.chunks(CHUNK).collect()
        };
        let last = chunks.len() - 1;
        let mut offset = 0i64;
        let mut msgs = Vec::with_capacity(chunks.len());
        for (i, c) in chunks.into_iter().enumerate() {
            let commit = i == last;
            msgs.push(WriteContentRequest {
                action: if commit {
                    WriteAction::Commit
                } else {
                    WriteAction::Write
                } as i32,
                r#ref: reference.clone(),
                total: b.size,
                expected: if commit {
                    b.digest.clone()
                } else {
                    String::new()
                },
                offset,
                data: c.to_vec(),
                labels: if commit {
                    labels.clone().into_iter().collect()
                } else {
                    Default::default()
                },
            });
            offset += c.len() as i64;
        }
        let stream = futures_util::stream::iter(msgs);
        let resp = content.write(req(stream, &self.ns, Some(lease))).await;
        match resp {
            Ok(mut s) => {
                while s
                    .get_mut()
                    .message()
                    .await
                    .map_err(gone(format!("content write {}", b.digest)))?
                    .is_some()
                {}
            }
            Err(s) if s.code() == Code::AlreadyExists => return Ok(false),
            Err(s) => return Err(gone(format!("content write {}", b.digest))(s)),
        }
        Ok(true)
    }

    /// Imports every image of the layout in `dir` (see the module's doc).
    pub async fn import(&self, dir: &Path) -> Result<Imported> {
        let index_path = dir.join("index.json");
        let index = read_json(&index_path)?;
        let manifests = index["manifests"].as_array().cloned().unwrap_or_default();
        self.import_manifests(dir, &manifests).await
    }

    /// Imports the image `reference` (`name:tag`) of the layout in `dir` alone: what it shares with images
    /// imported before (the binary layer) is not written again.
    pub async fn import_image(&self, dir: &Path, reference: &str) -> Result<Imported> {
        let index_path = dir.join("index.json");
        let index = read_json(&index_path)?;
        let manifest = index["manifests"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| m["annotations"]["io.containerd.image.name"] == reference)
            .cloned()
            .ok_or_else(|| ImportError::Layout {
                path: index_path.clone(),
                detail: format!("no image `{reference}` in the layout"),
            })?;
        self.import_manifests(dir, std::slice::from_ref(&manifest))
            .await
    }

    /// Imports the images of `manifests` (entries of the layout's index) under one lease.
    async fn import_manifests(&self, dir: &Path, manifests: &[Value]) -> Result<Imported> {
        static LEASES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = LEASES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let lease = format!("baetyl-import-{}-{n}", std::process::id());
        let mut leases = LeasesClient::new(self.channel.clone());
        let mut labels = std::collections::HashMap::new();
        // Should the master die mid-import, the lease ends by itself and the garbage collector takes the rest.
        labels.insert("containerd.io/gc.expire".to_string(), {
            let t = std::time::SystemTime::now() + std::time::Duration::from_secs(3600);
            humantime::format_rfc3339_seconds(t).to_string()
        });
        leases
            .create(req(
                CreateRequest {
                    id: lease.clone(),
                    labels,
                },
                &self.ns,
                None,
            ))
            .await
            .map_err(gone("lease create"))?;
        let result = self.import_all(dir, manifests, &lease).await;
        let _ = leases
            .delete(req(
                DeleteRequest {
                    id: lease.clone(),
                    sync: false,
                },
                &self.ns,
                None,
            ))
            .await;
        result
    }

    async fn import_all(&self, dir: &Path, manifests: &[Value], lease: &str) -> Result<Imported> {
        let mut done = Imported::default();
        for m in manifests {
            let index_path = dir.join("index.json");
            let name = m["annotations"]["io.containerd.image.name"]
                .as_str()
                .ok_or_else(|| ImportError::Layout {
                    path: index_path.clone(),
                    detail: format!("a manifest without io.containerd.image.name: {m}"),
                })?
                .to_string();
            let manifest = Blob::of(m, &index_path)?;
            let mpath = Self::blob_path(dir, &manifest);
            let doc = read_json(&mpath)?;
            let config = Blob::of(&doc["config"], &mpath)?;
            let layers: Vec<Blob> = doc["layers"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|l| Blob::of(l, &mpath))
                .collect::<Result<_>>()?;
            let cfg = read_json(&Self::blob_path(dir, &config))?;
            let diff_ids: Vec<String> = cfg["rootfs"]["diff_ids"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .filter_map(|d| d.as_str().map(str::to_string))
                .collect();
            if diff_ids.len() != layers.len() {
                return Err(ImportError::Layout {
                    path: mpath,
                    detail: format!("{} layers but {} diff_ids", layers.len(), diff_ids.len()),
                });
            }
            let chains = chain_ids(&diff_ids);

            // Blobs, children first, each labelled so that the garbage collector keeps what its parent needs.
            for (l, d) in layers.iter().zip(&diff_ids) {
                let labels = [("containerd.io/uncompressed".to_string(), d.clone())].into();
                done.blobs_written += usize::from(self.put(dir, l, labels, lease).await?);
            }
            let mut labels = BTreeMap::new();
            if let Some(top) = chains.last() {
                labels.insert(
                    format!("containerd.io/gc.ref.snapshot.{SNAPSHOTTER}"),
                    top.clone(),
                );
            }
            done.blobs_written += usize::from(self.put(dir, &config, labels, lease).await?);
            let mut labels = BTreeMap::new();
            labels.insert(
                "containerd.io/gc.ref.content.config".to_string(),
                config.digest.clone(),
            );
            for (i, l) in layers.iter().enumerate() {
                labels.insert(
                    format!("containerd.io/gc.ref.content.l.{i}"),
                    l.digest.clone(),
                );
            }
            done.blobs_written += usize::from(self.put(dir, &manifest, labels, lease).await?);

            self.record(&name, &manifest).await?;
            done.layers_unpacked += self.unpack(&layers, &chains, lease).await?;
            done.images.push(name);
        }
        Ok(done)
    }

    /// Creates (or points anew) the image record `name`.
    async fn record(&self, name: &str, manifest: &Blob) -> Result<()> {
        let mut images = ImagesClient::new(self.channel.clone());
        let image = Image {
            name: name.to_string(),
            target: Some(manifest.descriptor()),
            ..Default::default()
        };
        let current = images
            .get(req(
                GetImageRequest {
                    name: name.to_string(),
                },
                &self.ns,
                None,
            ))
            .await;
        match current {
            Ok(r) => {
                let same = r
                    .into_inner()
                    .image
                    .and_then(|i| i.target)
                    .is_some_and(|t| t.digest == manifest.digest);
                if !same {
                    images
                        .update(req(
                            UpdateImageRequest {
                                image: Some(image),
                                ..Default::default()
                            },
                            &self.ns,
                            None,
                        ))
                        .await
                        .map_err(gone(format!("image update {name}")))?;
                }
            }
            Err(s) if s.code() == Code::NotFound => {
                images
                    .create(req(
                        CreateImageRequest {
                            image: Some(image),
                            ..Default::default()
                        },
                        &self.ns,
                        None,
                    ))
                    .await
                    .map_err(gone(format!("image create {name}")))?;
            }
            Err(s) => return Err(gone(format!("image get {name}"))(s)),
        }
        Ok(())
    }

    /// Unpacks the layers whose snapshots are missing; answers how many it unpacked.
    async fn unpack(&self, layers: &[Blob], chains: &[String], lease: &str) -> Result<usize> {
        let mut snapshots = SnapshotsClient::new(self.channel.clone());
        let mut diff = DiffClient::new(self.channel.clone());
        let mut unpacked = 0;
        let mut parent = String::new();
        for (layer, chain) in layers.iter().zip(chains) {
            let stat = snapshots
                .stat(req(
                    StatSnapshotRequest {
                        snapshotter: SNAPSHOTTER.into(),
                        key: chain.clone(),
                    },
                    &self.ns,
                    None,
                ))
                .await;
            match stat {
                Ok(_) => {
                    parent = chain.clone();
                    continue;
                }
                Err(s) if s.code() == Code::NotFound => {}
                Err(s) => return Err(gone(format!("snapshot stat {chain}"))(s)),
            }
            let key = format!("baetyl-extract-{}-{chain}", std::process::id());
            let mounts = snapshots
                .prepare(req(
                    PrepareSnapshotRequest {
                        snapshotter: SNAPSHOTTER.into(),
                        key: key.clone(),
                        parent: parent.clone(),
                        labels: Default::default(),
                    },
                    &self.ns,
                    Some(lease),
                ))
                .await
                .map_err(gone(format!("snapshot prepare {chain}")))?
                .into_inner()
                .mounts;
            diff.apply(req(
                ApplyRequest {
                    diff: Some(layer.descriptor()),
                    mounts,
                    ..Default::default()
                },
                &self.ns,
                Some(lease),
            ))
            .await
            .map_err(gone(format!("diff apply {}", layer.digest)))?;
            let mut labels = std::collections::HashMap::new();
            labels.insert("containerd.io/snapshot.ref".to_string(), chain.clone());
            snapshots
                .commit(req(
                    CommitSnapshotRequest {
                        snapshotter: SNAPSHOTTER.into(),
                        name: chain.clone(),
                        key,
                        labels,
                    },
                    &self.ns,
                    Some(lease),
                ))
                .await
                .map_err(gone(format!("snapshot commit {chain}")))?;
            unpacked += 1;
            parent = chain.clone();
        }
        Ok(unpacked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_image_spec() {
        let a = "sha256:aaaa".to_string();
        let b = "sha256:bbbb".to_string();
        let c = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(c[0], a);
        let h = Sha256::digest(b"sha256:aaaa sha256:bbbb");
        let hex: String = h.iter().map(|x| format!("{x:02x}")).collect();
        assert_eq!(c[1], format!("sha256:{hex}"));
    }
}
