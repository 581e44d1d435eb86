//! Per-sandbox disks: each sandbox's writable layer lives on an ext4 image of its own
//! (`disk_mib` MiB, sparse, in the layer store's pool so that a snapshot can clone it),
//! mounted for that sandbox only. A full disk is `ENOSPC` for every writer (the sandbox, and
//! the backend's `/files` uploads into it), and never touches the host or another sandbox.
//!
//! Why images: this kernel has no project quotas (`CONFIG_XFS_QUOTA` and `CONFIG_QFMT_V2`
//! are off), and btrfs qgroups fail with `EDQUOT`, not `ENOSPC`. A fresh image is a sparse
//! copy of a per-size template made once with `mkfs.ext4` (about 2 MiB of metadata to copy),
//! without a journal (mounting one costs several milliseconds on the create path).
//!
//! The backend attaches and mounts the images itself, as *detached* mounts (nothing in any
//! mount table; the mount, and with it the loop device, goes when its last descriptor or user
//! does, a crash included), and hands the mounts to the sandbox's agent. Attaching a loop
//! device waits for the kernel (several milliseconds, more while other namespaces are torn
//! down), so a few fresh disks of the default size are kept attached and mounted ahead of
//! time ("spares"): a new sandbox takes one and another is made in the background.
//!
//! A deleted sandbox's disk is shut down (`EXT4_IOC_SHUTDOWN`, nothing flushed) before its
//! processes are killed: its unmount, when the last of them exits, then writes nothing back
//! and flushes nothing to the image that is about to be removed.

use std::collections::HashMap;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use super::error::LocalError;
use super::fault::lock;
use super::layers::pool::clone_file;
use super::spares::Spares;
use super::sys::pool as sys;
use super::sys::proto::WRITABLE_DIRS;

/// Fresh disks of the default size kept mounted ahead of time.
const SPARES: usize = 2;
/// Name prefix of a spare disk's image (renamed to a sandbox's once taken; one left by a
/// backend that stopped is removed at start like any image without a sandbox).
const SPARE_PREFIX: &str = "spare-";

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
    /// The size of the spare disks (the default `disk_mib`).
    spare_mib: u32,
    spares: Spares<Spare>,
}

/// A fresh disk, attached and mounted, that no sandbox has taken yet (its image is removed
/// if none does).
struct Spare {
    image: PathBuf,
    mount: Option<OwnedFd>,
}

impl Drop for Spare {
    fn drop(&mut self) {
        if self.mount.take().is_some() {
            let _ = std::fs::remove_file(&self.image);
        }
    }
}

impl Disks {
    /// Checks for `mkfs.ext4` and loop devices; spares are disks of `spare_mib` MiB.
    pub(crate) fn new(dir: PathBuf, spare_mib: u32) -> Result<Arc<Disks>, LocalError> {
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
        let next = AtomicU64::new(0);
        Ok(Arc::new_cyclic(|me: &Weak<Disks>| {
            let me = me.clone();
            let make = move || {
                let disks = me
                    .upgrade()
                    .ok_or_else(|| io::Error::other("the backend is stopping"))?;
                disks.make_spare(next.fetch_add(1, Ordering::Relaxed))
            };
            Disks {
                dir,
                mkfs,
                making: Mutex::new(HashMap::new()),
                spare_mib,
                spares: Spares::new("superserve-disks", SPARES, make),
            }
        }))
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

    /// The sandbox's disk at `image`, mounted (detached, `nodev`): the existing one, or a
    /// fresh, empty disk of `mib` MiB (a spare when one is ready). Blocking.
    pub(crate) fn mount(&self, image: &Path, mib: u32) -> io::Result<OwnedFd> {
        if image.exists() {
            wait_until_released(image)?;
            return mount_image(image, false);
        }
        if mib == self.spare_mib {
            if let Some(mut spare) = self.spares.take() {
                // the loop device holds the file, whatever its name
                std::fs::rename(&spare.image, image)?;
                if let Some(mount) = spare.mount.take() {
                    return Ok(mount);
                }
            }
        }
        self.fresh(image, mib)?;
        mount_image(image, false)
    }

    /// Makes a fresh, empty disk of `mib` MiB at `image`.
    fn fresh(&self, image: &Path, mib: u32) -> io::Result<()> {
        let template = self.template(mib)?;
        let tmp = image.with_extension("tmp");
        let _ = std::fs::remove_file(&tmp);
        clone_file(&template, &tmp)?;
        // no fsync: a fresh disk holds nothing yet, and one lost to a power cut is remade
        // empty from the template (the rename below is what makes it count)
        std::fs::rename(&tmp, image)
    }

    fn make_spare(&self, n: u64) -> io::Result<Spare> {
        let image = self
            .dir
            .join(format!("{SPARE_PREFIX}{}-{n}.ext4", std::process::id()));
        self.fresh(&image, self.spare_mib)?;
        let mut spare = Spare { image, mount: None };
        spare.mount = Some(mount_image(&spare.image, false)?);
        Ok(spare)
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
        // the directories every sandbox writes to (the overlays' upper and work directories,
        // owned by host root until a sandbox's agent takes them) come with the template:
        // making them on each fresh disk costs the agent a block allocation, and a read of
        // the group's bitmap through the loop device, on the create path
        let skel = self.dir.join(format!("template-{mib}m.skel"));
        let _ = std::fs::remove_dir_all(&skel);
        for d in std::iter::once("").chain(WRITABLE_DIRS) {
            let dir = skel.join(d);
            std::fs::create_dir_all(&dir)?;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
        }
        let out = Command::new(&self.mkfs)
            .args(["-F", "-q", "-m", "0", "-O", "^has_journal"])
            .args(["-E", "lazy_itable_init=1,nodiscard", "-b", "4096"])
            .arg("-d")
            .arg(&skel)
            .arg(&tmp)
            .arg(format!("{mib}M"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()?;
        let _ = std::fs::remove_dir_all(&skel);
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

/// How long a restarting sandbox waits for its disk's previous mount to go.
const RELEASE_WAIT: Duration = Duration::from_secs(10);

/// Waits until no loop device holds `image`: a sandbox started again (its agent died, or a
/// resume) must not mount its disk while the mount of its previous run still lives (the
/// backend's descriptors of it are closed in the background, and an open file can hold it a
/// while longer). Two live ext4 mounts of one image would each write their own view of it.
fn wait_until_released(image: &Path) -> io::Result<()> {
    let deadline = Instant::now() + RELEASE_WAIT;
    while sys::loop_attached(image)? {
        if Instant::now() > deadline {
            return Err(io::Error::new(
                io::ErrorKind::ResourceBusy,
                "the sandbox's disk is still in use by its previous run",
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}

/// Attaches an ext4 image to a loop device and mounts it detached (`nodev`; read-only and
/// without journal recovery when `ro`). The loop device goes with the mount.
pub(crate) fn mount_image(image: &Path, ro: bool) -> io::Result<OwnedFd> {
    // the device's descriptor stays open until the mount holds the device
    let (dev, _held) = sys::attach_loop(image, ro)?;
    // without `noinit_itable` the kernel would zero the inode tables in the background,
    // filling the sparse image
    let rw_flags: &[&std::ffi::CStr] = &[c"noinit_itable"];
    // a captured layer is an image of a mounted file system, flushed (`syncfs`: every block
    // at its home location) but still marked as needing journal recovery, which a read-only
    // device cannot do: it is mounted without replaying the journal
    let ro_flags: &[&std::ffi::CStr] = &[c"noinit_itable", c"ro", c"norecovery"];
    let spec = sys::MountSpec {
        options: &[],
        flags: if ro { ro_flags } else { rw_flags },
        attrs: if ro {
            sys::MOUNT_ATTR_NODEV | sys::MOUNT_ATTR_RDONLY
        } else {
            sys::MOUNT_ATTR_NODEV
        },
    };
    sys::mount_detached(c"ext4", &dev, &spec)
}

#[cfg(test)]
mod tests {
    use std::os::fd::{AsFd, AsRawFd};

    use super::*;

    /// A fresh 16 MiB ext4 image `d.ext4` in `dir`.
    fn small_image(dir: &Path) -> PathBuf {
        let image = dir.join("d.ext4");
        let out = Command::new(find_mkfs().expect("mkfs.ext4 is installed"))
            .args(["-F", "-q", "-O", "^has_journal", "-b", "4096"])
            .arg(&image)
            .arg("16M")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        image
    }

    /// A disk shut down for a delete refuses every later write with `EIO` (so nothing of it is
    /// written back or flushed when it is unmounted), while it took writes before.
    #[test]
    fn a_discarded_disk_takes_no_more_writes() {
        let dir = std::env::temp_dir().join(format!("superserve-disk-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let image = small_image(&dir);
        let mount = mount_image(&image, false).expect("mount the image (needs root)");
        let at = |name: &str| format!("/proc/self/fd/{}/{name}", mount.as_raw_fd());
        std::fs::write(at("before"), b"kept until the delete").unwrap();

        sys::shut_down_ext4(mount.as_fd()).unwrap();

        let err = std::fs::write(at("after"), b"x").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
        let err = std::fs::read(at("before")).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
        drop(mount);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A mounted image is seen as attached (by device and inode, not by name), and released
    /// once its mount is gone; a copy of it under the same name elsewhere is not attached.
    #[test]
    fn an_image_is_attached_while_mounted() {
        let dir = std::env::temp_dir().join(format!("superserve-disk-att-{}", std::process::id()));
        let other = dir.join("other");
        std::fs::create_dir_all(&other).unwrap();
        let image = small_image(&dir);
        std::fs::copy(&image, other.join("d.ext4")).unwrap();
        assert!(!sys::loop_attached(&image).unwrap());

        let mount = mount_image(&image, false).expect("mount the image (needs root)");
        assert!(sys::loop_attached(&image).unwrap());
        assert!(!sys::loop_attached(&other.join("d.ext4")).unwrap());

        drop(mount);
        wait_until_released(&image).expect("released once unmounted");
        assert!(!sys::loop_attached(&image).unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
