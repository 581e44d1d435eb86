//! Blocking-only API: iterators, `std::io` readers and writers, and the kill-on-drop guard.

use std::collections::VecDeque;
use std::fmt;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::api::{check_cap, check_path, BuildLogs, Files, KillOnDrop, Sandbox, SseEvents};
use crate::error::{Error, Result};
use crate::models::{BuildLogEvent, ExecEvent, NetworkEvent};
use crate::options::NetworkLogOptions;
use crate::rt::blocking::{self as rt, EventItem, StdinSender, StreamResponse, Upload};
use crate::rt::transport::session_item;
use crate::wire::exec::{stdin_close_frame, stdin_frame, STDIN_CHUNK};

/// Every event of a sandbox's network log, newest first, fetched page by page as the iterator
/// advances. Made by [`Sandbox::network_log_events`].
///
/// After an error the iterator ends.
#[derive(Debug)]
pub struct NetworkLogEvents {
    sandbox: Sandbox,
    opts: NetworkLogOptions,
    buffer: VecDeque<NetworkEvent>,
    done: bool,
}

impl Iterator for NetworkLogEvents {
    type Item = Result<NetworkEvent>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(e) = self.buffer.pop_front() {
                return Some(Ok(e));
            }
            if self.done {
                return None;
            }
            match self.sandbox.get_network_log(self.opts.clone()) {
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
                Ok(page) => {
                    match page.next_cursor.filter(|_| page.has_more) {
                        Some(cursor) => self.opts.before = Some(cursor),
                        None => self.done = true,
                    }
                    self.buffer.extend(page.events);
                }
            }
        }
    }
}

impl Sandbox {
    /// Walks the whole network log (every page), newest first.
    ///
    /// The options' `limit` sets the page size; `before`, `since` and `verdict` filter as in
    /// [`get_network_log`](Self::get_network_log).
    ///
    /// ```no_run
    /// # fn demo(sb: &superserve::Sandbox) -> superserve::Result<()> {
    /// use superserve::{NetworkLogOptions, NetworkVerdict};
    /// for event in sb.network_log_events(NetworkLogOptions::new().verdict(NetworkVerdict::Blocked)) {
    ///     let event = event?;
    ///     println!("{} {:?} {:?}", event.ts, event.host, event.match_rule);
    /// }
    /// # Ok(()) }
    /// ```
    pub fn network_log_events(&self, opts: NetworkLogOptions) -> NetworkLogEvents {
        NetworkLogEvents {
            sandbox: self.clone(),
            opts,
            buffer: VecDeque::new(),
            done: false,
        }
    }
}

/// A command's output as it arrives: an `Iterator` of [`ExecEvent`]s whose last item is
/// [`ExecEvent::Exit`], or an error when the command could not start or the connection broke
/// (never a silent end). Made by `Commands::run_stream` and `CommandSession::events`.
///
/// Dropping it closes the stream's connection (a `run_stream`'s command is then ended by the
/// server; a session's output flows on to its callbacks and result).
pub struct ExecEvents {
    source: Source,
}

enum Source {
    Sse(Box<SseEvents>),
    Session {
        rx: mpsc::Receiver<EventItem>,
        done: bool,
    },
}

impl fmt::Debug for ExecEvents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExecEvents").finish_non_exhaustive()
    }
}

impl ExecEvents {
    pub(crate) fn from_sse(events: SseEvents) -> ExecEvents {
        ExecEvents {
            source: Source::Sse(Box::new(events)),
        }
    }

    pub(crate) fn from_session(rx: mpsc::Receiver<EventItem>) -> ExecEvents {
        ExecEvents {
            source: Source::Session { rx, done: false },
        }
    }
}

impl Iterator for ExecEvents {
    type Item = Result<ExecEvent>;

    fn next(&mut self) -> Option<Self::Item> {
        match &mut self.source {
            Source::Sse(events) => events.next(),
            Source::Session { rx, done } => {
                if *done {
                    return None;
                }
                match rt::block_on(rx.recv()) {
                    Ok(item) => session_item(item, done),
                    Err(e) => {
                        *done = true;
                        Some(Err(e))
                    }
                }
            }
        }
    }
}

/// A template build's log as an `Iterator` of [`BuildLogEvent`]s, ending after the build's
/// last event. Made by `Template::build_log_events`. Dropping it closes the stream.
pub struct BuildLogEvents {
    logs: BuildLogs,
}

impl fmt::Debug for BuildLogEvents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BuildLogEvents").finish_non_exhaustive()
    }
}

impl BuildLogEvents {
    pub(crate) fn new(logs: BuildLogs) -> BuildLogEvents {
        BuildLogEvents { logs }
    }
}

impl Iterator for BuildLogEvents {
    type Item = Result<BuildLogEvent>;

    fn next(&mut self) -> Option<Self::Item> {
        self.logs.next()
    }
}

/// A session's stdin as a `std::io::Write`. Made by `CommandSession::stdin`.
///
/// Each `write` sends up to 32 KiB as one frame and blocks while the session's send queue is
/// full. Writes after the command finished are accepted and dropped. Dropping the writer does
/// not close stdin: call `CommandSession::close_stdin`.
pub struct SessionStdin {
    tx: StdinSender,
}

impl fmt::Debug for SessionStdin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionStdin")
            .field("finished", &self.tx.is_settled())
            .finish()
    }
}

impl SessionStdin {
    pub(crate) fn new(tx: StdinSender) -> SessionStdin {
        SessionStdin { tx }
    }

    /// Closes stdin (EOF), like `CommandSession::close_stdin`.
    pub fn close(&mut self) -> Result<()> {
        rt::block_on(self.tx.send(rt::text_frame(stdin_close_frame())))?
    }
}

fn io_error(e: Error) -> std::io::Error {
    std::io::Error::other(e)
}

impl Write for SessionStdin {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let n = buf.len().min(STDIN_CHUNK);
        let frame = rt::binary_frame(stdin_frame(&buf[..n]));
        rt::block_on(self.tx.send(frame))
            .and_then(|r| r)
            .map_err(io_error)?;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A file in a sandbox as a `std::io::Read`, read as it downloads. Made by
/// `Files::open_read`. Dropping it closes the connection.
pub struct FileReader {
    resp: Option<StreamResponse>,
    chunk: Bytes,
    read: u64,
    max_bytes: u64,
}

impl fmt::Debug for FileReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileReader")
            .field("read", &self.read)
            .field("max_bytes", &self.max_bytes)
            .finish()
    }
}

impl FileReader {
    pub(crate) fn new(resp: StreamResponse, max_bytes: u64) -> FileReader {
        FileReader {
            resp: Some(resp),
            chunk: Bytes::new(),
            read: 0,
            max_bytes,
        }
    }
}

impl Read for FileReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.chunk.is_empty() {
            let Some(resp) = self.resp.as_mut() else {
                return Ok(0);
            };
            match resp.next_chunk() {
                Ok(Some(c)) => {
                    self.read += c.len() as u64;
                    if let Err(e) = check_cap(self.read, self.max_bytes) {
                        self.resp = None;
                        return Err(io_error(e));
                    }
                    self.chunk = c;
                }
                Ok(None) => self.resp = None,
                Err(e) => {
                    self.resp = None;
                    return Err(io_error(e));
                }
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk[..n]);
        let _ = self.chunk.split_to(n);
        Ok(n)
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Err(e) = self.sandbox.kill() {
            tracing::warn!(sandbox_id = self.sandbox.id(), error = %e, "superserve: kill on drop failed");
        }
    }
}

/// Uploads up to this size are sent from memory (and can be retried after a token refresh).
const IN_MEMORY_UPLOAD: usize = 1024 * 1024;

struct Counting<R> {
    inner: R,
    count: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

impl Files {
    /// Uploads everything `reader` yields to `path`, streaming: memory use does not depend on
    /// the size. Returns the number of bytes sent.
    ///
    /// ```no_run
    /// # fn demo(sb: &superserve::Sandbox) -> superserve::Result<()> {
    /// let file = std::fs::File::open("big.bin").unwrap();
    /// let sent = sb.files().write_from("/data/big.bin", file)?;
    /// # let _ = sent; Ok(()) }
    /// ```
    pub fn write_from<R: Read + Send + 'static>(&self, path: &str, mut reader: R) -> Result<u64> {
        check_path(path)?;
        let mut head = Vec::new();
        (&mut reader)
            .take(IN_MEMORY_UPLOAD as u64 + 1)
            .read_to_end(&mut head)
            .map_err(|e| Error::io("reading the upload failed", e))?;
        if head.len() <= IN_MEMORY_UPLOAD {
            let n = head.len() as u64;
            self.write(path, head)?;
            return Ok(n);
        }
        let count = Arc::new(AtomicU64::new(0));
        let body = Counting {
            inner: std::io::Cursor::new(head).chain(reader),
            count: count.clone(),
        };
        self.upload(path, Upload(Box::new(body)))?;
        Ok(count.load(Ordering::Relaxed))
    }

    /// Downloads `path` into `writer`, streaming; returns the number of bytes written.
    pub fn read_into<W: Write + ?Sized>(&self, path: &str, writer: &mut W) -> Result<u64> {
        let resp = self.open_download(path, false)?;
        self.copy_into(resp, writer)
    }

    /// Downloads the directory at `path` as a ZIP archive into `writer`, streaming; returns
    /// the number of bytes written.
    pub fn download_dir_into<W: Write + ?Sized>(&self, path: &str, writer: &mut W) -> Result<u64> {
        let resp = self.open_download(path, true)?;
        self.copy_into(resp, writer)
    }

    fn copy_into<W: Write + ?Sized>(
        &self,
        mut resp: StreamResponse,
        writer: &mut W,
    ) -> Result<u64> {
        let mut n: u64 = 0;
        while let Some(chunk) = resp.next_chunk()? {
            n += chunk.len() as u64;
            self.check_cap(n)?;
            writer
                .write_all(&chunk)
                .map_err(|e| Error::io("writing the download failed", e))?;
        }
        writer
            .flush()
            .map_err(|e| Error::io("writing the download failed", e))?;
        Ok(n)
    }
}
