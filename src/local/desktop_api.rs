//! The desktop's data-plane handler (protocol.md §4.6):
//! `POST /superserve.boxd.v1.DesktopService/<Method>`, Connect RPC over JSON, for sandboxes
//! made from `superserve/desktop` (see `desktop/mod.rs`). Routing and authorisation are the
//! data plane's (`X-Superserve-Sandbox-Id`, `X-Access-Token`, their plain answers); what
//! comes after is a Connect error, `{"code","message"}` with the Connect HTTP status.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::app::{App, Entry};
use super::data::{authorize, unavailable};
use super::desktop::rpc::{self, ConnectError};
use super::desktop::{self, Desktop};
use super::reply::json;
use super::runtime::Runtime;

/// The route of the service's methods.
pub(crate) const ROUTE: &str = "/superserve.boxd.v1.DesktopService/{method}";

/// The desktop of `entry` running on `rt`: the one booted with it, or a fresh one when it
/// belongs to an earlier runtime (or its boot failed).
async fn desktop_of(entry: &Entry, rt: &Arc<Runtime>) -> Result<Arc<Desktop>, ConnectError> {
    let mut slot = entry.desktop.lock().await;
    if let Some(d) = slot.as_ref().filter(|d| d.runs_on(rt)) {
        return Ok(d.clone());
    }
    let d = Desktop::boot(rt).await?;
    *slot = Some(d.clone());
    Ok(d)
}

/// `POST /superserve.boxd.v1.DesktopService/{method}`.
pub(crate) async fn call(
    State(app): State<Arc<App>>,
    Path(method): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let entry = match authorize(&app, &headers, None, false) {
        Ok(e) => e,
        Err(r) => return *r,
    };
    if let Err(e) = rpc::check_call(&method, &headers) {
        return e.into_response();
    }
    if !desktop::is_template(&entry.rec().template) {
        return rpc::no_desktop().into_response();
    }
    // the whole body is checked before anything reaches the display
    let call = match rpc::parse(&method, &body) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    if let rpc::Call::Resize(w, h) = &call {
        if let Err(msg) = desktop::check_display_memory(*w, *h, entry.rec().memory_mib) {
            return ConnectError::new("failed_precondition", msg).into_response();
        }
    }
    let rt = match app.ensure_running(&entry).await {
        Ok(rt) => rt,
        Err(u) => return unavailable(u),
    };
    let desktop = match desktop_of(&entry, &rt).await {
        Ok(d) => d,
        Err(e) => return e.into_response(),
    };
    match rpc::execute(&desktop, call).await {
        Ok(v) => json(StatusCode::OK, &v),
        Err(e) => e.into_response(),
    }
}
