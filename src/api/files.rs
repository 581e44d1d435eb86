use std::fmt;
use std::time::Duration;

use reqwest::Method;

use super::flavor::FileReader;
use super::sandbox::Tokens;
use super::{dual, rt, Sandbox};
use crate::error::{Error, Result};

/// Default cap on a download: 2 GiB.
pub const DEFAULT_MAX_BYTES: u64 = 2 * 1024 * 1024 * 1024;

/// Reads and writes files inside a sandbox. Made by [`Sandbox::files`].
///
/// Paths must be absolute and must not contain a `..` segment; bad paths fail with
/// [`Error::InvalidInput`] before any request. Downloads are capped at
/// [`max_bytes`](Self::max_bytes) (default 2 GiB), enforced while reading: a larger file fails
/// with [`Error::TooLarge`]. The timeout ([`timeout`](Self::timeout), default 30 s) bounds each
/// wait for data, not the whole transfer. A missing file is [`Error::NotFound`] with code
/// `not_found`.
///
/// What dropping a transfer's future does (async): the connection is closed; a download stops,
/// and an upload leaves the file as far as it got (or untouched, if the body never arrived).
#[derive(Clone)]
pub struct Files {
    pub(crate) sandbox: Sandbox,
    pub(crate) max_bytes: u64,
    pub(crate) timeout: Duration,
}

impl fmt::Debug for Files {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Files")
            .field("sandbox", &self.sandbox.id())
            .field("max_bytes", &self.max_bytes)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Checks a sandbox path: absolute, no `..` segment, no NUL.
pub(crate) fn check_path(path: &str) -> Result<()> {
    if !path.starts_with('/') {
        return Err(Error::invalid(format!(
            "path {path:?} must be absolute (start with '/')"
        )));
    }
    if path.split('/').any(|s| s == "..") {
        return Err(Error::invalid(format!(
            "path {path:?} must not contain a '..' segment"
        )));
    }
    if path.contains('\0') {
        return Err(Error::invalid("path must not contain a NUL byte"));
    }
    Ok(())
}

/// Fails with [`Error::TooLarge`] once `n` bytes exceed the download cap.
pub(crate) fn check_cap(n: u64, max_bytes: u64) -> Result<()> {
    if n > max_bytes {
        return Err(Error::too_large(
            "the download (see Files::max_bytes)",
            max_bytes,
        ));
    }
    Ok(())
}

fn files_path(path: &str, zip: bool) -> String {
    let mut q = format!("/files?path={}", crate::wire::seg(path));
    if zip {
        q.push_str("&format=zip");
    }
    q
}

#[dual]
impl Files {
    pub(crate) fn new(sandbox: Sandbox) -> Files {
        Files {
            sandbox,
            max_bytes: DEFAULT_MAX_BYTES,
            timeout: Duration::from_secs(30),
        }
    }

    /// The same handle with another download cap.
    #[must_use]
    pub fn max_bytes(mut self, max_bytes: u64) -> Files {
        self.max_bytes = max_bytes;
        self
    }

    /// The same handle with another timeout (per wait for data).
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Files {
        self.timeout = timeout;
        self
    }

    /// Writes `content` (text or bytes) to `path`, creating parent directories and replacing
    /// an existing file.
    #[tracing::instrument(name = "files.write", level = "debug", skip_all, fields(sandbox_id = self.sandbox.id()))]
    pub async fn write(&self, path: &str, content: impl AsRef<[u8]>) -> Result<()> {
        self.sandbox.ensure_live()?;
        check_path(path)?;
        let body = bytes::Bytes::copy_from_slice(content.as_ref());
        let target = files_path(path, false);
        let build = |t: &Tokens| {
            self.sandbox
                .dp_req(t, Method::POST, &target, self.timeout)
                .bytes(body.clone())
        };
        self.sandbox.dp_send(&build).await.map(drop)
    }

    /// Reads the file at `path` into memory (see [`open_read`](Self::open_read) for a streamed
    /// reader).
    #[tracing::instrument(name = "files.read", level = "debug", skip_all, fields(sandbox_id = self.sandbox.id()))]
    pub async fn read(&self, path: &str) -> Result<Vec<u8>> {
        let mut resp = self.open_download(path, false).await?;
        let mut out = Vec::new();
        while let Some(chunk) = resp.next_chunk().await? {
            self.check_cap(out.len() as u64 + chunk.len() as u64)?;
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    /// Reads the file at `path` as UTF-8 text; content that is not UTF-8 fails with
    /// [`Error::NotUtf8`].
    pub async fn read_text(&self, path: &str) -> Result<String> {
        let bytes = self.read(path).await?;
        String::from_utf8(bytes).map_err(|e| Error::NotUtf8 {
            path: path.to_owned(),
            valid_up_to: e.utf8_error().valid_up_to(),
        })
    }

    /// Opens the file at `path` for reading as it downloads: a `std::io::Read` (blocking) or a
    /// `tokio::io::AsyncRead` (async), so a download can be piped into a decoder with
    /// backpressure; memory use does not depend on the file's size. Errors before the first
    /// byte (not found, ...) are returned here; later ones come from `read` as
    /// `std::io::Error`s wrapping the crate's [`Error`] (`Error::TooLarge` past
    /// [`max_bytes`](Self::max_bytes)). Dropping the reader closes the connection.
    ///
    /// ```no_run
    /// # #[cfg(feature = "blocking")]
    /// # fn demo(sb: &superserve::Sandbox) -> superserve::Result<()> {
    /// use std::io::{BufRead, BufReader};
    /// let log = BufReader::new(sb.files().open_read("/var/log/app.log")?);
    /// let errors = log.lines().filter(|l| l.as_ref().is_ok_and(|l| l.contains("ERROR"))).count();
    /// # let _ = errors; Ok(()) }
    /// ```
    ///
    /// ```no_run
    /// # #[cfg(feature = "async")]
    /// # async fn demo(sb: &superserve::AsyncSandbox) -> superserve::Result<()> {
    /// use tokio::io::AsyncReadExt;
    /// let mut reader = sb.files().open_read("/data/big.bin").await?;
    /// let mut first = [0u8; 16];
    /// reader.read_exact(&mut first).await.unwrap();
    /// # Ok(()) }
    /// ```
    #[tracing::instrument(name = "files.open_read", level = "debug", skip_all, fields(sandbox_id = self.sandbox.id()))]
    pub async fn open_read(&self, path: &str) -> Result<FileReader> {
        let resp = self.open_download(path, false).await?;
        Ok(FileReader::new(resp, self.max_bytes))
    }

    /// Downloads the directory at `path` as a ZIP archive (entries prefixed with the
    /// directory's name). A regular file comes back as its own bytes.
    #[tracing::instrument(name = "files.download_dir", level = "debug", skip_all, fields(sandbox_id = self.sandbox.id()))]
    pub async fn download_dir(&self, path: &str) -> Result<Vec<u8>> {
        let mut resp = self.open_download(path, true).await?;
        let mut out = Vec::new();
        while let Some(chunk) = resp.next_chunk().await? {
            self.check_cap(out.len() as u64 + chunk.len() as u64)?;
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    pub(crate) fn check_cap(&self, n: u64) -> Result<()> {
        check_cap(n, self.max_bytes)
    }

    /// Opens a download (with transport retries and the re-activate-once rule).
    pub(crate) async fn open_download(&self, path: &str, zip: bool) -> Result<rt::StreamResponse> {
        self.sandbox.ensure_live()?;
        check_path(path)?;
        let target = files_path(path, zip);
        let build = |t: &Tokens| self.sandbox.dp_req(t, Method::GET, &target, self.timeout);
        let resp = self.sandbox.dp_stream(&build, self.timeout).await?;
        if let Some(len) = resp
            .headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
        {
            self.check_cap(len)?;
        }
        Ok(resp)
    }

    /// Streams an upload to `path`.
    pub(crate) async fn upload(&self, path: &str, upload: rt::Upload) -> Result<()> {
        self.sandbox.ensure_live()?;
        check_path(path)?;
        let target = files_path(path, false);
        let build = |t: &Tokens| self.sandbox.dp_req(t, Method::POST, &target, self.timeout);
        let mut resp = self.sandbox.dp_upload(&build, upload, self.timeout).await?;
        // The answer (`{"path", "size"}`) is not needed; read it so the connection is reusable.
        while resp.next_chunk().await?.is_some() {}
        Ok(())
    }
}
