//! OCI image pulls for template builds: image references as Docker reads them, the
//! distribution protocol (anonymous bearer tokens, plain HTTP for loopback registries, a
//! registry mirror for Docker Hub), linux/amd64 picked from indexes, every blob verified by its
//! sha256 digest, and layers unpacked safely, with overlayfs whiteouts, into a directory per
//! layer under the layer store (`<store>/sha256:<hex>/`, the digest of the layer blob).
//!
//! A layer directory appears only complete: layers are downloaded and unpacked under
//! `<store>/.pull-<random>/` and renamed into place; that directory is removed when the pull
//! ends (a leftover after a crash holds nothing the store refers to). A layer already in the
//! store is neither downloaded nor unpacked again.

mod reference;
mod registry;
mod sys;
mod unpack;

#[cfg(test)]
mod tests;
#[cfg(test)]
pub(crate) mod testutil;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use url::Url;

pub(crate) use reference::Reference;
use registry::{Repo, MAX_CONFIG};
pub(crate) use unpack::UnpackStats;

/// Most layers an image may have (overlayfs stacks up to 500 lower layers; images rarely have
/// more than a few dozen).
const MAX_LAYERS: usize = 256;

/// Why a pull failed. Never holds a token.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OciError {
    #[error("invalid image reference {reference:?}: {reason}")]
    BadReference { reference: String, reason: String },
    #[error("cannot reach registry {registry}: {detail}")]
    Unreachable { registry: String, detail: String },
    #[error("{what} not found in {registry}/{repository}")]
    NotFound {
        registry: String,
        repository: String,
        what: String,
    },
    #[error("registry {registry} refused {repository}: {detail}")]
    Denied {
        registry: String,
        repository: String,
        detail: String,
    },
    #[error("registry {registry} answered HTTP {status} for {what}")]
    Registry {
        registry: String,
        status: u16,
        what: String,
    },
    #[error("{what} from {registry} is larger than the limit of {limit} bytes")]
    TooLarge {
        what: String,
        registry: String,
        limit: u64,
    },
    #[error("{what} does not match its digest: expected {expected}, got {actual}")]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },
    #[error("malformed {what}: {detail}")]
    Malformed { what: String, detail: String },
    #[error("unsupported image: {0}")]
    Unsupported(String),
    #[error("{reference} has no linux/amd64 image (it has: {available})")]
    NoPlatform {
        reference: String,
        available: String,
    },
    #[error("layer {digest} is unsafe: entry {path:?}: {reason}")]
    UnsafeLayer {
        digest: String,
        path: String,
        reason: String,
    },
    #[error("layer {digest} is not a valid layer: {detail}")]
    BadLayer { digest: String, detail: String },
    #[error("layer store: {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// How to pull.
#[derive(Debug, Clone, Default)]
pub(crate) struct PullOptions {
    /// Docker Hub pulls try this registry first and fall back to Docker Hub (as dockerd's
    /// `registry-mirrors`).
    pub mirror: Option<Url>,
}

/// The parts of the image configuration a template needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ImageConfig {
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
}

/// One layer of a pulled image, bottom first in [`PulledImage::layers`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LayerRef {
    /// `sha256:<hex>` of the (compressed) layer blob: the layer's id in the store.
    pub digest: String,
    /// `<store>/<digest>`.
    pub dir: PathBuf,
    /// Size of the blob as the manifest states it, bytes.
    pub size: u64,
    /// Whether this pull downloaded and unpacked it (false: it was in the store already).
    pub downloaded: bool,
}

/// A pulled image.
#[derive(Debug, Clone)]
pub(crate) struct PulledImage {
    /// The normalised reference (`docker.io/library/python:3.11`).
    pub reference: String,
    /// Digest of the manifest (or index) the reference names: what `docker pull` prints.
    pub digest: String,
    /// Digest of the linux/amd64 image manifest.
    pub manifest_digest: String,
    /// Where the manifest came from (the registry host, or the mirror's URL).
    pub source: String,
    pub layers: Vec<LayerRef>,
    pub config: ImageConfig,
}

#[derive(Deserialize)]
struct Descriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    size: u64,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Deserialize)]
struct Platform {
    architecture: String,
    os: String,
    #[serde(default)]
    variant: Option<String>,
}

#[derive(Deserialize)]
struct Index {
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct Manifest {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    config: Descriptor,
    layers: Vec<Descriptor>,
}

#[derive(Deserialize, Default)]
struct ConfigFile {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
    #[serde(default)]
    config: Option<RunConfig>,
}

#[derive(Deserialize, Default)]
struct RunConfig {
    #[serde(rename = "Env", default)]
    env: Option<Vec<String>>,
    #[serde(rename = "WorkingDir", default)]
    working_dir: Option<String>,
    #[serde(rename = "User", default)]
    user: Option<String>,
    #[serde(rename = "Entrypoint", default)]
    entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd", default)]
    cmd: Option<Vec<String>>,
}

const INDEX_TYPES: [&str; 2] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];
const MANIFEST_TYPES: [&str; 2] = [
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];
const LAYER_TYPES: [&str; 8] = [
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
];

fn malformed(what: &str, e: impl std::fmt::Display) -> OciError {
    OciError::Malformed {
        what: what.to_owned(),
        detail: e.to_string(),
    }
}

fn http_client() -> Result<reqwest::Client, OciError> {
    reqwest::Client::builder()
        .user_agent(concat!("superserve-local/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(15))
        .read_timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| OciError::Unreachable {
            registry: "(none)".into(),
            detail: format!("cannot build the HTTP client: {e}"),
        })
}

/// Pulls `reference` for linux/amd64 into the layer store `store` (created if missing).
/// `log` receives progress lines ("pulling …", "layer … done").
pub(crate) async fn pull(
    opts: &PullOptions,
    reference: &str,
    store: &Path,
    log: &(dyn Fn(&str) + Send + Sync),
) -> Result<PulledImage, OciError> {
    let r = Reference::parse(reference)?;
    let http = http_client()?;
    let mut candidates = Vec::new();
    if let (true, Some(m)) = (r.is_docker_hub(), &opts.mirror) {
        candidates.push(Repo::for_mirror(http.clone(), m, &r.repository));
    }
    candidates.push(Repo::for_host(http, r.api_host(), &r.repository)?);
    let n = candidates.len();
    let mut chosen = None;
    for (i, mut repo) in candidates.into_iter().enumerate() {
        log(&format!("pulling {r} from {}", repo.name));
        match repo.manifest(r.manifest_ref()).await {
            Ok(m) => {
                chosen = Some((repo, m));
                break;
            }
            Err(e) if i + 1 < n => log(&format!("mirror {}: {e}; trying Docker Hub", repo.name)),
            Err(e) => return Err(e),
        }
    }
    let Some((mut repo, top)) = chosen else {
        unreachable!("the last candidate returns its error")
    };
    if let Some(d) = &r.digest {
        if &top.digest != d {
            return Err(OciError::DigestMismatch {
                what: format!("manifest of {r}"),
                expected: d.clone(),
                actual: top.digest,
            });
        }
    }
    let (manifest, manifest_digest) = resolve_platform(&mut repo, &r, &top).await?;
    if manifest.layers.len() > MAX_LAYERS {
        return Err(OciError::Unsupported(format!(
            "{} layers (at most {MAX_LAYERS})",
            manifest.layers.len()
        )));
    }
    for l in &manifest.layers {
        if !l.media_type.is_empty() && !LAYER_TYPES.contains(&l.media_type.as_str()) {
            return Err(OciError::Unsupported(format!(
                "layer media type {:?}",
                l.media_type.chars().take(100).collect::<String>()
            )));
        }
        reference::parse_digest(&l.digest).map_err(|e| malformed("layer digest", e))?;
    }
    reference::parse_digest(&manifest.config.digest).map_err(|e| malformed("config digest", e))?;
    let cfg_bytes = repo
        .small_blob(&manifest.config.digest, manifest.config.size, MAX_CONFIG)
        .await?;
    let cfg: ConfigFile =
        serde_json::from_slice(&cfg_bytes).map_err(|e| malformed("image configuration", e))?;
    if (!cfg.os.is_empty() && cfg.os != "linux")
        || (!cfg.architecture.is_empty() && cfg.architecture != "amd64")
    {
        return Err(OciError::NoPlatform {
            reference: r.to_string(),
            available: format!("{}/{}", cfg.os, cfg.architecture),
        });
    }
    let rc = cfg.config.unwrap_or_default();
    let config = ImageConfig {
        env: rc.env.unwrap_or_default(),
        working_dir: rc.working_dir.filter(|w| !w.is_empty()),
        user: rc.user.filter(|u| !u.is_empty()),
        entrypoint: rc.entrypoint.unwrap_or_default(),
        cmd: rc.cmd.unwrap_or_default(),
    };
    log(&format!(
        "{r}: {manifest_digest}, {} layers, {:.1} MiB",
        manifest.layers.len(),
        manifest.layers.iter().map(|l| l.size).sum::<u64>() as f64 / 1048576.0
    ));

    std::fs::create_dir_all(store).map_err(|e| io_err(store, e))?;
    let work = WorkDir::create(store)?;
    let layers = fetch_layers(&mut repo, &manifest.layers, store, &work, log).await;
    drop(work);
    let layers = layers?;
    log(&format!("pulled {r}"));
    Ok(PulledImage {
        reference: r.to_string(),
        digest: top.digest,
        manifest_digest,
        source: repo.name.clone(),
        layers,
        config,
    })
}

/// The linux/amd64 manifest of `top` (itself if it is an image manifest) and its digest.
async fn resolve_platform(
    repo: &mut Repo,
    r: &Reference,
    top: &registry::Fetched,
) -> Result<(Manifest, String), OciError> {
    #[derive(Deserialize)]
    struct Probe {
        #[serde(rename = "mediaType", default)]
        media_type: Option<String>,
        #[serde(default)]
        manifests: Option<serde_json::Value>,
        #[serde(rename = "schemaVersion", default)]
        schema_version: Option<u32>,
    }
    let probe: Probe = serde_json::from_slice(&top.bytes).map_err(|e| malformed("manifest", e))?;
    if probe.schema_version == Some(1) {
        return Err(OciError::Unsupported(
            "Docker image manifest schema 1 (deprecated; push the image again with a current tool)"
                .into(),
        ));
    }
    let media = probe
        .media_type
        .clone()
        .unwrap_or_else(|| top.media_type.clone());
    let is_index = INDEX_TYPES.contains(&media.as_str())
        || (probe.manifests.is_some() && !MANIFEST_TYPES.contains(&media.as_str()));
    if !is_index {
        let m = parse_manifest(&top.bytes, &top.media_type)?;
        return Ok((m, top.digest.clone()));
    }
    let index: Index =
        serde_json::from_slice(&top.bytes).map_err(|e| malformed("image index", e))?;
    let pick = index.manifests.iter().find(|d| {
        d.platform
            .as_ref()
            .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
    });
    let Some(pick) = pick else {
        let available = index
            .manifests
            .iter()
            .filter_map(|d| d.platform.as_ref())
            .map(|p| match &p.variant {
                Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
                None => format!("{}/{}", p.os, p.architecture),
            })
            .collect::<Vec<_>>()
            .join(", ");
        return Err(OciError::NoPlatform {
            reference: r.to_string(),
            available: if available.is_empty() {
                "no platforms listed".into()
            } else {
                available
            },
        });
    };
    reference::parse_digest(&pick.digest).map_err(|e| malformed("index entry digest", e))?;
    let child = repo.manifest(&pick.digest).await?;
    if child.digest != pick.digest {
        return Err(OciError::DigestMismatch {
            what: format!("linux/amd64 manifest of {r}"),
            expected: pick.digest.clone(),
            actual: child.digest,
        });
    }
    let m = parse_manifest(&child.bytes, &child.media_type)?;
    Ok((m, child.digest))
}

fn parse_manifest(bytes: &[u8], content_type: &str) -> Result<Manifest, OciError> {
    let m: Manifest = serde_json::from_slice(bytes).map_err(|e| malformed("image manifest", e))?;
    let media = m.media_type.as_deref().unwrap_or(content_type);
    if m.schema_version != 2 || !(media.is_empty() || MANIFEST_TYPES.contains(&media)) {
        return Err(OciError::Unsupported(format!(
            "manifest type {:?} (schema {})",
            media.chars().take(100).collect::<String>(),
            m.schema_version
        )));
    }
    Ok(m)
}

/// Downloads and unpacks the layers not yet in the store; one layer unpacks while the next
/// downloads.
async fn fetch_layers(
    repo: &mut Repo,
    descriptors: &[Descriptor],
    store: &Path,
    work: &WorkDir,
    log: &(dyn Fn(&str) + Send + Sync),
) -> Result<Vec<LayerRef>, OciError> {
    let mut out = Vec::with_capacity(descriptors.len());
    let mut unpacking: Option<Unpacking> = None;
    let mut result = Ok(());
    for (i, d) in descriptors.iter().enumerate() {
        let dir = store.join(&d.digest);
        let present = out.iter().any(|l: &LayerRef| l.digest == d.digest) || dir.is_dir();
        out.push(LayerRef {
            digest: d.digest.clone(),
            dir: dir.clone(),
            size: d.size,
            downloaded: !present,
        });
        if present {
            log(&format!(
                "layer {} already present",
                unpack::short(&d.digest)
            ));
            continue;
        }
        log(&format!(
            "layer {} downloading ({:.1} MiB)",
            unpack::short(&d.digest),
            d.size as f64 / 1048576.0
        ));
        let blob = work.path.join(format!("blob-{i}"));
        if let Err(e) = repo.blob_to_file(&d.digest, d.size, &blob).await {
            result = Err(e);
            break;
        }
        if let Some(prev) = unpacking.take() {
            if let Err(e) = prev.finish(log).await {
                result = Err(e);
                break;
            }
        }
        let tmp = work.path.join(format!("layer-{i}"));
        let digest = d.digest.clone();
        let size = d.size;
        let lines = LogBuffer::default();
        let thread_lines = lines.clone();
        let task = tokio::task::spawn_blocking(move || {
            let log = |l: &str| thread_lines.push(l);
            let r = unpack_into_store(&blob, &tmp, &dir, &digest, &log);
            let _ = std::fs::remove_file(&blob);
            let stats = r?;
            log(&format!(
                "layer {} done ({:.1} MiB, {} entries{})",
                unpack::short(&digest),
                size as f64 / 1048576.0,
                stats.entries,
                if stats.skipped_devices > 0 {
                    format!(", {} device nodes not created", stats.skipped_devices)
                } else {
                    String::new()
                }
            ));
            Ok(())
        });
        unpacking = Some(Unpacking { task, lines });
    }
    if let Some(prev) = unpacking.take() {
        let r = prev.finish(log).await;
        if result.is_ok() {
            result = r;
        }
    }
    result.map(|()| out)
}

/// A layer being unpacked on a blocking thread, and the lines it logs.
struct Unpacking {
    task: tokio::task::JoinHandle<Result<(), OciError>>,
    lines: LogBuffer,
}

impl Unpacking {
    async fn finish(self, log: &(dyn Fn(&str) + Send + Sync)) -> Result<(), OciError> {
        let r = self.task.await.unwrap_or_else(|e| {
            Err(OciError::Io {
                path: PathBuf::from("(layer unpacker)"),
                source: std::io::Error::other(e.to_string()),
            })
        });
        for l in self.lines.take() {
            log(&l);
        }
        r
    }
}

/// Unpacks `blob` into `tmp` and renames it to `dir`. If `dir` appeared meanwhile (another
/// pull of the same layer), that copy is kept and ours is removed.
fn unpack_into_store(
    blob: &Path,
    tmp: &Path,
    dir: &Path,
    digest: &str,
    log: &(dyn Fn(&str) + Send + Sync),
) -> Result<UnpackStats, OciError> {
    std::fs::create_dir(tmp).map_err(|e| io_err(tmp, e))?;
    let r = unpack::unpack_layer(blob, tmp, digest, log);
    let stats = match r {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_dir_all(tmp);
            return Err(e);
        }
    };
    match std::fs::rename(tmp, dir) {
        Ok(()) => Ok(stats),
        Err(_) if dir.is_dir() => {
            let _ = std::fs::remove_dir_all(tmp);
            Ok(stats)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(tmp);
            Err(io_err(dir, e))
        }
    }
}

fn io_err(path: &Path, source: std::io::Error) -> OciError {
    OciError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Lines logged on a blocking thread, shown by the pull's task.
#[derive(Clone, Default)]
struct LogBuffer(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl LogBuffer {
    fn push(&self, l: &str) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(l.to_owned());
    }

    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// `<store>/.pull-<random>/`: downloads and half-unpacked layers of one pull, removed when
/// the pull ends (or its future is dropped).
struct WorkDir {
    path: PathBuf,
}

impl WorkDir {
    fn create(store: &Path) -> Result<WorkDir, OciError> {
        let path = store.join(format!(".pull-{:016x}", rand::random::<u64>()));
        std::fs::create_dir(&path).map_err(|e| io_err(&path, e))?;
        Ok(WorkDir { path })
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
