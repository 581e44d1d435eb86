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
    ///
    /// The start runs in a task of its own: a data-plane client that hangs up drops its
    /// request's future, and a start cut at one of its awaits would abandon an agent half set
    /// up, with the sandbox's disk mounted, beside the one the next call starts. The caller
    /// that gave up loses only the answer.
    pub(crate) async fn ensure_running(
        self: &Arc<Self>,
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
        let (app, entry) = (self.clone(), entry.clone());
        match tokio::spawn(async move { app.start_if_needed(&entry).await }).await {
            Ok(r) => r,
            Err(_) => {
                tracing::error!("a sandbox's start stopped before its end");
                Err(Unavailable::Failed(
                    "the sandbox's start stopped before its end".into(),
                ))
            }
        }
    }

    /// The slow path of [`ensure_running`](Self::ensure_running), under the sandbox's
    /// operation lock: a fresh runtime unless another call has just started one.
    async fn start_if_needed(&self, entry: &Arc<Entry>) -> Result<Arc<Runtime>, Unavailable> {
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
        self: &Arc<Self>,
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
