//! Per-sandbox disks: each sandbox's writable layer lives on an ext4 image of its own
//! (`disk_mib` MiB, sparse, in the layer store's pool so that a snapshot can clone it), which
//! the sandbox's agent attaches to a loop device and mounts inside the sandbox only. A full disk is `ENOSPC` for every writer (the sandbox, and the
//! backend's `/files` uploads into it), and never touches the host or another sandbox.
//!
//! Why images: this kernel has no project quotas (`CONFIG_XFS_QUOTA` and `CONFIG_QFMT_V2`
//! are off), and btrfs qgroups fail with `EDQUOT`, not `ENOSPC`. A fresh image is a sparse
//! copy of a per-size template made once with `mkfs.ext4` (about 2 MiB of metadata to copy),
//! without a journal (mounting one costs several milliseconds on the create path).

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use super::error::LocalError;
use super::fault::lock;
use super::layers::pool::clone_file;

/// Host tool that formats the templates (e2fsprogs).
const MKFS: &str = "mkfs.ext4";

fn find_mkfs() -> Option<PathBuf> {
    ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        .iter()
        .map(|d| Path::new(d).join(MKFS))
        .find(|p| p.is_file())
}

/// The disk images of one backend.
#[derive(Debug)]
pub(crate) struct Disks {
    /// Where the images and their templates live (`<pool>/disks`).
    dir: PathBuf,
    mkfs: PathBuf,
    /// One lock per template size, so each is formatted once.
    making: Mutex<HashMap<u32, Arc<Mutex<()>>>>,
}

impl Disks {
    /// Checks for `mkfs.ext4` and loop devices.
    pub(crate) fn new(dir: PathBuf) -> Result<Disks, LocalError> {
        let mkfs = find_mkfs().ok_or_else(|| LocalError::Unsupported {
            what: "per-sandbox disks",
            detail: format!("{MKFS} not found (install e2fsprogs)"),
        })?;
        if !Path::new("/dev/loop-control").exists() {
            return Err(LocalError::Unsupported {
                what: "per-sandbox disks",
                detail: "/dev/loop-control does not exist (the kernel needs loop devices)".into(),
            });
        }
        Ok(Disks {
            dir,
            mkfs,
            making: Mutex::new(HashMap::new()),
        })
    }

    /// Where sandbox `id`'s disk image lives.
    pub(crate) fn image_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.ext4"))
    }

    /// Whether a file of the disks' directory is a sandbox's image (not a template).
    pub(crate) fn sandbox_of(name: &str) -> Option<&str> {
        name.strip_suffix(".ext4")
            .filter(|id| !id.starts_with("template-"))
    }

    /// The directory of the images.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Makes sure the sandbox's image exists at `image` (a fresh, empty disk of `mib` MiB if
    /// not). Blocking.
    pub(crate) fn ensure(&self, image: &Path, mib: u32) -> io::Result<()> {
        if image.exists() {
            return Ok(());
        }
        let template = self.template(mib)?;
        let tmp = image.with_extension("tmp");
        let _ = std::fs::remove_file(&tmp);
        clone_file(&template, &tmp)?;
        // no fsync: a fresh disk holds nothing yet, and one lost to a power cut is remade
        // empty from the template (the rename below is what makes it count)
        std::fs::rename(&tmp, image)
    }

    fn template(&self, mib: u32) -> io::Result<PathBuf> {
        let path = self.dir.join(format!("template-{mib}m.ext4"));
        let gate = lock(&self.making).entry(mib).or_default().clone();
        let _made_once = lock(&gate);
        if path.exists() {
            return Ok(path);
        }
        let tmp = path.with_extension("tmp");
        let _ = std::fs::remove_file(&tmp);
        let out = Command::new(&self.mkfs)
            .args(["-F", "-q", "-m", "0", "-O", "^has_journal"])
            .args(["-E", "lazy_itable_init=1,nodiscard", "-b", "4096"])
            .arg(&tmp)
            .arg(format!("{mib}M"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "{MKFS} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        std::fs::rename(&tmp, &path)?;
        Ok(path)
    }
}
