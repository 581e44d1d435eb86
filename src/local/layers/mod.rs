//! The layer store: read-only file system layers shared by sandboxes, snapshots and
//! templates, reference-counted in SQLite, surviving restarts.
//!
//! A sandbox's root is an overlay of a [`Stack`] of layers plus its own writable upper (on
//! its own disk). Layers come in two kinds:
//!
//! * **image** layers are captures: a reflink clone (no data copied, see [`pool`]) of a
//!   sandbox's whole disk image, made while the sandbox is frozen. Its `upper` (and
//!   `usr-upper`) directory, whiteouts included, becomes a lower layer of the sandboxes that
//!   boot from it; the agent mounts the image read-only. Snapshots and template build results
//!   are image layers, id `cap-<uuid>` (hashing a capture would read every byte of it);
//! * **dir** layers are directories under `data_dir/layers/`: OCI image layers unpacked with
//!   their whiteouts in overlayfs form, id = the blob's digest (`sha256:…`), so a layer two
//!   templates share is stored once.
//!
//! Every layer records the host id that owns its root-owned files (`owner_base`: 0 for pulled
//! layers, the writing sandbox's id base for captures): each sandbox idmaps it so that owner
//! is its own root.
//!
//! References: `layer_refs(holder, pos, layer)` lists each holder's stack (`sandbox:<id>`,
//! `snapshot:<id>`, `template:<id>`, `build:<id>`). A layer nobody references is deleted
//! ([`LayerStore::gc`], after every release and at start); so deleting a snapshot that a
//! sandbox or another snapshot still builds on keeps the layers they need.

pub(crate) mod pool;

use std::collections::HashSet;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension};

use super::error::LocalError;
use super::ident::uuid_v4;
use super::image::BaseImage;
use super::model::{Base, Stack};
use super::store::{Db, StoreError};
use super::sys::proto::{Lower, MAX_SETUP_FDS};
use super::time::now_ns;
pub(crate) use pool::Pool;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS layers (
    id          TEXT PRIMARY KEY,
    kind        TEXT NOT NULL,
    owner_base  INTEGER NOT NULL,
    size_bytes  INTEGER NOT NULL,
    state       TEXT NOT NULL,
    created_ns  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS layer_refs (
    holder  TEXT NOT NULL,
    pos     INTEGER NOT NULL,
    layer   TEXT NOT NULL,
    PRIMARY KEY (holder, pos)
);
CREATE INDEX IF NOT EXISTS layer_refs_by_layer ON layer_refs (layer);
";

/// Most image layers a stack may have (each is a descriptor sent to the agent, and a loop
/// device in the sandbox).
pub(crate) const MAX_IMAGE_LAYERS: usize = MAX_SETUP_FDS - 1;

/// A stack as the agent gets it.
#[derive(Debug, Default)]
pub(crate) struct Resolved {
    pub root: Vec<Lower>,
    pub usr: Vec<Lower>,
    /// The read-only images `Lower::image` refers to (1-based).
    pub images: Vec<PathBuf>,
    pub host_dirs: Vec<String>,
}

/// One layer's row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LayerRow {
    pub id: String,
    pub kind: String,
    pub owner_base: u32,
    pub size_bytes: u64,
}

/// The store.
pub(crate) struct LayerStore {
    pool: Pool,
    /// `data_dir/layers`: dir layers.
    dirs: PathBuf,
    /// The runtime layer of stacks without the host base.
    runtime: PathBuf,
    db: Db,
}

impl std::fmt::Debug for LayerStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LayerStore")
            .field("pool", &self.pool)
            .field("dirs", &self.dirs)
            .finish_non_exhaustive()
    }
}

/// A dir layer's directory name: its id (`sha256:<hex>`), as the OCI puller names it.
fn dir_name(id: &str) -> String {
    id.to_owned()
}

fn bytes(p: &Path) -> Vec<u8> {
    p.as_os_str().as_bytes().to_vec()
}

impl LayerStore {
    /// Opens the store of `data_dir` (its tables, its pool).
    pub(crate) fn open(
        data_dir: &Path,
        db: Db,
        runtime: PathBuf,
    ) -> Result<LayerStore, LocalError> {
        let dirs = data_dir.join("layers");
        std::fs::create_dir_all(&dirs).map_err(|source| LocalError::DataDir {
            path: dirs.clone(),
            source,
        })?;
        db.call_sync(|c| Ok(c.execute_batch(SCHEMA)?))
            .map_err(|e| LocalError::Database {
                path: data_dir.join("state.db"),
                source: Box::new(e),
            })?;
        let pool = Pool::open(data_dir)?;
        Ok(LayerStore {
            pool,
            dirs,
            runtime,
            db,
        })
    }

    /// The pool (disk images live there too).
    pub(crate) fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Where a captured layer's image lives.
    fn image_path(&self, id: &str) -> PathBuf {
        self.pool.path(pool::LAYERS).join(format!("{id}.ext4"))
    }

    /// Where a dir layer lives.
    pub(crate) fn dir_path(&self, id: &str) -> PathBuf {
        self.dirs.join(dir_name(id))
    }

    /// The lowers of `stack` for the agent. Blocking (reads the layer rows).
    pub(crate) fn resolve(&self, stack: &Stack, base: &BaseImage) -> Result<Resolved, StoreError> {
        let rows = self.db.call_sync(|c| {
            stack
                .layers
                .iter()
                .map(|id| {
                    layer_row(c, id)?.ok_or_else(|| {
                        StoreError::Corrupt(format!("layer {id} is missing from the store"))
                    })
                })
                .collect::<Result<Vec<_>, _>>()
        })?;
        let mut r = Resolved::default();
        if stack.base == Base::None {
            r.root.push(Lower {
                image: 0,
                path: bytes(&self.runtime),
                owner_base: 0,
                recursive: false,
            });
        }
        for row in rows {
            if row.kind == "image" {
                if r.images.len() >= MAX_IMAGE_LAYERS {
                    return Err(StoreError::Corrupt(format!(
                        "the stack has more than {MAX_IMAGE_LAYERS} captured layers"
                    )));
                }
                r.images.push(self.image_path(&row.id));
                let image = r.images.len() as u32;
                r.root.push(Lower {
                    image,
                    path: b"upper".to_vec(),
                    owner_base: row.owner_base,
                    recursive: false,
                });
                if stack.base == Base::Host {
                    r.usr.push(Lower {
                        image,
                        path: b"usr-upper".to_vec(),
                        owner_base: row.owner_base,
                        recursive: false,
                    });
                }
            } else {
                r.root.push(Lower {
                    image: 0,
                    path: bytes(&self.dir_path(&row.id)),
                    owner_base: row.owner_base,
                    recursive: false,
                });
            }
        }
        if stack.base == Base::Host {
            r.root.push(Lower {
                image: 0,
                path: bytes(&base.dir),
                owner_base: 0,
                recursive: false,
            });
            r.usr.push(Lower {
                image: 0,
                path: b"/usr".to_vec(),
                owner_base: 0,
                recursive: true,
            });
            r.host_dirs = base.host_dirs.clone();
        }
        Ok(r)
    }

    /// Captures `disk` (a sandbox's disk image; the sandbox frozen or stopped, its file
    /// system flushed) as a new image layer owned by `owner_base`, and makes `holder` hold
    /// `parent` with the new layer on top. Returns the new stack. Blocking.
    pub(crate) fn capture(
        &self,
        disk: &Path,
        owner_base: u32,
        holder: &str,
        parent: &Stack,
    ) -> Result<(Stack, u64), StoreError> {
        let image_layers = self.db.call_sync(|c| count_images(c, &parent.layers))?;
        if image_layers >= MAX_IMAGE_LAYERS {
            return Err(StoreError::Corrupt(format!(
                "a stack holds at most {MAX_IMAGE_LAYERS} captured layers (snapshot chains \
                 are limited to that depth)"
            )));
        }
        let id = format!("cap-{}", uuid_v4());
        self.db.call_sync(|c| {
            c.execute(
                "INSERT INTO layers (id, kind, owner_base, size_bytes, state, created_ns)
                 VALUES (?1, 'image', ?2, 0, 'pending', ?3)",
                params![id, owner_base, now_ns()],
            )?;
            Ok(())
        })?;
        let path = self.image_path(&id);
        let cloned = pool::clone_file(disk, &path).and_then(|()| std::fs::metadata(&path));
        let size = match cloned {
            Ok(m) => m.blocks() * 512,
            Err(e) => {
                let _ = self.db.call_sync(|c| {
                    c.execute("DELETE FROM layers WHERE id = ?1", params![id])?;
                    Ok(())
                });
                return Err(StoreError::Corrupt(format!("cannot clone the disk: {e}")));
            }
        };
        let stack = parent.with_top(&id);
        self.db.call_sync(|c| {
            let tx = c.unchecked_transaction()?;
            tx.execute(
                "UPDATE layers SET state = 'ready', size_bytes = ?2 WHERE id = ?1",
                params![id, size as i64],
            )?;
            hold(&tx, holder, &stack)?;
            tx.commit()?;
            Ok(())
        })?;
        Ok((stack, size))
    }

    /// Makes `holder` hold `stack` (replacing what it held).
    pub(crate) async fn hold(&self, holder: &str, stack: &Stack) -> Result<(), StoreError> {
        let (holder, stack) = (holder.to_owned(), stack.clone());
        self.db
            .call(move |c| {
                let tx = c.unchecked_transaction()?;
                hold(&tx, &holder, &stack)?;
                tx.commit()?;
                Ok(())
            })
            .await
    }

    /// Drops what `holder` holds, then deletes the layers nobody holds any more.
    pub(crate) async fn release(&self, holder: &str) -> Result<(), StoreError> {
        let holder = holder.to_owned();
        self.db
            .call(move |c| {
                release(c, &holder)?;
                Ok(())
            })
            .await?;
        self.gc().await
    }

    /// Deletes every ready layer that no holder references (rows first, then files).
    pub(crate) async fn gc(&self) -> Result<(), StoreError> {
        let gone = self
            .db
            .call(|c| {
                let tx = c.unchecked_transaction()?;
                let mut stmt = tx.prepare(
                    "SELECT id, kind FROM layers WHERE state = 'ready'
                     AND id NOT IN (SELECT layer FROM layer_refs)",
                )?;
                let rows = stmt
                    .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?
                    .collect::<Result<Vec<_>, _>>()?;
                drop(stmt);
                for (id, _) in &rows {
                    tx.execute("DELETE FROM layers WHERE id = ?1", params![id])?;
                }
                tx.commit()?;
                Ok(rows)
            })
            .await?;
        let paths: Vec<PathBuf> = gone
            .into_iter()
            .map(|(id, kind)| {
                if kind == "image" {
                    self.image_path(&id)
                } else {
                    self.dir_path(&id)
                }
            })
            .collect();
        let _ = tokio::task::spawn_blocking(move || {
            for p in paths {
                remove_path(&p);
            }
        })
        .await;
        Ok(())
    }

    /// Start-up: drops references of holders that no longer exist (`live`), layers a crash
    /// left half made, unreferenced layers, and files that no row names. Blocking.
    pub(crate) fn recover(&self, live: &HashSet<String>) -> Result<(), StoreError> {
        let gone = self.db.call_sync(|c| {
            let tx = c.unchecked_transaction()?;
            let holders: Vec<String> = {
                let mut stmt = tx.prepare("SELECT DISTINCT holder FROM layer_refs")?;
                let v = stmt
                    .query_map([], |r| r.get(0))?
                    .collect::<Result<Vec<_>, _>>()?;
                v
            };
            for h in holders.iter().filter(|h| !live.contains(*h)) {
                release(&tx, h)?;
            }
            tx.execute(
                "DELETE FROM layers WHERE state != 'ready'
                 OR id NOT IN (SELECT layer FROM layer_refs)",
                [],
            )?;
            let mut stmt = tx.prepare("SELECT id, kind FROM layers")?;
            let keep = stmt
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?
                .collect::<Result<Vec<_>, _>>()?;
            drop(stmt);
            tx.commit()?;
            Ok(keep)
        })?;
        let keep_images: HashSet<String> = gone
            .iter()
            .filter(|(_, k)| k == "image")
            .map(|(id, _)| format!("{id}.ext4"))
            .collect();
        let keep_dirs: HashSet<String> = gone
            .iter()
            .filter(|(_, k)| k != "image")
            .map(|(id, _)| dir_name(id))
            .collect();
        for (dir, keep) in [
            (self.pool.path(pool::LAYERS), &keep_images),
            (self.dirs.clone(), &keep_dirs),
        ] {
            for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if !keep.contains(&name) {
                    remove_path(&e.path());
                }
            }
        }
        Ok(())
    }
}

impl LayerStore {
    /// The directory of the dir layers (where the OCI puller unpacks).
    pub(crate) fn dirs(&self) -> &Path {
        &self.dirs
    }

    /// Records dir layers (unpacked under [`dirs`](Self::dirs), named by their id) that are
    /// not in the store yet (`(id, size in bytes)`), and makes `holder` hold `stack` in the
    /// same transaction (no collection can come between).
    pub(crate) async fn add_dirs(
        &self,
        layers: &[(String, u64)],
        holder: &str,
        stack: &Stack,
    ) -> Result<(), StoreError> {
        let layers = layers.to_vec();
        let (holder, stack) = (holder.to_owned(), stack.clone());
        self.db
            .call(move |c| {
                let tx = c.unchecked_transaction()?;
                for (id, size) in &layers {
                    tx.execute(
                        "INSERT OR IGNORE INTO layers (id, kind, owner_base, size_bytes, state,
                            created_ns) VALUES (?1, 'dir', 0, ?2, 'ready', ?3)",
                        params![id, i64::try_from(*size).unwrap_or(i64::MAX), now_ns()],
                    )?;
                }
                hold(&tx, &holder, &stack)?;
                tx.commit()?;
                Ok(())
            })
            .await
    }

    /// Total bytes of the distinct layers named. Blocking.
    pub(crate) fn size_of(&self, layers: &[String]) -> Result<u64, StoreError> {
        self.db.call_sync(|c| {
            let mut seen = HashSet::new();
            let mut total = 0u64;
            for id in layers {
                if seen.insert(id.clone()) {
                    if let Some(r) = layer_row(c, id)? {
                        total += r.size_bytes;
                    }
                }
            }
            Ok(total)
        })
    }
}

fn remove_path(p: &Path) {
    let res = match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(p),
        Ok(_) => std::fs::remove_file(p),
        Err(_) => Ok(()),
    };
    if let Err(e) = res {
        eprintln!("superserve-local: cannot remove layer {}: {e}", p.display());
    }
}

fn layer_row(c: &Connection, id: &str) -> Result<Option<LayerRow>, StoreError> {
    Ok(c.query_row(
        "SELECT id, kind, owner_base, size_bytes FROM layers WHERE id = ?1 AND state = 'ready'",
        params![id],
        |r| {
            Ok(LayerRow {
                id: r.get(0)?,
                kind: r.get(1)?,
                owner_base: r.get(2)?,
                size_bytes: u64::try_from(r.get::<_, i64>(3)?).unwrap_or(0),
            })
        },
    )
    .optional()?)
}

fn count_images(c: &Connection, layers: &[String]) -> Result<usize, StoreError> {
    let mut n = 0;
    for id in layers {
        if layer_row(c, id)?.is_some_and(|r| r.kind == "image") {
            n += 1;
        }
    }
    Ok(n)
}

/// Replaces what `holder` holds with `stack` (inside the caller's transaction).
pub(crate) fn hold(c: &Connection, holder: &str, stack: &Stack) -> Result<(), StoreError> {
    release(c, holder)?;
    for (pos, layer) in stack.layers.iter().enumerate() {
        c.execute(
            "INSERT INTO layer_refs (holder, pos, layer) VALUES (?1, ?2, ?3)",
            params![holder, pos as i64, layer],
        )?;
    }
    Ok(())
}

/// Drops what `holder` holds (no garbage collection).
pub(crate) fn release(c: &Connection, holder: &str) -> Result<(), StoreError> {
    c.execute("DELETE FROM layer_refs WHERE holder = ?1", params![holder])?;
    Ok(())
}

/// Holder names.
pub(crate) fn sandbox_holder(id: &str) -> String {
    format!("sandbox:{id}")
}
