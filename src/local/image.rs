//! The `superserve/base` image: a skeleton root directory under the data dir (top-level dirs,
//! a minimal `/etc`), stacked with the host's `/usr` (read-only lower layer) in each sandbox.
//! Nothing private of the host goes in: no home directories, no `/root` contents, no
//! `/etc/shadow`, no keys.

use std::io;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use super::error::LocalError;

/// The prepared base image.
#[derive(Clone, Debug)]
pub(crate) struct BaseImage {
    /// The skeleton root (lower layer of every sandbox's root overlay).
    pub dir: PathBuf,
    /// Top-level host directories that are real directories rather than symlinks into `/usr`
    /// (hosts without merged `/usr`): bind-mounted read-only into each sandbox.
    pub host_dirs: Vec<String>,
}

/// Entries of the host's `/etc` copied into the image (all public, none host-specific secrets).
const ETC_COPY: &[&str] = &[
    "alternatives",
    "bash.bashrc",
    "ca-certificates.conf",
    "debian_version",
    "gai.conf",
    "host.conf",
    "inputrc",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "localtime",
    "mime.types",
    "os-release",
    "profile",
    "profile.d",
    "protocols",
    "python3",
    "python3.11",
    "python3.12",
    "python3.13",
    "services",
    "shells",
    "ssl/certs",
    "ssl/openssl.cnf",
    "timezone",
];

const TOP_LEVEL_LINKS: &[&str] = &["bin", "sbin", "lib", "lib32", "lib64", "libx32"];

fn err(what: &str, path: &Path, e: io::Error) -> LocalError {
    LocalError::BaseImage(format!("{what} {}: {e}", path.display()))
}

fn ensure_dir(path: &Path, mode: u32) -> Result<(), LocalError> {
    std::fs::create_dir_all(path).map_err(|e| err("cannot create", path, e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| err("cannot chmod", path, e))
}

fn ensure_file(path: &Path, content: &[u8], mode: u32) -> Result<(), LocalError> {
    if std::fs::read(path).ok().as_deref() != Some(content) {
        std::fs::write(path, content).map_err(|e| err("cannot write", path, e))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| err("cannot chmod", path, e))
}

fn ensure_symlink(target: &Path, path: &Path) -> Result<(), LocalError> {
    if std::fs::read_link(path).ok().as_deref() == Some(target) {
        return Ok(());
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        let res = if meta.is_dir() {
            std::fs::remove_dir_all(path)
        } else {
            std::fs::remove_file(path)
        };
        res.map_err(|e| err("cannot replace", path, e))?;
    }
    symlink(target, path).map_err(|e| err("cannot create symlink", path, e))
}

/// Copies `src` to `dst`: symlinks as symlinks, regular files by content, directories
/// recursively; anything else is skipped.
fn copy_entry(src: &Path, dst: &Path) -> Result<(), LocalError> {
    let meta = match std::fs::symlink_metadata(src) {
        Ok(m) => m,
        Err(_) => return Ok(()),
    };
    let ft = meta.file_type();
    if ft.is_symlink() {
        let target = std::fs::read_link(src).map_err(|e| err("cannot read link", src, e))?;
        ensure_symlink(&target, dst)
    } else if ft.is_file() {
        let content = std::fs::read(src).map_err(|e| err("cannot read", src, e))?;
        ensure_file(dst, &content, meta.permissions().mode() & 0o755)
    } else if ft.is_dir() {
        ensure_dir(dst, 0o755)?;
        let entries = std::fs::read_dir(src).map_err(|e| err("cannot list", src, e))?;
        for entry in entries.flatten() {
            copy_entry(&entry.path(), &dst.join(entry.file_name()))?;
        }
        Ok(())
    } else {
        Ok(())
    }
}

/// Builds (or refreshes, idempotently) the base image under `data_dir/images/base`.
pub(crate) fn prepare(data_dir: &Path) -> Result<BaseImage, LocalError> {
    let shell = Path::new("/usr/bin/sh");
    if !shell.exists() && !Path::new("/bin/sh").exists() {
        return Err(LocalError::BaseImage(
            "the host has no /bin/sh to offer sandboxes".into(),
        ));
    }
    if !Path::new("/usr").is_dir() {
        return Err(LocalError::BaseImage("the host has no /usr".into()));
    }
    let dir = data_dir.join("images").join("base");
    ensure_dir(&dir, 0o755)?;
    for (name, mode) in [
        ("dev", 0o755),
        ("etc", 0o755),
        ("home", 0o755),
        ("media", 0o755),
        ("mnt", 0o755),
        ("opt", 0o755),
        ("proc", 0o555),
        ("root", 0o700),
        ("run", 0o755),
        ("run/lock", 0o1777),
        ("srv", 0o755),
        ("sys", 0o555),
        ("tmp", 0o1777),
        ("usr", 0o755),
        ("var", 0o755),
        ("var/cache", 0o755),
        ("var/lib", 0o755),
        ("var/log", 0o755),
        ("var/opt", 0o755),
        ("var/spool", 0o755),
        ("var/tmp", 0o1777),
    ] {
        ensure_dir(&dir.join(name), mode)?;
    }
    ensure_symlink(Path::new("../run"), &dir.join("var/run"))?;
    ensure_symlink(Path::new("../run/lock"), &dir.join("var/lock"))?;

    let mut host_dirs = Vec::new();
    for name in TOP_LEVEL_LINKS {
        let host = Path::new("/").join(name);
        match std::fs::symlink_metadata(&host) {
            Ok(m) if m.file_type().is_symlink() => {
                let target =
                    std::fs::read_link(&host).map_err(|e| err("cannot read link", &host, e))?;
                ensure_symlink(&target, &dir.join(name))?;
            }
            Ok(m) if m.is_dir() => {
                ensure_dir(&dir.join(name), 0o755)?;
                host_dirs.push((*name).to_owned());
            }
            _ => {}
        }
    }

    let etc = dir.join("etc");
    let bash = Path::new("/usr/bin/bash").exists() || Path::new("/bin/bash").exists();
    let login_shell = if bash { "/bin/bash" } else { "/bin/sh" };
    ensure_file(
        &etc.join("passwd"),
        format!(
            "root:x:0:0:root:/root:{login_shell}\n\
             nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
        )
        .as_bytes(),
        0o644,
    )?;
    ensure_file(
        &etc.join("group"),
        b"root:x:0:\ntty:x:5:\nstaff:x:50:\nusers:x:100:\nnogroup:x:65534:\n",
        0o644,
    )?;
    ensure_file(
        &etc.join("hosts"),
        b"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
        0o644,
    )?;
    ensure_file(
        &etc.join("nsswitch.conf"),
        b"passwd: files\ngroup: files\nshadow: files\nhosts: files dns\nnetworks: files\n\
          protocols: files\nservices: files\nethers: files\nrpc: files\n",
        0o644,
    )?;
    // Each sandbox's DNS is the backend's responder on the sandbox's own loopback.
    ensure_file(
        &etc.join("resolv.conf"),
        b"nameserver 127.0.0.1\noptions timeout:2 attempts:2\n",
        0o644,
    )?;
    ensure_symlink(Path::new("../proc/self/mounts"), &etc.join("mtab"))?;
    ensure_dir(&etc.join("ssl"), 0o755)?;
    for name in ETC_COPY {
        copy_entry(&Path::new("/etc").join(name), &etc.join(name))?;
    }
    prepare_runtime(data_dir)?;
    Ok(BaseImage { dir, host_dirs })
}

/// The runtime layer: the top read-only layer of sandboxes whose root is an image of their
/// own (an OCI image) rather than `superserve/base`. It holds what the backend must provide
/// whatever the image: the mount points the agent uses, the sandbox's DNS resolver and
/// hosts file, and the egress proxy's CA (`/etc/ssl/certs/superserve-local-ca.pem`).
pub(crate) fn runtime_layer(data_dir: &Path) -> PathBuf {
    data_dir.join("images").join("runtime")
}

fn prepare_runtime(data_dir: &Path) -> Result<(), LocalError> {
    let dir = runtime_layer(data_dir);
    for (name, mode) in [
        ("", 0o755),
        ("dev", 0o755),
        ("etc", 0o755),
        ("etc/ssl", 0o755),
        ("etc/ssl/certs", 0o755),
        ("proc", 0o555),
        ("sys", 0o555),
        ("tmp", 0o1777),
    ] {
        ensure_dir(&dir.join(name), mode)?;
    }
    let base_etc = data_dir.join("images").join("base").join("etc");
    for name in ["resolv.conf", "hosts"] {
        let content =
            std::fs::read(base_etc.join(name)).map_err(|e| err("cannot read", &base_etc, e))?;
        ensure_file(&dir.join("etc").join(name), &content, 0o644)?;
    }
    Ok(())
}

/// Name of the backend's interception CA in the image's `/etc/ssl/certs`.
const CA_FILE: &str = "superserve-local-ca.pem";

/// Installs the egress proxy's CA in the image's trust store: as its own file, and appended to
/// the bundle (`ca-certificates.crt`, the host's roots plus this CA) that curl, OpenSSL and
/// most runtimes read. Rewritten at every start (the CA changes with each backend process).
pub(crate) fn install_ca(image: &BaseImage, ca_pem: &str) -> Result<(), LocalError> {
    if let Some(data_dir) = image.dir.parent().and_then(Path::parent) {
        let runtime = runtime_layer(data_dir).join("etc/ssl/certs");
        ensure_file(&runtime.join(CA_FILE), ca_pem.as_bytes(), 0o644)?;
    }
    let certs = image.dir.join("etc/ssl/certs");
    ensure_dir(&certs, 0o755)?;
    ensure_file(&certs.join(CA_FILE), ca_pem.as_bytes(), 0o644)?;
    let mut bundle = std::fs::read("/etc/ssl/certs/ca-certificates.crt").unwrap_or_default();
    if !bundle.is_empty() && !bundle.ends_with(b"\n") {
        bundle.push(b'\n');
    }
    bundle.extend_from_slice(ca_pem.as_bytes());
    let path = certs.join("ca-certificates.crt");
    // a copied symlink would point the write at the host's file: replace it
    if std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
        std::fs::remove_file(&path).map_err(|e| err("cannot replace", &path, e))?;
    }
    ensure_file(&path, &bundle, 0o644)
}
