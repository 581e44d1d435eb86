//! The pool: where the backend keeps the files that must be cloned without copying (the
//! sandboxes' disk images and the captured layers). The data directory's file system may not
//! offer reflinks (ext4 does not), so the pool is a btrfs file system of the backend's own: a
//! sparse image `data_dir/pool.btrfs`, attached to a loop device and mounted with
//! `discard=async` (room freed inside is given back to the host) as a *detached* mount. It is
//! never attached to a path: the host's mount table never shows it, and it goes away with the
//! backend (a crash included) once no sandbox uses a file in it. The backend reaches it
//! through `/proc/self/fd/<mount>`; sandboxes get their images as descriptors.
//!
//! Why btrfs and not XFS (`reflink=1`): `mkfs.xfs` writes its whole log (64-128 MiB) into
//! the image, `mkfs.btrfs` about 5 MiB in a tenth of a second, and a pool is made per data
//! directory. Directories holding images are `NOCOW`: written in place like the ext4 images
//! they hold; only extents shared with a clone are copied on write.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::super::error::LocalError;
use super::super::sys::pool as sys;

/// Host tool that formats the pool (btrfs-progs).
const MKFS: &str = "mkfs.btrfs";
/// Smallest pool (btrfs needs some room for its own trees).
const MIN_POOL_BYTES: u64 = 1 << 30;

/// Directory of the sandboxes' disk images.
pub(crate) const DISKS: &str = "disks";
/// Directory of the captured layers.
pub(crate) const LAYERS: &str = "layers";

fn find_tool(name: &str) -> Option<PathBuf> {
    ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// The mounted pool.
#[derive(Debug)]
pub(crate) struct Pool {
    /// The detached mount's root, kept open: every path of the pool goes through it.
    _mnt: OwnedFd,
    /// `/proc/<pid>/fd/<mnt>`: the pool's root as a path of this process.
    root: PathBuf,
}

fn unsupported(detail: String) -> LocalError {
    LocalError::Unsupported {
        what: "the layer store (a btrfs pool for snapshots and templates)",
        detail,
    }
}

impl Pool {
    /// Mounts the data directory's pool, making it first if needed. Needs btrfs in the kernel,
    /// `mkfs.btrfs` (btrfs-progs) and loop devices.
    pub(crate) fn open(data_dir: &Path) -> Result<Pool, LocalError> {
        let fs = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
        if !fs
            .lines()
            .any(|l| l.split_whitespace().last() == Some("btrfs"))
        {
            return Err(unsupported(
                "the kernel does not list `btrfs` in /proc/filesystems (try `modprobe btrfs`)"
                    .into(),
            ));
        }
        let image = data_dir.join("pool.btrfs");
        let dd = |source| LocalError::DataDir {
            path: image.clone(),
            source,
        };
        if !image.exists() {
            make(data_dir, &image)?;
        }
        let image = image.canonicalize().map_err(dd)?;
        let mnt = mount(&image)
            .map_err(|e| unsupported(format!("cannot mount {}: {e}", image.display())))?;
        // by pid, not `self`: the backend's helper programs (mkfs.ext4) use these paths too
        let root = PathBuf::from(format!(
            "/proc/{}/fd/{}",
            std::process::id(),
            mnt.as_raw_fd()
        ));
        let pool = Pool { _mnt: mnt, root };
        for dir in [DISKS, LAYERS] {
            let p = pool.path(dir);
            match std::fs::create_dir(&p) {
                Ok(()) => {
                    let d = std::fs::File::open(&p).map_err(dd)?;
                    sys::set_nocow(d.as_fd()).map_err(dd)?;
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(dd(e)),
            }
        }
        Ok(pool)
    }

    /// A path inside the pool.
    pub(crate) fn path(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.root.join(rel)
    }
}

/// Makes a sparse pool image as large as the data directory's file system.
fn make(data_dir: &Path, image: &Path) -> Result<(), LocalError> {
    let mkfs = find_tool(MKFS)
        .ok_or_else(|| unsupported(format!("{MKFS} not found (install btrfs-progs)")))?;
    let dd = |source| LocalError::DataDir {
        path: image.to_path_buf(),
        source,
    };
    let dir = std::fs::File::open(data_dir).map_err(dd)?;
    let (total, _) = sys::statvfs(dir.as_fd()).map_err(dd)?;
    let tmp = image.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let f = std::fs::File::create(&tmp).map_err(dd)?;
    f.set_len(total.max(MIN_POOL_BYTES)).map_err(dd)?;
    drop(f);
    let out = Command::new(&mkfs)
        .args(["-q", "-f", "-m", "single", "-d", "single"])
        .arg(&tmp)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(dd)?;
    if !out.status.success() {
        let _ = std::fs::remove_file(&tmp);
        return Err(unsupported(format!(
            "{MKFS} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    std::fs::rename(&tmp, image).map_err(dd)
}

/// The loop device already backed by `image`, if any (the pool of a backend that is still
/// going away: mounting that device again shares its file system instead of mounting a
/// second, independent instance of the same image).
fn existing_loop(image: &Path) -> Option<PathBuf> {
    let want = image.as_os_str().as_encoded_bytes();
    for e in std::fs::read_dir("/sys/block").ok()?.flatten() {
        let name = e.file_name();
        let Some(n) = name.to_str().filter(|n| n.starts_with("loop")) else {
            continue;
        };
        let backing = std::fs::read(e.path().join("loop/backing_file")).unwrap_or_default();
        if backing.strip_suffix(b"\n").unwrap_or(&backing) == want {
            return Some(PathBuf::from(format!("/dev/{n}")));
        }
    }
    None
}

fn mount(image: &Path) -> io::Result<OwnedFd> {
    let discard = CString::new("async").map_err(io::Error::other)?;
    let mut last = io::Error::other("no attempt");
    for _ in 0..50 {
        // the device's descriptor stays open until the mount holds the device
        let (dev, _held) = match existing_loop(image) {
            Some(d) => {
                let f = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&d)?;
                (d, OwnedFd::from(f))
            }
            None => sys::attach_loop(image, false)?,
        };
        let spec = sys::MountSpec {
            options: &[(c"discard", &discard)],
            flags: &[],
            attrs: sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV | sys::MOUNT_ATTR_NOEXEC,
        };
        match sys::mount_detached(c"btrfs", &dev, &spec) {
            Ok(fd) => return Ok(fd),
            // the device was freed (or taken) between the look-up and the mount: again
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(last)
}

/// Reflinks `src` to a new file `dst` (in the same pool): shares every extent, copies none.
pub(crate) fn clone_file(src: &Path, dst: &Path) -> io::Result<()> {
    let s = std::fs::File::open(src)?;
    let d = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dst)?;
    if let Err(e) = sys::ficlone(s.as_fd(), d.as_fd()) {
        drop(d);
        let _ = std::fs::remove_file(dst);
        return Err(e);
    }
    Ok(())
}

/// Flushes the file system `path` (a sandbox's root, seen through its agent) is on.
pub(crate) fn sync_fs_of(path: &Path) -> io::Result<()> {
    let f = std::fs::File::open(path)?;
    sys::syncfs(f.as_fd())
}
