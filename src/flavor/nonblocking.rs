//! Async-only API: streams.

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::stream::{self, BoxStream, Stream};

use super::api::Sandbox;
use crate::error::Result;
use crate::models::NetworkEvent;
use crate::options::NetworkLogOptions;

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
    /// `opts.limit` sets the page size; `before`, `since` and `verdict` filter as in
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
            inner: Box::pin(inner),
        }
    }
}

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::api::Files;
use crate::error::Error;
use crate::rt::nonblocking::Upload;

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
        super::api::check_path(path)?;
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
        let first = bytes::Bytes::from(head);
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
                    Some((Ok(bytes::Bytes::from(buf)), (None, reader, counter)))
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

    async fn copy_into<W>(
        &self,
        mut resp: crate::rt::nonblocking::StreamResponse,
        writer: &mut W,
    ) -> Result<u64>
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
