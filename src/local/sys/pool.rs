//! The system calls of the layer store's pool: a file system image attached to a loop device
//! and mounted as a *detached* mount (never attached to any path: nothing shows in the host's
//! mount table, and the mount goes away with the backend's last reference to it, a crash
//! included), reflink clones (`FICLONE`), the `NOCOW` attribute, and `syncfs`.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;

use libc::{c_int, c_long, c_ulong};

use super::{cvt, path_cstr};

const LOOP_CTL_GET_FREE: c_ulong = 0x4C82;
const LOOP_CONFIGURE: c_ulong = 0x4C0A;
const LOOP_GET_STATUS64: c_ulong = 0x4C05;
const LO_FLAGS_READ_ONLY: u32 = 1;
const LO_FLAGS_AUTOCLEAR: u32 = 4;
const FSOPEN_CLOEXEC: u32 = 1;
const FSMOUNT_CLOEXEC: u32 = 1;
const FSCONFIG_SET_FLAG: u32 = 0;
const FSCONFIG_SET_STRING: u32 = 1;
const FSCONFIG_CMD_CREATE: u32 = 6;
/// `MOUNT_ATTR_RDONLY`.
pub(crate) const MOUNT_ATTR_RDONLY: u64 = 0x1;
/// `MOUNT_ATTR_NOSUID`.
pub(crate) const MOUNT_ATTR_NOSUID: u64 = 0x2;
/// `MOUNT_ATTR_NODEV`.
pub(crate) const MOUNT_ATTR_NODEV: u64 = 0x4;
/// `MOUNT_ATTR_NOEXEC`.
pub(crate) const MOUNT_ATTR_NOEXEC: u64 = 0x8;
/// `_IOW(0x94, 9, int)`.
const FICLONE: c_ulong = 0x4004_9409;
/// `FS_IOC_GETFLAGS` / `FS_IOC_SETFLAGS` (`_IOR/_IOW('f', 1|2, long)`).
const FS_IOC_GETFLAGS: c_ulong = 0x8008_6601;
const FS_IOC_SETFLAGS: c_ulong = 0x4008_6602;
const FS_NOCOW_FL: c_long = 0x0080_0000;

/// `struct loop_info64`.
#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

/// `struct loop_config`.
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

fn owned(fd: c_long) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = c_int::try_from(fd).map_err(|_| io::Error::other("descriptor out of range"))?;
    // SAFETY: `fd` was just returned by the kernel as a new descriptor, owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn open(path: &Path, flags: c_int) -> io::Result<OwnedFd> {
    let p = path_cstr(path)?;
    // SAFETY: open with a valid C string.
    owned(c_long::from(unsafe {
        libc::open(p.as_ptr(), flags | libc::O_CLOEXEC)
    }))
}

/// Attaches `image` (opened read-write, or read-only when `ro`) to a free loop device that
/// the kernel frees once nothing uses it; returns the device's path and an open descriptor of
/// it (the device is freed when that descriptor closes unless something, a mount, uses it by
/// then).
pub(crate) fn attach_loop(image: &Path, ro: bool) -> io::Result<(std::path::PathBuf, OwnedFd)> {
    let mode = if ro { libc::O_RDONLY } else { libc::O_RDWR };
    let img = open(image, mode)?;
    let ctl = open(Path::new("/dev/loop-control"), libc::O_RDWR)?;
    for _ in 0..64 {
        // SAFETY: ioctl without argument on the loop control device.
        let n = cvt(unsafe { libc::ioctl(ctl.as_raw_fd(), LOOP_CTL_GET_FREE) })?;
        let path = std::path::PathBuf::from(format!("/dev/loop{n}"));
        let dev = open(&path, mode)?;
        // SAFETY: a zeroed loop_config is valid; the fields used are set.
        let mut cfg: LoopConfig = unsafe { std::mem::zeroed() };
        cfg.fd = img.as_raw_fd() as u32;
        cfg.block_size = 4096;
        cfg.info.lo_flags = LO_FLAGS_AUTOCLEAR | if ro { LO_FLAGS_READ_ONLY } else { 0 };
        // SAFETY: LOOP_CONFIGURE reads the config struct, which outlives the call.
        let r = unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_CONFIGURE, &cfg as *const LoopConfig) };
        if r == 0 {
            // the device stays configured until its last user (the mount) lets go
            return Ok((path, dev));
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EBUSY) {
            return Err(e);
        }
    }
    Err(io::Error::from_raw_os_error(libc::EBUSY))
}

/// Whether a loop device is attached to `image` (the very file: same device and inode), that
/// is, whether a mount of it may still be alive.
pub(crate) fn loop_attached(image: &Path) -> io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(image)?;
    let Some(name) = image.file_name() else {
        return Ok(false);
    };
    let name = name.to_string_lossy();
    for entry in std::fs::read_dir("/sys/block")? {
        let dev = entry?.file_name().to_string_lossy().into_owned();
        if !dev.starts_with("loop") {
            continue;
        }
        // the path as the kernel sees it (a file in a detached mount shows relative to that
        // mount): a cheap filter before the exact check
        let backing = std::fs::read_to_string(format!("/sys/block/{dev}/loop/backing_file"))
            .unwrap_or_default();
        if !backing.trim_end().ends_with(&*name) {
            continue;
        }
        let Ok(fd) = open(Path::new(&format!("/dev/{dev}")), libc::O_RDONLY) else {
            continue;
        };
        // SAFETY: a zeroed loop_info64 is valid for the kernel to fill.
        let mut info: LoopInfo64 = unsafe { std::mem::zeroed() };
        // SAFETY: LOOP_GET_STATUS64 writes a loop_info64 into `info`, which outlives the call.
        let r = unsafe {
            libc::ioctl(
                fd.as_raw_fd(),
                LOOP_GET_STATUS64,
                &mut info as *mut LoopInfo64,
            )
        };
        // ENXIO: detached since the directory was read
        if r == 0 && info.lo_device == meta.dev() && info.lo_inode == meta.ino() {
            return Ok(true);
        }
    }
    Ok(false)
}

fn fsconfig(fs: &OwnedFd, cmd: u32, key: Option<&CStr>, value: Option<&CStr>) -> io::Result<()> {
    let ptr = |c: Option<&CStr>| c.map_or(std::ptr::null(), CStr::as_ptr);
    // SAFETY: fsconfig with valid (or null) C strings on a file system context we own.
    let r = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            cmd,
            ptr(key),
            ptr(value),
            0,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// How to mount a file system with [`mount_detached`].
pub(crate) struct MountSpec<'a> {
    /// `key=value` options.
    pub options: &'a [(&'a CStr, &'a CStr)],
    /// Flag options (`ro`, `norecovery`, ...).
    pub flags: &'a [&'a CStr],
    /// `MOUNT_ATTR_*` of the mount.
    pub attrs: u64,
}

/// Mounts the file system of type `fstype` on `device` as a detached mount as `spec` says;
/// returns the mount's root directory descriptor.
pub(crate) fn mount_detached(
    fstype: &CStr,
    device: &Path,
    spec: &MountSpec<'_>,
) -> io::Result<OwnedFd> {
    // SAFETY: fsopen with a valid C string.
    let fs = owned(unsafe { libc::syscall(libc::SYS_fsopen, fstype.as_ptr(), FSOPEN_CLOEXEC) })?;
    let source = path_cstr(device)?;
    fsconfig(&fs, FSCONFIG_SET_STRING, Some(c"source"), Some(&source))?;
    for (k, v) in spec.options {
        fsconfig(&fs, FSCONFIG_SET_STRING, Some(k), Some(v))?;
    }
    for f in spec.flags {
        fsconfig(&fs, FSCONFIG_SET_FLAG, Some(f), None)?;
    }
    fsconfig(&fs, FSCONFIG_CMD_CREATE, None, None)?;
    // SAFETY: fsmount on a created context we own.
    owned(unsafe {
        libc::syscall(
            libc::SYS_fsmount,
            fs.as_raw_fd(),
            FSMOUNT_CLOEXEC,
            spec.attrs,
        )
    })
}

/// `EXT4_IOC_SHUTDOWN` (`_IOR('X', 125, __u32)`).
const EXT4_IOC_SHUTDOWN: c_ulong = 0x8004_587D;
/// Shut down without flushing anything (`EXT4_GOING_FLAGS_NOLOGFLUSH`).
const EXT4_GOING_FLAGS_NOLOGFLUSH: u32 = 0x2;

/// Shuts down the ext4 file system mounted at `mount` (a mount's root directory descriptor)
/// without writing anything back: every later access fails with `EIO`, and its unmount
/// neither writes dirty data nor flushes the device. For a disk about to be deleted.
pub(crate) fn shut_down_ext4(mount: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: openat of "." relative to a borrowed directory descriptor; the result is owned.
    let dir = owned(unsafe {
        libc::openat(
            mount.as_raw_fd(),
            c".".as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        ) as c_long
    })?;
    let flags: u32 = EXT4_GOING_FLAGS_NOLOGFLUSH;
    // SAFETY: EXT4_IOC_SHUTDOWN reads a u32 from `flags`.
    cvt(unsafe { libc::ioctl(dir.as_raw_fd(), EXT4_IOC_SHUTDOWN, &flags as *const u32) }).map(drop)
}

/// Makes `dst` share `src`'s extents (a reflink clone of the whole file): no data is copied.
pub(crate) fn ficlone(src: BorrowedFd<'_>, dst: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: FICLONE takes the source descriptor as its integer argument; both are borrowed.
    cvt(unsafe { libc::ioctl(dst.as_raw_fd(), FICLONE, src.as_raw_fd()) }).map(drop)
}

/// Sets the `NOCOW` attribute on a directory: files created in it later inherit it (written
/// in place; extents shared by a clone are still copied on write).
pub(crate) fn set_nocow(dir: BorrowedFd<'_>) -> io::Result<()> {
    let mut flags: c_long = 0;
    // SAFETY: FS_IOC_GETFLAGS writes a long into `flags`.
    cvt(unsafe { libc::ioctl(dir.as_raw_fd(), FS_IOC_GETFLAGS, &mut flags as *mut c_long) })?;
    flags |= FS_NOCOW_FL;
    // SAFETY: FS_IOC_SETFLAGS reads a long from `flags`.
    cvt(unsafe { libc::ioctl(dir.as_raw_fd(), FS_IOC_SETFLAGS, &flags as *const c_long) }).map(drop)
}

/// `syncfs`: writes back the file system `fd` is on (for an overlay: its upper file system).
pub(crate) fn syncfs(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: syncfs on a borrowed descriptor.
    cvt(unsafe { libc::syncfs(fd.as_raw_fd()) }).map(drop)
}

/// (total, free) bytes of the file system `fd` is on.
pub(crate) fn statvfs(fd: BorrowedFd<'_>) -> io::Result<(u64, u64)> {
    // SAFETY: fstatvfs fills a zeroed struct we own.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above; the descriptor is borrowed for the call.
    cvt(unsafe { libc::fstatvfs(fd.as_raw_fd(), &mut st) })?;
    let frsize = st.f_frsize;
    Ok((
        st.f_blocks.saturating_mul(frsize),
        st.f_bfree.saturating_mul(frsize),
    ))
}
