//! The images the engine can run: read from the OCI image layouts of conf.yml `containerd.images` (the same
//! layouts it imports), so that starting a container needs no round trip for the image's configuration. A
//! service's `image` resolves as in Baetyl v1: registry and path are dropped (`hub.baetyl.io/baetyl/baetyl-hub`
//! is `baetyl-hub`), the tag picks among the images of that name, and a name held under one tag only is that
//! image whatever the tag asked (v1 applications name versions such as `:v2.0.0`; the device has one).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::import::{ImportError, chain_ids, read_json};
use super::spec::ImageProcess;

/// One image of a layout.
#[derive(Debug, Clone)]
pub struct CatalogImage {
    /// `name:tag`, as recorded in containerd.
    pub reference: String,
    pub process: ImageProcess,
    /// The chain id of its top layer: the parent of each container's snapshot.
    pub top: String,
}

#[derive(Debug, Default, Clone)]
pub struct Catalog {
    /// By `name:tag`.
    images: BTreeMap<String, CatalogImage>,
}

fn blob(dir: &Path, descriptor: &Value, at: &Path) -> Result<PathBuf, ImportError> {
    descriptor["digest"]
        .as_str()
        .and_then(|d| d.strip_prefix("sha256:"))
        .filter(|d| d.len() == 64 && d.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(|d| dir.join("blobs/sha256").join(d))
        .ok_or_else(|| ImportError::Layout {
            path: at.to_path_buf(),
            detail: format!("not a sha256 descriptor: {descriptor}"),
        })
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// `registry/path/name:tag@digest` -> (`name`, `tag` when given).
pub fn split_reference(image: &str) -> (&str, Option<&str>) {
    let no_digest = image.split('@').next().unwrap_or(image);
    let last = no_digest.rsplit('/').next().unwrap_or(no_digest);
    match last.split_once(':') {
        Some((name, tag)) => (name, Some(tag)),
        None => (last, None),
    }
}

impl Catalog {
    /// Reads the images of the layout in `dir` into the catalog; answers their references, in the layout's
    /// order, each with the size of its layers (compressed, as stored).
    pub fn add_layout(&mut self, dir: &Path) -> Result<Vec<(String, u64)>, ImportError> {
        let index_path = dir.join("index.json");
        let index = read_json(&index_path)?;
        let mut added = Vec::new();
        for m in index["manifests"].as_array().into_iter().flatten() {
            let Some(reference) = m["annotations"]["io.containerd.image.name"].as_str() else {
                continue;
            };
            let mpath = blob(dir, m, &index_path)?;
            let manifest = read_json(&mpath)?;
            let size = manifest["layers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|l| l["size"].as_u64())
                .sum();
            added.push((reference.to_string(), size));
            let cpath = blob(dir, &manifest["config"], &mpath)?;
            let config = read_json(&cpath)?;
            let c = &config["config"];
            let top = chain_ids(&strings(&config["rootfs"]["diff_ids"]))
                .pop()
                .ok_or_else(|| ImportError::Layout {
                    path: cpath.clone(),
                    detail: "an image without layers".into(),
                })?;
            self.images.insert(
                reference.to_string(),
                CatalogImage {
                    reference: reference.to_string(),
                    process: ImageProcess {
                        entrypoint: strings(&c["Entrypoint"]),
                        cmd: strings(&c["Cmd"]),
                        env: strings(&c["Env"]),
                        working_dir: c["WorkingDir"]
                            .as_str()
                            .filter(|w| !w.is_empty())
                            .map(str::to_string),
                    },
                    top,
                },
            );
        }
        Ok(added)
    }

    /// The image a service's `image` names (see the module's doc).
    pub fn resolve(&self, image: &str) -> Option<&CatalogImage> {
        let (name, tag) = split_reference(image);
        if let Some(found) = self
            .images
            .get(&format!("{name}:{}", tag.unwrap_or("latest")))
        {
            return Some(found);
        }
        let mut same_name = self
            .images
            .values()
            .filter(|i| split_reference(&i.reference).0 == name);
        match (same_name.next(), same_name.next()) {
            (Some(only), None) => Some(only),
            _ => None,
        }
    }

    /// The references held, for messages.
    pub fn references(&self) -> Vec<&str> {
        self.images.keys().map(String::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(reference: &str) -> CatalogImage {
        CatalogImage {
            reference: reference.into(),
            process: ImageProcess::default(),
            top: String::new(),
        }
    }

    #[test]
    fn v1_names_resolve_to_the_layouts_images() {
        let mut c = Catalog::default();
        for r in ["baetyl-hub:latest", "tool:1", "tool:2"] {
            c.images.insert(r.into(), image(r));
        }
        let hub = |i: &str| c.resolve(i).map(|i| i.reference.as_str());
        assert_eq!(hub("baetyl-hub"), Some("baetyl-hub:latest"));
        assert_eq!(
            hub("hub.baetyl.io/baetyl/baetyl-hub:v2.0.0"),
            Some("baetyl-hub:latest")
        );
        assert_eq!(hub("baetyl-hub@sha256:abcd"), Some("baetyl-hub:latest"));
        assert_eq!(hub("tool:2"), Some("tool:2"));
        assert_eq!(hub("tool"), None, "two tags, none latest: ambiguous");
        assert_eq!(hub("baetyl-timer"), None);
        assert_eq!(split_reference("localhost:5000/a/b:c"), ("b", Some("c")));
    }
}
