//! The calls the layer unpacker needs that the standard library does not offer (`mknod`,
//! `lsetxattr`, `utimensat` without following symlinks), each behind a safe function. This is
//! the only place of the image puller with `unsafe`.

#![allow(unsafe_code)]

use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use std::ffi::CString;

fn c_path(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn cvt(r: libc::c_int) -> io::Result<()> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// An overlayfs whiteout at `path`: a character device 0/0 (mode 0 permissions bits).
pub(crate) fn mknod_whiteout(path: &Path) -> io::Result<()> {
    let p = c_path(path)?;
    // SAFETY: a valid C string; mknod does not follow a symlink in the last component (it fails
    // with EEXIST if anything is there).
    cvt(unsafe { libc::mknod(p.as_ptr(), libc::S_IFCHR, 0) })
}

/// A FIFO at `path` with permission bits `mode`.
pub(crate) fn mkfifo(path: &Path, mode: u32) -> io::Result<()> {
    let p = c_path(path)?;
    // SAFETY: a valid C string; as above, the last component is never followed.
    cvt(unsafe { libc::mknod(p.as_ptr(), libc::S_IFIFO | (mode & 0o7777), 0) })
}

/// `lsetxattr(path, name, value, 0)`: on the entry itself, never through a symlink.
pub(crate) fn lsetxattr(path: &Path, name: &[u8], value: &[u8]) -> io::Result<()> {
    let p = c_path(path)?;
    let n = CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: valid C strings and a buffer of the length passed, all alive for the call.
    cvt(unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    })
}

/// `lgetxattr(path, name)`: the value, or `None` when the entry has no such attribute.
#[cfg(test)]
pub(crate) fn lgetxattr(path: &Path, name: &str) -> io::Result<Option<Vec<u8>>> {
    let p = c_path(path)?;
    let n = CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let mut buf = vec![0u8; 4096];
    // SAFETY: valid C strings and a writable buffer of the length passed.
    let r = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 {
        let e = io::Error::last_os_error();
        return if e.raw_os_error() == Some(libc::ENODATA) {
            Ok(None)
        } else {
            Err(e)
        };
    }
    buf.truncate(r as usize);
    Ok(Some(buf))
}

/// Sets the access and modification times of `path` itself (a symlink's own times, not its
/// target's) to `secs` seconds after the epoch.
pub(crate) fn set_times_nofollow(path: &Path, secs: i64) -> io::Result<()> {
    let p = c_path(path)?;
    let t = libc::timespec {
        tv_sec: secs,
        tv_nsec: 0,
    };
    let times = [t, t];
    // SAFETY: a valid C string and an array of two timespecs, as utimensat expects.
    cvt(unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            p.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
}
