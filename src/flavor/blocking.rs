//! Blocking-only API: iterators.

use std::collections::VecDeque;

use super::api::Sandbox;
use crate::error::Result;
use crate::models::NetworkEvent;
use crate::options::NetworkLogOptions;

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
    /// `opts.limit` sets the page size; `before`, `since` and `verdict` filter as in
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

use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::api::Files;
use crate::error::Error;
use crate::rt::blocking::Upload;

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
        super::api::check_path(path)?;
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
        mut resp: crate::rt::blocking::StreamResponse,
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
