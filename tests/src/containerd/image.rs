//! The pause image, made without a registry: a static binary compiled from
//! tests/pause/pause.c at test time, packed as an OCI image layout tarball
//! that `ctr images import` accepts.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::json;
use sha2::{Digest, Sha256};

/// Name the CRI plugin's `sandbox_image` points at. `localhost/` keeps it
/// from ever being resolved against a real registry.
pub const PAUSE_IMAGE: &str = "localhost/trellis/pause:1";

const PAUSE_SOURCE: &str = include_str!("../../pause/pause.c");

const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MEDIA_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("cannot run gcc to build the pause binary: {0} (install gcc and libc6-dev)")]
    GccMissing(#[source] io::Error),
    #[error("gcc -static failed building the pause binary (is libc6-dev installed?): {stderr}")]
    GccFailed { stderr: String },
    #[error("pause image I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("building the image tar: {0}")]
    Tar(#[source] io::Error),
}

/// Compiles the pause binary into `dir` and returns its bytes.
pub fn build_pause_binary(dir: &Path) -> Result<Vec<u8>, ImageError> {
    let src = dir.join("pause.c");
    let bin = dir.join("pause");
    std::fs::write(&src, PAUSE_SOURCE).map_err(|source| ImageError::Io {
        path: src.clone(),
        source,
    })?;
    let out = Command::new("gcc")
        .args(["-static", "-Os", "-s", "-Wall", "-Wextra", "-Werror", "-o"])
        .arg(&bin)
        .arg(&src)
        .output()
        .map_err(ImageError::GccMissing)?;
    if !out.status.success() {
        return Err(ImageError::GccFailed {
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    std::fs::read(&bin).map_err(|source| ImageError::Io { path: bin, source })
}

/// Builds the pause binary and writes the image tarball into `dir`; returns
/// the tarball's path.
pub fn build_pause_image(dir: &Path) -> Result<PathBuf, ImageError> {
    let binary = build_pause_binary(dir)?;
    let tarball = oci_layout_tar(&binary, PAUSE_IMAGE)?;
    let path = dir.join("pause-image.tar");
    std::fs::write(&path, tarball).map_err(|source| ImageError::Io {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

fn sha256_hex(data: &[u8]) -> String {
    format!("{:x}", Sha256::digest(data))
}

/// A tar entry with fixed owner and mtime, so that the same input always
/// gives the same digests.
fn append_file(
    builder: &mut tar::Builder<Vec<u8>>,
    path: &str,
    mode: u32,
    data: &[u8],
) -> Result<(), ImageError> {
    let mut header = tar::Header::new_ustar();
    header.set_size(data.len() as u64);
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    builder
        .append_data(&mut header, path, data)
        .map_err(ImageError::Tar)
}

fn append_dir(builder: &mut tar::Builder<Vec<u8>>, path: &str) -> Result<(), ImageError> {
    let mut header = tar::Header::new_ustar();
    header.set_size(0);
    header.set_mode(0o755);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Directory);
    builder
        .append_data(&mut header, path, io::empty())
        .map_err(ImageError::Tar)
}

/// An OCI image layout (oci-layout, index.json, blobs/sha256/*) in one tar:
/// one uncompressed layer holding `/pause`, a config whose Entrypoint runs
/// it and whose `rootfs.diff_ids` names the layer, a manifest, and an index
/// entry annotated with `io.containerd.image.name` so `ctr images import`
/// tags it as `name`.
pub fn oci_layout_tar(pause_binary: &[u8], name: &str) -> Result<Vec<u8>, ImageError> {
    image_tar(&[("pause", 0o755, pause_binary)], &["/pause"], name)
}

/// A file of an image's single layer: path (relative, parents are added),
/// mode, content.
pub type LayerFile<'a> = (&'a str, u32, &'a [u8]);

/// Like [`oci_layout_tar`], for any set of files and entrypoint: e.g. a
/// static busybox for the node driver's test containers.
pub fn image_tar(
    files: &[LayerFile],
    entrypoint: &[&str],
    name: &str,
) -> Result<Vec<u8>, ImageError> {
    let mut layer = tar::Builder::new(Vec::new());
    let mut dirs = std::collections::BTreeSet::new();
    for (path, mode, data) in files {
        // Parent directories first, once each, so the layer unpacks the same
        // way whatever the snapshotter does with missing parents.
        let parents: Vec<&Path> = Path::new(path)
            .ancestors()
            .skip(1)
            .filter(|p| !p.as_os_str().is_empty())
            .collect();
        for dir in parents.into_iter().rev() {
            let dir = dir.to_string_lossy().into_owned();
            if dirs.insert(dir.clone()) {
                append_dir(&mut layer, &dir)?;
            }
        }
        append_file(&mut layer, path, *mode, data)?;
    }
    let layer = layer.into_inner().map_err(ImageError::Tar)?;
    // Uncompressed layer: its digest is also its diff_id.
    let layer_digest = sha256_hex(&layer);

    let config = serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "config": { "Entrypoint": entrypoint, "WorkingDir": "/" },
        "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{layer_digest}")] },
    }))
    .map_err(|e| ImageError::Tar(io::Error::other(e)))?;
    let config_digest = sha256_hex(&config);

    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": {
            "mediaType": MEDIA_CONFIG,
            "digest": format!("sha256:{config_digest}"),
            "size": config.len(),
        },
        "layers": [{
            "mediaType": MEDIA_LAYER,
            "digest": format!("sha256:{layer_digest}"),
            "size": layer.len(),
        }],
    }))
    .map_err(|e| ImageError::Tar(io::Error::other(e)))?;
    let manifest_digest = sha256_hex(&manifest);

    // A colon before the last '/' belongs to a registry port, not a tag.
    let tag = name
        .rsplit_once(':')
        .filter(|(_, t)| !t.contains('/'))
        .map_or("latest", |(_, t)| t);
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": MEDIA_MANIFEST,
            "digest": format!("sha256:{manifest_digest}"),
            "size": manifest.len(),
            "annotations": {
                "io.containerd.image.name": name,
                "org.opencontainers.image.ref.name": tag,
            },
            "platform": { "architecture": "amd64", "os": "linux" },
        }],
    }))
    .map_err(|e| ImageError::Tar(io::Error::other(e)))?;

    let mut out = tar::Builder::new(Vec::new());
    append_file(
        &mut out,
        "oci-layout",
        0o644,
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    append_file(&mut out, "index.json", 0o644, &index)?;
    append_dir(&mut out, "blobs")?;
    append_dir(&mut out, "blobs/sha256")?;
    for (digest, blob) in [
        (&layer_digest, &layer),
        (&config_digest, &config),
        (&manifest_digest, &manifest),
    ] {
        append_file(&mut out, &format!("blobs/sha256/{digest}"), 0o644, blob)?;
    }
    out.into_inner().map_err(ImageError::Tar)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::io::Read;

    use serde_json::Value;

    use super::*;

    fn entries(tarball: &[u8]) -> HashMap<String, Vec<u8>> {
        let mut archive = tar::Archive::new(tarball);
        let mut map = HashMap::new();
        for entry in archive.entries().expect("tar") {
            let mut entry = entry.expect("entry");
            let path = entry.path().expect("path").to_string_lossy().into_owned();
            let mut data = Vec::new();
            entry.read_to_end(&mut data).expect("read");
            map.insert(path, data);
        }
        map
    }

    fn blob<'a>(files: &'a HashMap<String, Vec<u8>>, digest: &Value) -> &'a [u8] {
        let digest = digest.as_str().expect("digest string");
        let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
        let data = files
            .get(&format!("blobs/sha256/{hex}"))
            .unwrap_or_else(|| panic!("blob {digest} missing"));
        assert_eq!(sha256_hex(data), hex, "blob content matches its name");
        data
    }

    #[test]
    fn layout_is_consistent_from_index_to_layer() {
        let binary = b"\x7fELF fake pause";
        let files = entries(&oci_layout_tar(binary, "localhost/x/pause:7").expect("build"));
        assert_eq!(files["oci-layout"], br#"{"imageLayoutVersion":"1.0.0"}"#);

        let index: Value = serde_json::from_slice(&files["index.json"]).expect("index json");
        let desc = &index["manifests"][0];
        assert_eq!(
            desc["annotations"]["io.containerd.image.name"],
            "localhost/x/pause:7"
        );
        assert_eq!(
            desc["annotations"]["org.opencontainers.image.ref.name"],
            "7"
        );
        let manifest_bytes = blob(&files, &desc["digest"]);
        assert_eq!(desc["size"], manifest_bytes.len());

        let manifest: Value = serde_json::from_slice(manifest_bytes).expect("manifest json");
        assert_eq!(manifest["mediaType"], MEDIA_MANIFEST);
        let config_bytes = blob(&files, &manifest["config"]["digest"]);
        assert_eq!(manifest["config"]["size"], config_bytes.len());
        let layer_bytes = blob(&files, &manifest["layers"][0]["digest"]);
        assert_eq!(manifest["layers"][0]["mediaType"], MEDIA_LAYER);

        let config: Value = serde_json::from_slice(config_bytes).expect("config json");
        assert_eq!(config["config"]["Entrypoint"][0], "/pause");
        assert_eq!(
            config["rootfs"]["diff_ids"][0], manifest["layers"][0]["digest"],
            "uncompressed layer: diff_id equals the layer digest"
        );

        let layer = entries(layer_bytes);
        assert_eq!(layer["pause"], binary);
        let mut archive = tar::Archive::new(layer_bytes);
        let first = archive.entries().expect("tar").next().expect("one entry");
        assert_eq!(first.expect("entry").header().mode().expect("mode"), 0o755);
    }

    #[test]
    fn same_input_gives_same_digests() {
        let a = oci_layout_tar(b"same", PAUSE_IMAGE).expect("build");
        let b = oci_layout_tar(b"same", PAUSE_IMAGE).expect("build");
        assert_eq!(a, b);
    }

    #[test]
    fn untagged_name_gets_latest_ref() {
        for name in ["localhost/p", "localhost:5000/p"] {
            let files = entries(&oci_layout_tar(b"x", name).expect("build"));
            let index: Value = serde_json::from_slice(&files["index.json"]).expect("json");
            assert_eq!(
                index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"], "latest",
                "{name}"
            );
        }
    }
}
