//! The sandbox registry and the record store glue: looking sandboxes up, writing a record
//! to the database, expiring a token.

use std::sync::Arc;

use super::super::error::ApiError;
use super::super::ident::new_token;
use super::super::model::Record;
use super::super::store;
use super::{App, Entry};

impl App {
    /// The live entry of a sandbox.
    pub(crate) fn get(&self, id: &str) -> Option<Arc<Entry>> {
        let map = self
            .sandboxes
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.get(id).filter(|e| !e.is_deleted()).cloned()
    }

    pub(super) fn entry(&self, id: &str) -> Result<Arc<Entry>, ApiError> {
        self.get(id).ok_or_else(ApiError::sandbox_not_found)
    }

    /// Every entry, oldest first.
    pub(crate) fn all(&self) -> Vec<Arc<Entry>> {
        let map = self
            .sandboxes
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut v: Vec<Arc<Entry>> = map.values().filter(|e| !e.is_deleted()).cloned().collect();
        v.sort_by_key(|e| e.with(|r| r.seq));
        v
    }

    pub(super) fn remove(&self, id: &str) {
        let mut map = self
            .sandboxes
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.remove(id);
    }

    /// Writes the entry's current record (read under the database lock, so the last write
    /// always carries the latest state).
    pub(crate) async fn persist(&self, entry: &Arc<Entry>) -> Result<(), ApiError> {
        let entry = entry.clone();
        self.db
            .call(move |c| {
                if entry.is_deleted() {
                    return Ok(());
                }
                store::upsert(c, &entry.rec())
            })
            .await
            .map_err(ApiError::from)
    }

    /// `GET /sandboxes/{id}` (the record) or 404.
    pub(crate) fn record(&self, id: &str) -> Result<Record, ApiError> {
        Ok(self.entry(id)?.rec())
    }

    /// Invalidates a sandbox's access token (for tests of token refresh).
    pub(crate) fn expire_token(&self, id: &str) -> bool {
        let Some(entry) = self.get(id) else {
            return false;
        };
        entry.with(|r| r.access_token = new_token());
        let rec = entry.rec();
        let _ = self.db.call_sync(|c| store::upsert(c, &rec));
        true
    }
}
