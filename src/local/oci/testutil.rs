//! Real parts for the pull tests and the `bench_pull` example: Debian's `docker-registry` on a
//! free loopback port with its own storage directory, a small pusher speaking the registry's
//! HTTP API (blob upload, manifest PUT), and layer tarballs built here.
//!
//! Self-contained (std, reqwest's blocking client, tar, flate2, ring, serde_json) so that the
//! benchmark example can include it as a module of its own.

#![allow(dead_code)]

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A scratch directory under the system temp dir, removed on drop.
pub(crate) struct Scratch(pub PathBuf);

impl Scratch {
    pub(crate) fn new(tag: &str) -> Scratch {
        let p = std::env::temp_dir().join(format!(
            "superserve-oci-{tag}-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&p).expect("create scratch dir");
        Scratch(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `docker-registry serve` on `127.0.0.1:<free port>`, killed and its storage removed on drop.
pub(crate) struct TestRegistry {
    child: Child,
    pub port: u16,
    pub dir: Scratch,
    http: reqwest::blocking::Client,
}

/// What a push produced.
#[derive(Debug, Clone)]
pub(crate) struct Pushed {
    pub manifest_digest: String,
    pub config_digest: String,
    pub layers: Vec<String>,
}

/// A free loopback port (bound, read, released).
pub(crate) fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

/// `sha256:<hex>` of `b`.
pub(crate) fn sha256(b: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, b);
    let mut s = String::from("sha256:");
    for x in d.as_ref() {
        s.push_str(&format!("{x:02x}"));
    }
    s
}

impl TestRegistry {
    /// Starts the registry; a missing `docker-registry` is a clear failure naming the package.
    pub(crate) fn start() -> TestRegistry {
        let bin = ["/usr/bin/docker-registry", "/usr/sbin/docker-registry"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or_else(|| {
                panic!(
                    "docker-registry is not installed: the OCI pull tests need Debian's \
                     `docker-registry` package (apt-get install docker-registry)"
                )
            });
        let dir = Scratch::new("registry");
        let port = free_port();
        let config = dir.0.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
                 http:\n  addr: 127.0.0.1:{port}\n",
                dir.0.join("storage").display()
            ),
        )
        .expect("write registry config");
        let log = std::fs::File::create(dir.0.join("registry.log")).expect("registry log");
        let child = Command::new(bin)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("start docker-registry");
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .expect("http client");
        let mut reg = TestRegistry {
            child,
            port,
            dir,
            http,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = reg.http.get(format!("{}/v2/", reg.url())).send() {
                if r.status().is_success() {
                    break;
                }
            }
            if let Ok(Some(status)) = reg.child.try_wait() {
                panic!(
                    "docker-registry exited ({status}): {}",
                    std::fs::read_to_string(reg.dir.0.join("registry.log")).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry did not answer on port {port} within 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        reg
    }

    /// `127.0.0.1:<port>`: the registry part of a reference.
    pub(crate) fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:<port>`.
    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.host())
    }

    /// Where the registry keeps the bytes of blob `digest`.
    pub(crate) fn blob_data(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.dir
            .0
            .join("storage/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// Uploads a blob (POST then PUT with the digest); returns its digest.
    pub(crate) fn push_blob(&self, repo: &str, data: &[u8]) -> String {
        let digest = sha256(data);
        let r = self
            .http
            .post(format!("{}/v2/{repo}/blobs/uploads/", self.url()))
            .send()
            .expect("start blob upload");
        assert_eq!(r.status().as_u16(), 202, "blob upload start: {r:?}");
        let loc = r
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .expect("upload location")
            .to_owned();
        let mut url = url::Url::parse(&self.url())
            .and_then(|base| base.join(&loc))
            .expect("upload URL");
        url.query_pairs_mut().append_pair("digest", &digest);
        let r = self
            .http
            .put(url)
            .header("content-type", "application/octet-stream")
            .body(data.to_vec())
            .send()
            .expect("upload blob");
        assert_eq!(r.status().as_u16(), 201, "blob upload: {:?}", r.text());
        digest
    }

    /// PUTs a manifest under `reference` (a tag); returns its digest.
    pub(crate) fn push_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> String {
        let r = self
            .http
            .put(format!("{}/v2/{repo}/manifests/{reference}", self.url()))
            .header("content-type", media_type)
            .body(body.to_vec())
            .send()
            .expect("put manifest");
        assert_eq!(r.status().as_u16(), 201, "manifest put: {:?}", r.text());
        sha256(body)
    }

    /// Pushes an image of gzip-compressed `layers` and configuration `config`, as a Docker v2
    /// schema 2 manifest (`docker == true`) or an OCI manifest.
    pub(crate) fn push_image(
        &self,
        repo: &str,
        tag: &str,
        layers: &[Vec<u8>],
        config: &[u8],
        docker: bool,
    ) -> Pushed {
        let (mt, cfg_mt, layer_mt) = if docker {
            (
                "application/vnd.docker.distribution.manifest.v2+json",
                "application/vnd.docker.container.image.v1+json",
                "application/vnd.docker.image.rootfs.diff.tar.gzip",
            )
        } else {
            (
                "application/vnd.oci.image.manifest.v1+json",
                "application/vnd.oci.image.config.v1+json",
                "application/vnd.oci.image.layer.v1.tar+gzip",
            )
        };
        let config_digest = self.push_blob(repo, config);
        let mut descs = Vec::new();
        let mut digests = Vec::new();
        for l in layers {
            let d = self.push_blob(repo, l);
            descs.push(serde_json::json!({"mediaType": layer_mt, "digest": d, "size": l.len()}));
            digests.push(d);
        }
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": mt,
            "config": {"mediaType": cfg_mt, "digest": config_digest, "size": config.len()},
            "layers": descs,
        }))
        .expect("manifest json");
        let manifest_digest = self.push_manifest(repo, tag, mt, &manifest);
        Pushed {
            manifest_digest,
            config_digest,
            layers: digests,
        }
    }

    /// Pushes an OCI index under `tag` listing `(digest, size, architecture)` manifests.
    pub(crate) fn push_index(
        &self,
        repo: &str,
        tag: &str,
        entries: &[(String, usize, &str)],
    ) -> String {
        let manifests: Vec<_> = entries
            .iter()
            .map(|(d, size, arch)| {
                serde_json::json!({
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": d, "size": size,
                    "platform": {"os": "linux", "architecture": arch},
                })
            })
            .collect();
        let body = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": manifests,
        }))
        .expect("index json");
        self.push_manifest(repo, tag, "application/vnd.oci.image.index.v1+json", &body)
    }

    /// Size in bytes of the manifest stored under `digest`.
    pub(crate) fn manifest_size(&self, repo: &str, digest: &str) -> usize {
        self.http
            .get(format!("{}/v2/{repo}/manifests/{digest}", self.url()))
            .header(
                "accept",
                "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json",
            )
            .send()
            .and_then(|r| r.bytes())
            .expect("get manifest")
            .len()
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An image configuration (`architecture` amd64 unless said otherwise).
pub(crate) fn config_json(
    arch: &str,
    env: &[&str],
    workdir: &str,
    user: &str,
    cmd: &[&str],
) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "architecture": arch,
        "os": "linux",
        "config": {"Env": env, "WorkingDir": workdir, "User": user, "Cmd": cmd},
        "rootfs": {"type": "layers", "diff_ids": []},
    }))
    .expect("config json")
}

/// Builds layer tarballs entry by entry.
pub(crate) struct Tar(tar::Builder<Vec<u8>>);

impl Default for Tar {
    fn default() -> Self {
        Tar::new()
    }
}

impl Tar {
    pub(crate) fn new() -> Tar {
        Tar(tar::Builder::new(Vec::new()))
    }

    fn header(
        kind: tar::EntryType,
        mode: u32,
        uid: u64,
        gid: u64,
        mtime: u64,
        size: u64,
    ) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_mtime(mtime);
        h.set_size(size);
        h
    }

    pub(crate) fn dir(&mut self, path: &str, mode: u32) -> &mut Self {
        let mut h = Self::header(tar::EntryType::Directory, mode, 0, 0, 1_600_000_000, 0);
        self.0.append_data(&mut h, path, &[][..]).expect("tar dir");
        self
    }

    pub(crate) fn file(&mut self, path: &str, data: &[u8]) -> &mut Self {
        self.file_with(path, data, 0o644, 0, 0, 1_600_000_000)
    }

    pub(crate) fn file_with(
        &mut self,
        path: &str,
        data: &[u8],
        mode: u32,
        uid: u64,
        gid: u64,
        mtime: u64,
    ) -> &mut Self {
        let mut h = Self::header(
            tar::EntryType::Regular,
            mode,
            uid,
            gid,
            mtime,
            data.len() as u64,
        );
        self.0.append_data(&mut h, path, data).expect("tar file");
        self
    }

    /// A file carrying the extended attribute `name=value` in a PAX record.
    pub(crate) fn file_xattr(
        &mut self,
        path: &str,
        data: &[u8],
        name: &str,
        value: &[u8],
    ) -> &mut Self {
        let key = format!("SCHILY.xattr.{name}");
        self.0
            .append_pax_extensions([(key.as_str(), value)])
            .expect("pax");
        self.file(path, data)
    }

    pub(crate) fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.raw(
            path.as_bytes(),
            tar::EntryType::Symlink,
            target.as_bytes(),
            b"",
        )
    }

    pub(crate) fn hardlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.raw(
            path.as_bytes(),
            tar::EntryType::Link,
            target.as_bytes(),
            b"",
        )
    }

    pub(crate) fn device(&mut self, path: &str, major: u32, minor: u32) -> &mut Self {
        let mut h = Self::header(tar::EntryType::Char, 0o666, 0, 0, 1_600_000_000, 0);
        h.set_device_major(major).expect("major");
        h.set_device_minor(minor).expect("minor");
        let name = &mut h.as_old_mut().name;
        name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_cksum();
        self.0.append(&h, &[][..]).expect("tar device");
        self
    }

    /// An entry with its name and link name written as given: no check (`..`, `/...`), as a
    /// hostile image would have it.
    pub(crate) fn raw(
        &mut self,
        name: &[u8],
        kind: tar::EntryType,
        link: &[u8],
        data: &[u8],
    ) -> &mut Self {
        let mut h = Self::header(kind, 0o777, 0, 0, 1_600_000_000, data.len() as u64);
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
        h.set_cksum();
        self.0.append(&h, data).expect("tar raw");
        self
    }

    pub(crate) fn finish(&mut self) -> Vec<u8> {
        std::mem::replace(&mut self.0, tar::Builder::new(Vec::new()))
            .into_inner()
            .expect("tar finish")
    }
}

/// gzip at `level` (0–9).
pub(crate) fn gzip(data: &[u8], level: u32) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level));
    e.write_all(data).expect("gzip");
    e.finish().expect("gzip finish")
}

/// Debian's `busybox-static` binary: a missing package is a clear failure naming it.
pub(crate) fn busybox() -> Vec<u8> {
    std::fs::read("/bin/busybox").unwrap_or_else(|e| {
        panic!(
            "/bin/busybox: {e}: the OCI pull tests need Debian's `busybox-static` package \
             (apt-get install busybox-static)"
        )
    })
}

/// A layer holding busybox and its applet links (`bin/sh` → `/bin/busybox`, ...).
pub(crate) fn busybox_layer(extra: impl FnOnce(&mut Tar)) -> Vec<u8> {
    let mut t = Tar::new();
    for d in ["bin", "sbin", "usr", "usr/bin", "usr/sbin", "etc", "tmp"] {
        t.dir(d, if d == "tmp" { 0o1777 } else { 0o755 });
    }
    t.file_with("bin/busybox", &busybox(), 0o755, 0, 0, 1_600_000_000);
    let list = Command::new("/bin/busybox")
        .arg("--list-full")
        .output()
        .expect("busybox --list-full");
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let applet = applet.trim();
        if applet.is_empty() || applet == "bin/busybox" {
            continue;
        }
        t.symlink(applet, "/bin/busybox");
    }
    extra(&mut t);
    t.finish()
}
