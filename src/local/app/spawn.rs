//! Starting commands in a sandbox: a running runtime for a data-plane call (a fresh one when
//! an active sandbox's agent died), and the spawn itself.

use std::sync::Arc;

use super::super::agent::Process;
use super::super::model::Status;
use super::super::runtime::{CommandSpec, Runtime};
use super::{App, Entry, SpawnFailure, Unavailable};

impl App {
    /// A running runtime for a data-plane call, starting the init if an active sandbox has
    /// none (e.g. it died).
    pub(crate) async fn ensure_running(
        &self,
        entry: &Arc<Entry>,
    ) -> Result<Arc<Runtime>, Unavailable> {
        {
            let guard = entry.rt.read().await;
            if entry.is_deleted() {
                return Err(Unavailable::Gone);
            }
            if entry.status() != Status::Active {
                return Err(Unavailable::Paused);
            }
            if let Some(rt) = guard.as_ref().filter(|rt| !rt.is_dead()) {
                return Ok(rt.clone());
            }
        }
        let _ops = entry.ops.lock().await;
        if entry.is_deleted() {
            return Err(Unavailable::Gone);
        }
        if entry.status() != Status::Active {
            return Err(Unavailable::Paused);
        }
        let mut guard = entry.rt.write().await;
        if let Some(rt) = guard.as_ref().filter(|rt| !rt.is_dead()) {
            return Ok(rt.clone());
        }
        if let Some(old) = guard.take() {
            let _ = old.kill().await;
        }
        let rt = self
            .start_runtime(entry)
            .await
            .map_err(|e| Unavailable::Failed(e.message))?;
        *guard = Some(rt.clone());
        Ok(rt)
    }

    /// Spawns a command in an active sandbox. The runtime lock is held (for reading) while
    /// spawning, so a concurrent pause waits for the spawn instead of freezing it midway.
    pub(crate) async fn spawn(
        &self,
        entry: &Arc<Entry>,
        spec: CommandSpec,
    ) -> Result<Process, SpawnFailure> {
        for _ in 0..2 {
            {
                let guard = entry.rt.read().await;
                if entry.is_deleted() {
                    return Err(SpawnFailure::Unavailable(Unavailable::Gone));
                }
                if entry.status() != Status::Active {
                    return Err(SpawnFailure::Unavailable(Unavailable::Paused));
                }
                if let Some(rt) = guard.as_ref().filter(|rt| !rt.is_dead()) {
                    return rt.spawn(spec).await.map_err(SpawnFailure::Spawn);
                }
            }
            self.ensure_running(entry)
                .await
                .map_err(SpawnFailure::Unavailable)?;
        }
        Err(SpawnFailure::Unavailable(Unavailable::Failed(
            "the sandbox init keeps exiting".into(),
        )))
    }
}
