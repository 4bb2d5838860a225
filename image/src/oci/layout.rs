//! An OCI image layout directory (`oci-layout`, `index.json`, `blobs/sha256/<hex>`) holding several images
//! that share blobs, and its validation: every descriptor's blob exists with that size and digest, every
//! config's `diff_ids` match the uncompressed layers, every image's platform matches its config.
//!
//! JSON documents are written with their object keys sorted, so that the same images give the same digests
//! whatever order the maps behind them keep.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use oci_spec::image::{
    Arch, Config, Descriptor, DescriptorBuilder, ImageConfiguration, ImageConfigurationBuilder,
    ImageIndex, ImageIndexBuilder, ImageManifest, ImageManifestBuilder, MediaType, Os,
    PlatformBuilder, RootFsBuilder,
};
use serde_json::Value;

use crate::error::{ImageError, Result};
use crate::fs::{read, write};
use crate::oci::layer::{Layer, sha256_hex};

/// The annotation containerd's importer reads for an image's name.
pub const CONTAINERD_NAME: &str = "io.containerd.image.name";
/// The OCI annotation for a reference in a layout.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

fn spec_err(what: &str, e: impl std::fmt::Display) -> ImageError {
    ImageError::Input(format!("{what}: {e}"))
}

/// `v` with every object's keys in sorted order.
fn canonical(v: Value) -> Value {
    match v {
        Value::Object(m) => {
            let sorted: BTreeMap<String, Value> =
                m.into_iter().map(|(k, v)| (k, canonical(v))).collect();
            Value::Object(sorted.into_iter().collect())
        }
        Value::Array(a) => Value::Array(a.into_iter().map(canonical).collect()),
        other => other,
    }
}

fn json_bytes(what: &str, doc: &impl serde::Serialize) -> Result<Vec<u8>> {
    let v = serde_json::to_value(doc).map_err(|e| spec_err(what, e))?;
    serde_json::to_vec(&canonical(v)).map_err(|e| spec_err(what, e))
}

/// The OCI name of an architecture (`x86_64` -> `amd64`).
pub fn oci_arch(debarch: &str) -> Arch {
    Arch::from(debarch)
}

/// What goes into one image.
pub struct ImageDef<'a> {
    /// `baetyl-hub:latest`.
    pub name: String,
    pub debarch: &'a str,
    pub layers: Vec<&'a Layer>,
    pub config: Config,
    /// RFC 3339 creation time.
    pub created: String,
}

/// An image written into a layout.
#[derive(Debug, Clone)]
pub struct Written {
    pub name: String,
    pub manifest: String,
    /// Config, manifest and layers, compressed: what the image adds to a registry-less store on its own.
    pub size: u64,
}

/// A layout being written: blobs go in as they come, `index.json` at [`LayoutWriter::finish`].
pub struct LayoutWriter {
    dir: PathBuf,
    index: Vec<Descriptor>,
    written: Vec<Written>,
}

impl LayoutWriter {
    /// Starts a layout in `dir`, removing the blobs and index of an earlier one there.
    pub fn create(dir: &Path) -> Result<Self> {
        for old in ["blobs", "index.json", "oci-layout"] {
            let p = dir.join(old);
            if p.is_dir() {
                std::fs::remove_dir_all(&p).map_err(|e| ImageError::io(&p, e))?;
            } else if p.exists() {
                std::fs::remove_file(&p).map_err(|e| ImageError::io(&p, e))?;
            }
        }
        write(
            &dir.join("oci-layout"),
            br#"{"imageLayoutVersion":"1.0.0"}"#,
        )?;
        Ok(LayoutWriter {
            dir: dir.to_path_buf(),
            index: Vec::new(),
            written: Vec::new(),
        })
    }

    /// Stores a blob (once) and answers its descriptor.
    fn blob(&self, media: MediaType, data: &[u8]) -> Result<Descriptor> {
        let hex = sha256_hex(data);
        let path = self.dir.join("blobs/sha256").join(&hex);
        if !path.is_file() {
            write(&path, data)?;
        }
        let digest = format!("sha256:{hex}")
            .parse::<oci_spec::image::Digest>()
            .map_err(|e| spec_err("digest", e))?;
        Ok(Descriptor::new(media, data.len() as u64, digest))
    }

    pub fn add(&mut self, image: ImageDef<'_>) -> Result<Written> {
        let what = |part: &str| format!("{} {part}", image.name);
        let mut layers = Vec::new();
        for l in &image.layers {
            layers.push(self.blob(MediaType::ImageLayerGzip, &l.blob)?);
        }
        let rootfs = RootFsBuilder::default()
            .typ("layers")
            .diff_ids(
                image
                    .layers
                    .iter()
                    .map(|l| l.diff_id.clone())
                    .collect::<Vec<_>>(),
            )
            .build()
            .map_err(|e| spec_err(&what("rootfs"), e))?;
        let config: ImageConfiguration = ImageConfigurationBuilder::default()
            .created(image.created.clone())
            .architecture(oci_arch(image.debarch))
            .os(Os::Linux)
            .config(image.config.clone())
            .rootfs(rootfs)
            .build()
            .map_err(|e| spec_err(&what("config"), e))?;
        let config = self.blob(
            MediaType::ImageConfig,
            &json_bytes(&what("config"), &config)?,
        )?;
        let manifest: ImageManifest = ImageManifestBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::ImageManifest)
            .config(config.clone())
            .layers(layers.clone())
            .build()
            .map_err(|e| spec_err(&what("manifest"), e))?;
        let manifest_desc = self.blob(
            MediaType::ImageManifest,
            &json_bytes(&what("manifest"), &manifest)?,
        )?;
        let platform = PlatformBuilder::default()
            .architecture(oci_arch(image.debarch))
            .os(Os::Linux)
            .build()
            .map_err(|e| spec_err(&what("platform"), e))?;
        let annotations: std::collections::HashMap<String, String> = [
            (CONTAINERD_NAME.to_string(), image.name.clone()),
            (REF_NAME.to_string(), image.name.clone()),
        ]
        .into_iter()
        .collect();
        let entry = DescriptorBuilder::default()
            .media_type(MediaType::ImageManifest)
            .digest(manifest_desc.digest().clone())
            .size(manifest_desc.size())
            .platform(platform)
            .annotations(annotations)
            .build()
            .map_err(|e| spec_err(&what("index entry"), e))?;
        self.index.push(entry);
        let size =
            manifest_desc.size() + config.size() + layers.iter().map(Descriptor::size).sum::<u64>();
        let w = Written {
            name: image.name,
            manifest: manifest_desc.digest().to_string(),
            size,
        };
        self.written.push(w.clone());
        Ok(w)
    }

    /// Writes `index.json`; answers the images written.
    pub fn finish(self) -> Result<Vec<Written>> {
        let index: ImageIndex = ImageIndexBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::ImageIndex)
            .manifests(self.index)
            .build()
            .map_err(|e| spec_err("index.json", e))?;
        write(
            &self.dir.join("index.json"),
            json_bytes("index.json", &index)?,
        )?;
        Ok(self.written)
    }
}

/// An image found in a valid layout.
#[derive(Debug, Clone)]
pub struct Found {
    pub name: String,
    pub arch: String,
    pub manifest: Descriptor,
    pub config: ImageConfiguration,
    pub layers: Vec<Descriptor>,
}

/// Reads the blob a descriptor names and checks its size and digest.
pub fn read_blob(dir: &Path, d: &Descriptor) -> Result<Vec<u8>> {
    let hex = d.as_digest_sha256().ok_or_else(|| {
        ImageError::Input(format!(
            "{}: {} is not a sha256 digest",
            dir.display(),
            d.digest()
        ))
    })?;
    let path = dir.join("blobs/sha256").join(hex);
    let data = read(&path)?;
    if data.len() as u64 != d.size() {
        return Err(ImageError::Input(format!(
            "{}: {} bytes, its descriptor says {}",
            path.display(),
            data.len(),
            d.size()
        )));
    }
    let got = sha256_hex(&data);
    if got != hex {
        return Err(ImageError::Input(format!(
            "{}: content has digest sha256:{got}",
            path.display()
        )));
    }
    Ok(data)
}

fn parse<T: serde::de::DeserializeOwned>(what: &Path, data: &[u8]) -> Result<T> {
    serde_json::from_slice(data).map_err(|e| spec_err(&what.display().to_string(), e))
}

/// Checks the whole layout in `dir` (see the module's doc); answers its images.
pub fn validate(dir: &Path) -> Result<Vec<Found>> {
    let marker: Value = parse(&dir.join("oci-layout"), &read(&dir.join("oci-layout"))?)?;
    if marker["imageLayoutVersion"] != "1.0.0" {
        return Err(ImageError::Input(format!(
            "{}: imageLayoutVersion is not 1.0.0",
            dir.join("oci-layout").display()
        )));
    }
    let index_path = dir.join("index.json");
    let index: ImageIndex = parse(&index_path, &read(&index_path)?)?;
    let mut found = Vec::new();
    for d in index.manifests() {
        let mpath = dir.join(format!("blobs/{}", d.digest()));
        let manifest: ImageManifest = parse(&mpath, &read_blob(dir, d)?)?;
        let config_data = read_blob(dir, manifest.config())?;
        let config: ImageConfiguration = parse(&mpath, &config_data)?;
        let diff_ids = config.rootfs().diff_ids();
        if diff_ids.len() != manifest.layers().len() {
            return Err(ImageError::Input(format!(
                "{}: {} layers, its config lists {} diff_ids",
                mpath.display(),
                manifest.layers().len(),
                diff_ids.len()
            )));
        }
        for (layer, diff_id) in manifest.layers().iter().zip(diff_ids) {
            let blob = read_blob(dir, layer)?;
            let mut tar = Vec::new();
            flate2::read::GzDecoder::new(blob.as_slice())
                .read_to_end(&mut tar)
                .map_err(|e| ImageError::io(&mpath, e))?;
            let got = format!("sha256:{}", sha256_hex(&tar));
            if &got != diff_id {
                return Err(ImageError::Input(format!(
                    "{}: layer {} uncompresses to {got}, its config says {diff_id}",
                    mpath.display(),
                    layer.digest()
                )));
            }
        }
        let arch = config.architecture().to_string();
        if let Some(p) = d.platform()
            && p.architecture().to_string() != arch
        {
            return Err(ImageError::Input(format!(
                "{}: index says {}, config says {arch}",
                mpath.display(),
                p.architecture()
            )));
        }
        let name = d
            .annotations()
            .as_ref()
            .and_then(|a| a.get(CONTAINERD_NAME).cloned())
            .unwrap_or_default();
        found.push(Found {
            name,
            arch,
            manifest: d.clone(),
            config,
            layers: manifest.layers().clone(),
        });
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::layer::LayerBuilder;
    use oci_spec::image::ConfigBuilder;

    fn layer(name: &str) -> Layer {
        let mut b = LayerBuilder::new();
        b.bytes(name, 0o644, name.as_bytes().to_vec()).unwrap();
        b.finish(1_700_000_000).unwrap()
    }

    fn write_two(dir: &Path, shared: &Layer, extra: &Layer) -> Vec<Written> {
        let mut w = LayoutWriter::create(dir).unwrap();
        for (name, layers) in [
            ("a:latest", vec![shared]),
            ("b:latest", vec![shared, extra]),
        ] {
            let config = ConfigBuilder::default()
                .entrypoint(vec!["/bin/baetyl".to_string(), name.to_string()])
                .labels(
                    [("x", "1"), ("y", "2"), ("z", "3")]
                        .into_iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect::<std::collections::HashMap<_, _>>(),
                )
                .build()
                .unwrap();
            w.add(ImageDef {
                name: name.into(),
                debarch: "arm64",
                layers,
                config,
                created: "2023-11-14T22:13:20Z".into(),
            })
            .unwrap();
        }
        w.finish().unwrap()
    }

    #[test]
    fn images_share_blobs_validate_and_are_reproducible() {
        let d = tempfile::tempdir().unwrap();
        let (shared, extra) = (layer("bin/baetyl"), layer("usr/bin/python3"));
        let first = write_two(d.path(), &shared, &extra);
        let found = validate(d.path()).unwrap();
        assert_eq!(found.len(), 2);
        assert_eq!(found[1].name, "b:latest");
        assert_eq!(found[1].arch, "arm64");
        assert_eq!(found[1].layers.len(), 2);
        assert_eq!(found[0].layers[0], found[1].layers[0], "one shared layer");
        // 2 configs + 2 manifests + 2 layers
        let blobs = std::fs::read_dir(d.path().join("blobs/sha256"))
            .unwrap()
            .count();
        assert_eq!(blobs, 6);
        let again = write_two(d.path(), &shared, &extra);
        let digests = |w: &[Written]| w.iter().map(|i| i.manifest.clone()).collect::<Vec<_>>();
        assert_eq!(
            digests(&first),
            digests(&again),
            "same inputs, same digests"
        );
        assert!(first[1].size > first[0].size);
    }

    #[test]
    fn a_changed_or_truncated_blob_is_named() {
        let d = tempfile::tempdir().unwrap();
        write_two(d.path(), &layer("a"), &layer("b"));
        let found = validate(d.path()).unwrap();
        let blob = d
            .path()
            .join("blobs/sha256")
            .join(found[1].layers[1].as_digest_sha256().unwrap());
        let mut data = std::fs::read(&blob).unwrap();
        data[20] ^= 1;
        std::fs::write(&blob, &data).unwrap();
        let err = validate(d.path()).unwrap_err().to_string();
        assert!(err.contains("content has digest"), "{err}");
        data.pop();
        std::fs::write(&blob, &data).unwrap();
        let err = validate(d.path()).unwrap_err().to_string();
        assert!(err.contains("its descriptor says"), "{err}");
    }
}
