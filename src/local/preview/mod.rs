//! Preview ports: how a port inside a sandbox becomes a URL (protocol.md §1.5, §3.4). This
//! module holds their state and what reaches them; the handlers above it are
//! `preview_api` (the control-plane endpoints: list, publish, unpublish, mint, rotate) and
//! `preview_proxy` (the preview listener, which routes `http://{port}-{id}.localhost:{P}/…`
//! and `http://{listener}/_preview/{port}-{id}/…` to the port inside the sandbox's network
//! namespace, enforcing the sandbox's preview access).
//!
//! * [`token`]: the signed `spv1.` tokens;
//! * [`netns`]: connections into a sandbox's network namespace;
//! * [`pool`]: kept-alive connections to apps inside sandboxes;
//! * [`relay`]: HTTP/1.1 framing, and bodies relayed between sockets with `splice(2)`.
//!
//! Published ports and their token versions live in memory for the proxy and in SQLite
//! (table `preview_ports`), so they survive a restart; the token key is a file in the data
//! directory (mode 0600). A port's token version only ever grows: unpublishing bumps it too,
//! so a token minted before an unpublish never works again, even after the port is
//! published anew.

pub(crate) mod netns;
pub(crate) mod pool;
pub(crate) mod relay;
pub(crate) mod sys;
pub(crate) mod token;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{params, Connection};

use super::fault::lock;
use super::store::{Db, StoreError};
use netns::Dialer;
use token::{Claims, Refusal, TokenKey};

/// The header a token is sent in.
pub(crate) const TOKEN_HEADER: &str = "X-Superserve-Preview-Token";
/// The query parameter of a signed link.
pub(crate) const TOKEN_QUERY_PARAM: &str = "superserve_preview_token";
/// The cookie a signed link's token is moved into (host-only, `HttpOnly`).
pub(crate) const TOKEN_COOKIE: &str = "superserve_preview_token";
/// Lowest port a preview can expose.
pub(crate) const MIN_PORT: u16 = 1024;
/// The in-sandbox daemon's port, never previewed.
pub(crate) const RESERVED_PORT: u16 = 49983;
/// Longest lifetime of a token.
pub(crate) const MAX_TOKEN_SECONDS: u64 = 604_800;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS preview_ports (
    sandbox_id    TEXT NOT NULL,
    port          INTEGER NOT NULL,
    token_version INTEGER NOT NULL,
    access        TEXT NOT NULL,
    published     INTEGER NOT NULL,
    PRIMARY KEY (sandbox_id, port)
);
";

/// Who may reach a published port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Access {
    Public,
    Private,
}

impl Access {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Access::Public => "public",
            Access::Private => "private",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Access> {
        match s {
            "public" => Some(Access::Public),
            "private" => Some(Access::Private),
            _ => None,
        }
    }

    /// The access a newly published port gets under a sandbox's `preview_access`.
    pub(crate) fn default_for(preview_access: &str) -> Access {
        match preview_access {
            "private" => Access::Private,
            _ => Access::Public,
        }
    }
}

/// A port of a sandbox that was published at least once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PortState {
    /// Tokens of other versions are refused (starts at 1; bumped by rotate and unpublish).
    pub version: u64,
    pub access: Access,
    pub published: bool,
}

/// Checks a port of a preview (1024–65535, not the daemon's).
pub(crate) fn check_port(port: i64) -> Result<u16, String> {
    match u16::try_from(port) {
        Ok(RESERVED_PORT) => Err(format!(
            "port {RESERVED_PORT} is reserved for the sandbox's daemon and cannot be previewed"
        )),
        Ok(p) if p >= MIN_PORT => Ok(p),
        _ => Err(format!(
            "preview port {port} is out of range: use {MIN_PORT}-65535 (not {RESERVED_PORT})"
        )),
    }
}

/// The preview state of every sandbox, and what the proxy needs to reach their ports.
pub(crate) struct Previews {
    key: TokenKey,
    db: Db,
    ports: Mutex<HashMap<String, BTreeMap<u16, PortState>>>,
    dialer: Dialer,
    pool: Arc<pool::Pool>,
}

impl std::fmt::Debug for Previews {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Previews").finish_non_exhaustive()
    }
}

impl Previews {
    /// Loads the published ports from `db` and the token key from `key_path` (created if
    /// missing).
    pub(crate) fn open(db: Db, key_path: &Path) -> Result<Previews, OpenError> {
        let key = TokenKey::load_or_create(key_path).map_err(OpenError::Key)?;
        let rows = db.call_sync(load_all).map_err(OpenError::Store)?;
        let mut ports: HashMap<String, BTreeMap<u16, PortState>> = HashMap::new();
        for (id, port, state) in rows {
            ports.entry(id).or_default().insert(port, state);
        }
        Ok(Previews {
            key,
            db,
            ports: Mutex::new(ports),
            dialer: Dialer::default(),
            pool: Arc::default(),
        })
    }

    /// The state of one port (published or not), if it was ever published.
    pub(crate) fn port(&self, id: &str, port: u16) -> Option<PortState> {
        lock(&self.ports)
            .get(id)
            .and_then(|m| m.get(&port))
            .copied()
    }

    /// The published ports of a sandbox, by port.
    pub(crate) fn published(&self, id: &str) -> Vec<(u16, PortState)> {
        lock(&self.ports)
            .get(id)
            .map(|m| {
                m.iter()
                    .filter(|(_, s)| s.published)
                    .map(|(p, s)| (*p, *s))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Changes one port's state in memory (`f` gets the current state, `None` if it was never
    /// published, and returns the new one) and writes it to the database.
    async fn update(
        self: &Arc<Self>,
        id: &str,
        port: u16,
        f: impl FnOnce(Option<PortState>) -> Option<PortState>,
    ) -> Result<Option<PortState>, StoreError> {
        let new = {
            let mut all = lock(&self.ports);
            let current = all.get(id).and_then(|m| m.get(&port)).copied();
            let new = f(current);
            if let Some(s) = new {
                all.entry(id.to_owned()).or_default().insert(port, s);
            }
            new
        };
        if new.is_some() {
            // written with the state as it is when the database is free, so that the last
            // write of concurrent changes carries the latest state
            let me = self.clone();
            let id = id.to_owned();
            self.db
                .call(move |c| match me.port(&id, port) {
                    Some(s) => save(c, &id, port, s),
                    None => Ok(()),
                })
                .await?;
        }
        Ok(new)
    }

    /// Publishes `port` (a new port gets `access` or `default`; a published one keeps its
    /// mode unless `access` is given).
    pub(crate) async fn publish(
        self: &Arc<Self>,
        id: &str,
        port: u16,
        access: Option<Access>,
        default: Access,
    ) -> Result<PortState, StoreError> {
        let s = self
            .update(id, port, |cur| {
                Some(match cur {
                    Some(s) if s.published => PortState {
                        access: access.unwrap_or(s.access),
                        ..s
                    },
                    // published again: a version no earlier token has
                    Some(s) => PortState {
                        version: s.version,
                        access: access.unwrap_or(default),
                        published: true,
                    },
                    None => PortState {
                        version: 1,
                        access: access.unwrap_or(default),
                        published: true,
                    },
                })
            })
            .await?;
        Ok(s.unwrap_or(PortState {
            version: 1,
            access: default,
            published: true,
        }))
    }

    /// Unpublishes `port` and revokes its tokens (a no-op for a port that is not published).
    pub(crate) async fn unpublish(self: &Arc<Self>, id: &str, port: u16) -> Result<(), StoreError> {
        self.update(id, port, |cur| {
            cur.filter(|s| s.published).map(|s| PortState {
                version: s.version.saturating_add(1),
                published: false,
                ..s
            })
        })
        .await
        .map(drop)
    }

    /// Bumps the token version of a published port; `None` when it is not published.
    pub(crate) async fn rotate(
        self: &Arc<Self>,
        id: &str,
        port: u16,
    ) -> Result<Option<PortState>, StoreError> {
        self.update(id, port, |cur| {
            cur.filter(|s| s.published).map(|s| PortState {
                version: s.version.saturating_add(1),
                ..s
            })
        })
        .await
    }

    /// What connects into sandboxes' network namespaces.
    pub(crate) fn dialer(&self) -> &Dialer {
        &self.dialer
    }

    /// Kept-alive connections to apps inside sandboxes.
    pub(crate) fn pool(&self) -> &Arc<pool::Pool> {
        &self.pool
    }

    /// Forgets a deleted sandbox's ports.
    pub(crate) async fn forget(&self, id: &str) -> Result<(), StoreError> {
        lock(&self.ports).remove(id);
        self.pool.forget(id);
        let id = id.to_owned();
        self.db
            .call(move |c| {
                c.execute(
                    "DELETE FROM preview_ports WHERE sandbox_id = ?1",
                    params![id],
                )?;
                Ok(())
            })
            .await
    }

    /// A token for `port` of sandbox `id` at `version`, expiring at `exp` (unix seconds).
    pub(crate) fn mint(&self, id: &str, port: u16, version: u64, exp: Option<i64>) -> String {
        self.key.mint(&Claims {
            sid: id.to_owned(),
            p: port,
            v: version,
            exp,
        })
    }

    /// Whether `presented` opens `port` of sandbox `id` now (with the token's expiry, unix
    /// seconds, if it has one).
    pub(crate) fn check(
        &self,
        presented: &str,
        id: &str,
        port: u16,
    ) -> Result<Option<i64>, Refusal> {
        let version = self
            .port(id, port)
            .filter(|s| s.published)
            .map(|s| s.version)
            .ok_or(Refusal::OtherScope)?;
        let now = super::time::now_ns().div_euclid(1_000_000_000);
        self.key.verify(presented, id, port, version, now)
    }
}

/// Why the preview state could not be loaded.
#[derive(Debug)]
pub(crate) enum OpenError {
    Key(std::io::Error),
    Store(StoreError),
}

/// Creates the table if needed.
pub(crate) fn migrate(c: &Connection) -> Result<(), StoreError> {
    c.execute_batch(SCHEMA)?;
    Ok(())
}

fn load_all(c: &Connection) -> Result<Vec<(String, u16, PortState)>, StoreError> {
    migrate(c)?;
    let mut stmt =
        c.prepare("SELECT sandbox_id, port, token_version, access, published FROM preview_ports")?;
    let mut rows = stmt.query([])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        let id: String = r.get(0)?;
        let port: i64 = r.get(1)?;
        let version: i64 = r.get(2)?;
        let access: String = r.get(3)?;
        let published: bool = r.get(4)?;
        let corrupt = || StoreError::Corrupt(format!("preview port {port} of {id}"));
        out.push((
            id.clone(),
            u16::try_from(port).map_err(|_| corrupt())?,
            PortState {
                version: u64::try_from(version).map_err(|_| corrupt())?,
                access: Access::parse(&access).ok_or_else(corrupt)?,
                published,
            },
        ));
    }
    Ok(out)
}

fn save(c: &Connection, id: &str, port: u16, s: PortState) -> Result<(), StoreError> {
    c.execute(
        "INSERT OR REPLACE INTO preview_ports (sandbox_id, port, token_version, access, published)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            id,
            port,
            i64::try_from(s.version).unwrap_or(i64::MAX),
            s.access.as_str(),
            s.published
        ],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn versions_only_grow_and_survive_a_restart() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!(
            "superserve-preview-test-{}-{:x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("preview.key");
        let open =
            || Arc::new(Previews::open(Db::open(&dir.join("state.db")).unwrap(), &key).unwrap());
        let id = "1b4e28ba-2fa1-41d2-883f-0016d3cca427";
        let p = open();
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let s = p.publish(id, 3000, None, Access::Private).await.unwrap();
        assert_eq!((s.version, s.access), (1, Access::Private));
        let v1 = p.mint(id, 3000, 1, None);
        assert_eq!(p.check(&v1, id, 3000), Ok(None));
        assert_eq!(
            p.rotate(id, 3000).await.unwrap().map(|s| s.version),
            Some(2)
        );
        assert_eq!(p.check(&v1, id, 3000), Err(Refusal::OtherScope));
        let v2 = p.mint(id, 3000, 2, None);
        p.unpublish(id, 3000).await.unwrap();
        assert_eq!(p.check(&v2, id, 3000), Err(Refusal::OtherScope));
        assert!(p.published(id).is_empty());
        assert_eq!(p.rotate(id, 3000).await.unwrap(), None);
        // published again: neither earlier token works
        let s = p
            .publish(id, 3000, Some(Access::Public), Access::Private)
            .await
            .unwrap();
        assert_eq!((s.version, s.access), (3, Access::Public));
        assert!(p.check(&v1, id, 3000).is_err() && p.check(&v2, id, 3000).is_err());
        // a published port keeps its mode unless told otherwise
        let s = p.publish(id, 3000, None, Access::Private).await.unwrap();
        assert_eq!((s.version, s.access), (3, Access::Public));
        let v3 = p.mint(id, 3000, 3, None);
        drop(p);
        let p = open();
        assert_eq!(p.published(id), vec![(3000, s)]);
        assert_eq!(p.check(&v3, id, 3000), Ok(None));
        assert!(p.check(&v2, id, 3000).is_err());
        p.forget(id).await.unwrap();
        drop(p);
        let p = open();
        assert_eq!(p.port(id, 3000), None);
        assert!(p.check(&v3, id, 3000).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn ports_are_checked() {
        assert_eq!(check_port(1024), Ok(1024));
        assert_eq!(check_port(65535), Ok(65535));
        for bad in [-1, 0, 80, 1023, 49983, 65536, i64::MAX] {
            assert!(check_port(bad).is_err(), "{bad}");
        }
    }
}
