//! Restart recovery and shutdown: nothing of a previous backend survives on its data
//! directory (processes, cgroups, unrecorded sandbox directories, id-range claims), records
//! come back paused; shutdown kills every sandbox's processes and records them paused.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicI64;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use super::super::disk::Disks;
use super::super::error::LocalError;
use super::super::fault::FaultSet;
use super::super::journal::Journal;
use super::super::layers::sandbox_holder;
use super::super::model::Status;
use super::super::preview::Previews;
use super::super::runtime::Host;
use super::super::secrets::Secrets;
use super::super::snapshots;
use super::super::store::{self, Db};
use super::super::templates;
use super::super::time::now_ns;
use super::{App, Entry, Tuning};

impl App {
    /// Loads the state and prepares sandboxes that survived a restart: every sandbox that was
    /// not paused comes back paused (its processes did not survive), leftovers are cleaned.
    pub(crate) fn new(
        api_key: String,
        host: Host,
        db: Db,
        secrets: Secrets,
        previews: Arc<Previews>,
        tuning: Tuning,
    ) -> Result<App, LocalError> {
        let db_err = |e: store::StoreError| LocalError::Database {
            path: host.sandboxes_dir.with_file_name("state.db"),
            source: Box::new(e),
        };
        let records = db.call_sync(store::load_all).map_err(db_err)?;
        // snapshots a stop interrupted failed (their half-made layers go below)
        let snapshot_ids = db
            .call_sync(|c| {
                snapshots::init(c)?;
                snapshots::fail_interrupted(c)?;
                snapshots::all_ids(c)
            })
            .map_err(db_err)?;
        // templates; builds a stop interrupted failed
        let template_ids = db
            .call_sync(|c| templates::init(c, now_ns()))
            .map_err(db_err)?;
        // Nothing of a previous backend on this data directory survives: every cgroup of this
        // instance is emptied (its processes killed, frozen ones included) and removed,
        // whatever the records say; processes never survive a restart.
        for name in host.cgroups.sandbox_names() {
            let _ = host.cgroups.sandbox(&name).destroy();
        }
        let now = now_ns();
        let mut map = HashMap::new();
        let mut max_seq = 0;
        for mut rec in records {
            let mut changed = false;
            if rec.status != Status::Paused {
                rec.status = Status::Paused;
                rec.paused_at_ns = Some(now);
                rec.active_since_ns = None;
                rec.arm_auto_delete(now);
                changed = true;
            }
            // the sandbox's files are owned by its id range: keep the claim
            match rec.id_slot {
                Some(slot) => {
                    if let Err(e) = host.ids.reclaim(slot, &rec.id) {
                        eprintln!("superserve-local: sandbox {}: {e}", rec.id);
                    }
                }
                None => {
                    let slot = host
                        .ids
                        .claim(&rec.id)
                        .map_err(|source| LocalError::DataDir {
                            path: host.sandboxes_dir.clone(),
                            source,
                        })?;
                    rec.id_slot = Some(slot);
                    changed = true;
                }
            }
            if changed {
                db.call_sync(|c| store::upsert(c, &rec)).map_err(db_err)?;
            }
            max_seq = max_seq.max(rec.seq);
            map.insert(rec.id.clone(), Arc::new(Entry::new(rec)));
        }
        // directories and disks of sandboxes that have no record (a create interrupted by a
        // crash)
        if let Ok(dirs) = std::fs::read_dir(&host.sandboxes_dir) {
            for d in dirs.flatten() {
                let name = d.file_name().to_string_lossy().into_owned();
                if !map.contains_key(&name) {
                    let _ = std::fs::remove_dir_all(d.path());
                }
            }
        }
        if let Ok(disks) = std::fs::read_dir(host.disks.dir()) {
            for d in disks.flatten() {
                let name = d.file_name().to_string_lossy().into_owned();
                let orphan = match Disks::sandbox_of(&name) {
                    Some(id) => !map.contains_key(id),
                    // a disk being made when the backend stopped
                    None => name.ends_with(".tmp"),
                };
                if orphan {
                    let _ = std::fs::remove_file(d.path());
                } else if name.ends_with(".skel") {
                    // the contents of a template being made when the backend stopped
                    let _ = std::fs::remove_dir_all(d.path());
                }
            }
        }
        // layers: references of holders that are gone, half-made and unreferenced layers
        let live: HashSet<String> = map
            .keys()
            .map(|id| sandbox_holder(id))
            .chain(snapshot_ids.iter().map(|id| snapshots::holder(id)))
            .chain(template_ids.iter().map(|id| templates::holder(id)))
            .collect();
        host.layers.recover(&live).map_err(db_err)?;
        let keep: Vec<String> = map.keys().cloned().collect();
        host.ids.release_all_except(&keep);
        Ok(App {
            api_key,
            host,
            db,
            sandboxes: RwLock::new(map),
            journal: Journal::default(),
            faults: FaultSet::default(),
            tuning,
            secrets,
            previews,
            seq: AtomicI64::new(max_seq + 1),
            builds: std::sync::Mutex::default(),
            build_slots: Arc::new(tokio::sync::Semaphore::new(templates::BUILDS_RUNNING)),
            stopping: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Kills every sandbox's processes, records running sandboxes as paused and removes this
    /// backend's parent cgroups.
    pub(crate) async fn shutdown(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        // build sandboxes are not in the registry: their processes go with their cgroups
        let cgroups = self.host.cgroups.clone();
        let _ = tokio::task::spawn_blocking(move || {
            for name in cgroups.sandbox_names() {
                if name.starts_with("build-") {
                    let _ = cgroups.sandbox(&name).destroy();
                }
            }
        })
        .await;
        for entry in self.all() {
            let _ops = tokio::time::timeout(Duration::from_secs(15), entry.ops.lock())
                .await
                .ok();
            let rt = entry.rt.write().await.take();
            if let Some(rt) = rt {
                let _ = rt.kill().await;
            }
            let now = now_ns();
            let changed = entry.with(|r| {
                if r.status == Status::Paused {
                    return false;
                }
                r.status = Status::Paused;
                r.paused_at_ns = Some(now);
                r.active_since_ns = None;
                r.arm_auto_delete(now);
                true
            });
            if changed {
                let _ = self.persist(&entry).await;
            }
        }
        self.host.cgroups.remove_instance();
    }
}
