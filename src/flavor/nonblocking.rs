//! Async-only API: streams, tokio readers and writers, and the kill-on-drop guard.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use futures_util::stream::{self, BoxStream, Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::mpsc;

use super::api::{check_cap, check_path, BuildLogs, Files, KillOnDrop, Sandbox, SseEvents};
use crate::error::{Error, Result};
use crate::models::{BuildLogEvent, ExecEvent, NetworkEvent};
use crate::options::NetworkLogOptions;
use crate::rt::nonblocking::{self as rt, EventItem, StdinSender, StreamResponse, Upload};
use crate::rt::transport::session_item;
use crate::wire::exec::{stdin_close_frame, stdin_frame, STDIN_CHUNK};

/// Every event of a sandbox's network log, newest first, fetched page by page as the stream is
/// polled. Made by [`Sandbox::network_log_events`]. After an error the stream ends.
pub struct NetworkLogEvents {
    inner: BoxStream<'static, Result<NetworkEvent>>,
}

impl fmt::Debug for NetworkLogEvents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NetworkLogEvents").finish_non_exhaustive()
    }
}

impl Stream for NetworkLogEvents {
    type Item = Result<NetworkEvent>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

struct State {
    sandbox: Sandbox,
    opts: NetworkLogOptions,
    buffer: VecDeque<NetworkEvent>,
    done: bool,
}

impl Sandbox {
    /// Walks the whole network log (every page), newest first, as a [`Stream`].
    ///
    /// The options' `limit` sets the page size; `before`, `since` and `verdict` filter as in
    /// [`get_network_log`](Self::get_network_log).
    ///
    /// ```no_run
    /// # async fn demo(sb: &superserve::AsyncSandbox) -> superserve::Result<()> {
    /// use futures_util::StreamExt;
    /// use superserve::NetworkLogOptions;
    /// let mut events = sb.network_log_events(NetworkLogOptions::new().limit(100));
    /// while let Some(event) = events.next().await {
    ///     println!("{:?}", event?.host);
    /// }
    /// # Ok(()) }
    /// ```
    pub fn network_log_events(&self, opts: NetworkLogOptions) -> NetworkLogEvents {
        let state = State {
            sandbox: self.clone(),
            opts,
            buffer: VecDeque::new(),
            done: false,
        };
        let inner = stream::unfold(state, |mut st| async move {
            loop {
                if let Some(e) = st.buffer.pop_front() {
                    return Some((Ok(e), st));
                }
                if st.done {
                    return None;
                }
                match st.sandbox.get_network_log(st.opts.clone()).await {
                    Err(e) => {
                        st.done = true;
                        return Some((Err(e), st));
                    }
                    Ok(page) => {
                        match page.next_cursor.filter(|_| page.has_more) {
                            Some(cursor) => st.opts.before = Some(cursor),
                            None => st.done = true,
                        }
                        st.buffer.extend(page.events);
                    }
                }
            }
        });
        NetworkLogEvents {
            inner: Box::pin(inner.fuse()),
        }
    }
}

/// A command's output as it arrives: a [`Stream`] of [`ExecEvent`]s whose last item is
/// [`ExecEvent::Exit`], or an error when the command could not start or the connection broke
/// (never a silent end). Made by `Commands::run_stream` and `CommandSession::events`.
///
/// Dropping it closes the stream's connection (a `run_stream`'s command is then ended by the
/// server; a session's output flows on to its callbacks and result).
pub struct ExecEvents {
    source: Source,
}

enum Source {
    Sse(BoxStream<'static, Result<ExecEvent>>),
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
        let inner = stream::unfold(events, |mut events| async move {
            let item = events.next().await?;
            Some((item, events))
        });
        ExecEvents {
            source: Source::Sse(Box::pin(inner.fuse())),
        }
    }

    pub(crate) fn from_session(rx: mpsc::Receiver<EventItem>) -> ExecEvents {
        ExecEvents {
            source: Source::Session { rx, done: false },
        }
    }
}

impl Stream for ExecEvents {
    type Item = Result<ExecEvent>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match &mut self.source {
            Source::Sse(s) => s.as_mut().poll_next(cx),
            Source::Session { rx, done } => {
                if *done {
                    return Poll::Ready(None);
                }
                let item = ready!(rx.poll_recv(cx));
                Poll::Ready(session_item(item, done))
            }
        }
    }
}

/// A template build's log as a [`Stream`] of [`BuildLogEvent`]s, ending after the build's
/// last event. Made by `Template::build_log_events`. Dropping it closes the stream.
pub struct BuildLogEvents {
    inner: BoxStream<'static, Result<BuildLogEvent>>,
}

impl fmt::Debug for BuildLogEvents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BuildLogEvents").finish_non_exhaustive()
    }
}

impl BuildLogEvents {
    pub(crate) fn new(logs: BuildLogs) -> BuildLogEvents {
        let inner = stream::unfold(logs, |mut logs| async move {
            let item = logs.next().await?;
            Some((item, logs))
        });
        BuildLogEvents {
            inner: Box::pin(inner.fuse()),
        }
    }
}

impl Stream for BuildLogEvents {
    type Item = Result<BuildLogEvent>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

type Reserve = Pin<
    Box<
        dyn Future<
                Output = std::result::Result<
                    mpsc::OwnedPermit<crate::rt::transport::Frame>,
                    mpsc::error::SendError<()>,
                >,
            > + Send,
    >,
>;

/// A session's stdin as a `tokio::io::AsyncWrite`. Made by `CommandSession::stdin`.
///
/// Each write sends up to 32 KiB as one frame, waiting while the session's send queue is full.
/// Writes after the command finished are accepted and dropped. `shutdown()` closes stdin
/// (EOF); dropping the writer does not.
pub struct SessionStdin {
    tx: StdinSender,
    reserve: Option<Reserve>,
    closed: bool,
}

impl fmt::Debug for SessionStdin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionStdin")
            .field("finished", &self.tx.is_settled())
            .field("closed", &self.closed)
            .finish()
    }
}

impl SessionStdin {
    pub(crate) fn new(tx: StdinSender) -> SessionStdin {
        SessionStdin {
            tx,
            reserve: None,
            closed: false,
        }
    }

    /// Waits for room in the send queue; `Ok(None)` once the command has finished.
    fn poll_permit(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<Option<mpsc::OwnedPermit<crate::rt::transport::Frame>>>> {
        if self.tx.is_settled() {
            self.reserve = None;
            return Poll::Ready(Ok(None));
        }
        let sender = self.tx.sender();
        let fut = self
            .reserve
            .get_or_insert_with(|| Box::pin(sender.reserve_owned()));
        let result = ready!(fut.as_mut().poll(cx));
        self.reserve = None;
        Poll::Ready(match result {
            Ok(permit) => Ok(Some(permit)),
            Err(_) if self.tx.is_settled() => Ok(None),
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                Error::stream("exec/connect: the session has ended"),
            )),
        })
    }
}

impl AsyncWrite for SessionStdin {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let n = buf.len().min(STDIN_CHUNK);
        if let Some(permit) = ready!(self.poll_permit(cx))? {
            permit.send(rt::binary_frame(stdin_frame(&buf[..n])));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.closed {
            return Poll::Ready(Ok(()));
        }
        if let Some(permit) = ready!(self.poll_permit(cx))? {
            permit.send(rt::text_frame(stdin_close_frame()));
        }
        self.closed = true;
        Poll::Ready(Ok(()))
    }
}

/// A file in a sandbox as a `tokio::io::AsyncRead`, read as it downloads. Made by
/// `Files::open_read`. Dropping it closes the connection.
pub struct FileReader {
    chunks: BoxStream<'static, Result<Bytes>>,
    chunk: Bytes,
    read: u64,
    max_bytes: u64,
    done: bool,
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
        let chunks = stream::unfold(Some(resp), |resp| async move {
            let mut resp = resp?;
            match resp.next_chunk().await {
                Ok(Some(c)) => Some((Ok(c), Some(resp))),
                Ok(None) => None,
                Err(e) => Some((Err(e), None)),
            }
        });
        FileReader {
            chunks: Box::pin(chunks),
            chunk: Bytes::new(),
            read: 0,
            max_bytes,
            done: false,
        }
    }
}

impl AsyncRead for FileReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        while self.chunk.is_empty() {
            if self.done {
                return Poll::Ready(Ok(()));
            }
            match ready!(self.chunks.as_mut().poll_next(cx)) {
                Some(Ok(c)) => {
                    self.read += c.len() as u64;
                    if let Err(e) = check_cap(self.read, self.max_bytes) {
                        self.done = true;
                        self.chunks = Box::pin(stream::empty());
                        return Poll::Ready(Err(std::io::Error::other(e)));
                    }
                    self.chunk = c;
                }
                Some(Err(e)) => {
                    self.done = true;
                    return Poll::Ready(Err(std::io::Error::other(e)));
                }
                None => self.done = true,
            }
        }
        let n = buf.remaining().min(self.chunk.len());
        buf.put_slice(&self.chunk[..n]);
        let _ = self.chunk.split_to(n);
        Poll::Ready(Ok(()))
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let sandbox = self.sandbox.clone();
        let report = |r: Result<()>, id: &str| {
            if let Err(e) = r {
                tracing::warn!(sandbox_id = id, error = %e, "superserve: kill on drop failed");
            }
        };
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread {
                let r = tokio::task::block_in_place(|| handle.block_on(sandbox.kill()));
                report(r, sandbox.id());
                return;
            }
        }
        // A current-thread runtime (blocked while we wait) or none at all: kill from a thread
        // of its own, with a connection pool of its own (the handle's pooled connections may
        // belong to the runtime this thread is blocking).
        let id = sandbox.id().to_owned();
        let config = sandbox.config().to_builder().build();
        let joined = std::thread::Builder::new()
            .name("superserve-kill-on-drop".into())
            .spawn(move || -> Result<()> {
                let config = config?;
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| Error::io("cannot start a runtime for kill on drop", e))?;
                runtime.block_on(Sandbox::kill_by_id_with_config(&config, &id))
            })
            .map_err(|e| Error::io("cannot start a thread for kill on drop", e))
            .and_then(|t| {
                t.join()
                    .unwrap_or_else(|_| Err(Error::stream("the kill-on-drop thread panicked")))
            });
        report(joined, sandbox.id());
    }
}

/// Uploads up to this size are sent from memory (and can be retried after a token refresh).
const IN_MEMORY_UPLOAD: usize = 1024 * 1024;

impl Files {
    /// Uploads everything `reader` yields to `path`, streaming: memory use does not depend on
    /// the size. Returns the number of bytes sent.
    ///
    /// ```no_run
    /// # async fn demo(sb: &superserve::AsyncSandbox) -> superserve::Result<()> {
    /// let file = tokio::fs::File::open("big.bin").await.unwrap();
    /// let sent = sb.files().write_from("/data/big.bin", file).await?;
    /// # let _ = sent; Ok(()) }
    /// ```
    pub async fn write_from<R>(&self, path: &str, mut reader: R) -> Result<u64>
    where
        R: AsyncRead + Send + Unpin + 'static,
    {
        check_path(path)?;
        let mut head = Vec::new();
        (&mut reader)
            .take(IN_MEMORY_UPLOAD as u64 + 1)
            .read_to_end(&mut head)
            .await
            .map_err(|e| Error::io("reading the upload failed", e))?;
        if head.len() <= IN_MEMORY_UPLOAD {
            let n = head.len() as u64;
            self.write(path, head).await?;
            return Ok(n);
        }
        let count = Arc::new(AtomicU64::new(0));
        let counter = count.clone();
        let first = Bytes::from(head);
        let state = (Some(first), reader, counter);
        let body = stream::unfold(state, |(first, mut reader, counter)| async move {
            if let Some(b) = first {
                counter.fetch_add(b.len() as u64, Ordering::Relaxed);
                return Some((Ok::<_, std::io::Error>(b), (None, reader, counter)));
            }
            let mut buf = vec![0u8; 256 * 1024];
            match reader.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    counter.fetch_add(n as u64, Ordering::Relaxed);
                    Some((Ok(Bytes::from(buf)), (None, reader, counter)))
                }
                Err(e) => Some((Err(e), (None, reader, counter))),
            }
        });
        self.upload(path, Upload(reqwest::Body::wrap_stream(body)))
            .await?;
        Ok(count.load(Ordering::Relaxed))
    }

    /// Downloads `path` into `writer`, streaming; returns the number of bytes written.
    pub async fn read_into<W>(&self, path: &str, writer: &mut W) -> Result<u64>
    where
        W: AsyncWrite + Unpin + ?Sized,
    {
        let resp = self.open_download(path, false).await?;
        self.copy_into(resp, writer).await
    }

    /// Downloads the directory at `path` as a ZIP archive into `writer`, streaming; returns
    /// the number of bytes written.
    pub async fn download_dir_into<W>(&self, path: &str, writer: &mut W) -> Result<u64>
    where
        W: AsyncWrite + Unpin + ?Sized,
    {
        let resp = self.open_download(path, true).await?;
        self.copy_into(resp, writer).await
    }

    async fn copy_into<W>(&self, mut resp: StreamResponse, writer: &mut W) -> Result<u64>
    where
        W: AsyncWrite + Unpin + ?Sized,
    {
        let mut n: u64 = 0;
        while let Some(chunk) = resp.next_chunk().await? {
            n += chunk.len() as u64;
            self.check_cap(n)?;
            writer
                .write_all(&chunk)
                .await
                .map_err(|e| Error::io("writing the download failed", e))?;
        }
        writer
            .flush()
            .await
            .map_err(|e| Error::io("writing the download failed", e))?;
        Ok(n)
    }
}
