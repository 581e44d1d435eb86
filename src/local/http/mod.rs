//! HTTP plumbing shared by the listeners (control plane, data plane, preview proxy): the
//! accept loop ([`serve`]: HTTP/1 with upgrades, connection caps, timeouts, shedding, and the
//! ability to drop a connection on cue; [`serve_raw`] for the preview proxy, which frames
//! HTTP/1.1 itself), and the two API planes' services: their handlers' routes behind the
//! journal + fault middleware (and, on the control plane, the API-key check). Handlers never
//! import this module's planes; the preview proxy uses only its connection types.

mod serve;

use serve::ConnCtl;
pub(crate) use serve::{
    serve, serve_raw, ConnHooks, Limits, RawConn, DEFAULT_HEADER_READ_TIMEOUT, DEFAULT_IDLE_TIMEOUT,
};

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::{from_fn, from_fn_with_state, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use futures_util::StreamExt;

use super::app::App;
use super::error::ApiError;
use super::fault::{lock, CutAfter, Fault};
use super::journal::{Plane, RecordedRequest, Slot};
use super::{control, data, desktop_api};

/// The control plane: its routes (every change run to its end, see [`run_to_end`]) behind
/// the API-key check (all but `/health`), the request journal and the fault rules.
pub(crate) fn control_plane(app: Arc<App>) -> Router {
    control::router(app.clone())
        .layer(from_fn(run_to_end))
        .layer(from_fn_with_state(app.clone(), require_api_key))
        .layer(from_fn_with_state((app, Plane::Control), observe))
}

/// The data plane: its routes and the desktop service's (each authorised by the sandbox's
/// access token) behind the request journal and the fault rules.
pub(crate) fn data_plane(app: Arc<App>) -> Router {
    data::routes()
        .route(desktop_api::ROUTE, post(desktop_api::call))
        .with_state(app.clone())
        .layer(from_fn_with_state((app, Plane::Data), observe))
}

fn capture_body(req: &mut Request, app: Arc<App>, slot: Slot) {
    let body = std::mem::replace(req.body_mut(), Body::empty());
    let stream = body.into_data_stream().map(move |chunk| {
        if let Ok(bytes) = &chunk {
            app.journal.capture(&slot, bytes);
        }
        chunk
    });
    *req.body_mut() = Body::from_stream(stream);
}

fn is_streaming(plane: Plane, method: &str, path: &str) -> bool {
    plane == Plane::Data
        && ((method == "POST" && path == "/exec/stream")
            || (method == "GET" && path == "/exec/connect"))
}

/// Journals the request, applies a matching fault rule, and records the response status.
async fn observe(
    State((app, plane)): State<(Arc<App>, Plane)>,
    mut req: Request,
    next: Next,
) -> Response {
    let path = req.uri().path().to_owned();
    if plane == Plane::Control && path.starts_with("/_local/") {
        return next.run(req).await;
    }
    let method = req.method().as_str().to_owned();
    let headers = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let slot = app.journal.record(RecordedRequest {
        plane,
        method: method.clone(),
        path: path.clone(),
        query: req.uri().query().unwrap_or("").to_owned(),
        headers,
        body: Vec::new(),
        status: 0,
    });
    // bodies that carry secret values are never kept
    let carries_secret = plane == Plane::Control
        && (path == "/secrets" || path.starts_with("/secrets/"))
        && (method == "POST" || method == "PATCH");
    if carries_secret {
        app.journal.capture(&slot, b"<redacted: secret value>");
    } else {
        capture_body(&mut req, app.clone(), slot.clone());
    }
    let fault = app
        .faults
        .take(&method, &path, is_streaming(plane, &method, &path));
    let resp = match fault {
        None => next.run(req).await,
        Some(Fault::CutStream { after_events }) => {
            req.extensions_mut().insert(CutAfter(after_events));
            next.run(req).await
        }
        Some(Fault::DelayResponse { millis }) => {
            let resp = next.run(req).await;
            tokio::time::sleep(std::time::Duration::from_millis(millis.min(600_000))).await;
            resp
        }
        Some(Fault::DropConnection) => {
            if let Some(ctl) = req.extensions().get::<ConnCtl>() {
                ctl.drop_connection();
                // The connection task drops this request (and the socket) now.
                std::future::pending::<()>().await;
            }
            ApiError::internal("cannot drop this connection").into_response()
        }
        Some(Fault::RateLimited { retry_after_secs }) => {
            let mut e = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "rate limit exceeded (injected fault)",
            );
            e.retry_after = Some(retry_after_secs);
            e.into_response()
        }
        Some(Fault::Status { status, code }) => {
            let status = StatusCode::from_u16(status)
                .ok()
                .filter(|s| (200..=599).contains(&s.as_u16()))
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            ApiError::new(status, &code, format!("injected fault: {status}")).into_response()
        }
    };
    lock(&slot).status = resp.status().as_u16();
    resp
}

/// Runs a control-plane request that changes something (any method but `GET` and `HEAD`) in
/// a task of its own, so that it ends as it would have for a client that waited. A client
/// that hangs up ends its connection, and the connection's future with it: a create, delete,
/// pause or resume cut at one of its awaits would leave a sandbox half made ("starting" for
/// ever, with a cgroup no record owns). Its answer goes nowhere; the change is whole.
async fn run_to_end(req: Request, next: Next) -> Response {
    if matches!(*req.method(), Method::GET | Method::HEAD) {
        return next.run(req).await;
    }
    match tokio::spawn(next.run(req)).await {
        Ok(resp) => resp,
        // no panic payload in the answer or the log: it could hold anything the handler held
        Err(_) => {
            tracing::error!("a control-plane handler stopped before answering");
            ApiError::internal("the request's handler stopped before answering").into_response()
        }
    }
}

/// Control-plane authentication (everything but `/health`).
async fn require_api_key(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    if req.uri().path() == "/health" {
        return next.run(req).await;
    }
    let ok = req
        .headers()
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|k| super::ident::ct_eq(k.trim(), &app.api_key));
    if ok {
        next.run(req).await
    } else {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "auth_failed",
            "missing or invalid API key (X-API-Key)",
        )
        .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Answers one request through `router`, the way the listener does.
    async fn answer(mut router: Router, method: Method) -> (StatusCode, String) {
        let req = Request::builder()
            .method(method)
            .uri("/op")
            .body(Body::empty())
            .unwrap();
        std::future::poll_fn(|cx| tower_service::Service::<Request>::poll_ready(&mut router, cx))
            .await
            .unwrap();
        let resp = tower_service::Service::call(&mut router, req)
            .await
            .unwrap();
        let status = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn a_change_runs_to_its_end_and_a_failed_one_is_a_500_without_its_payload() {
        // the handler waits for `go`, then says it `ended`
        let (go, ended) = (
            Arc::new(tokio::sync::Notify::new()),
            Arc::new(tokio::sync::Notify::new()),
        );
        let (wait, done) = (go.clone(), ended.clone());
        let router = Router::new()
            .route(
                "/op",
                post(move || async move {
                    wait.notified().await;
                    done.notify_one();
                    "made"
                })
                .delete(|| async {
                    if true {
                        panic!("secret-ish payload");
                    }
                    "never"
                }),
            )
            .layer(from_fn(run_to_end));
        // the caller gives up before the handler can answer; the handler still runs to its end
        let cut = tokio::time::timeout(
            std::time::Duration::from_millis(10),
            answer(router.clone(), Method::POST),
        )
        .await;
        assert!(cut.is_err(), "the caller gave up before the answer");
        go.notify_one();
        tokio::time::timeout(std::time::Duration::from_secs(10), ended.notified())
            .await
            .expect("the handler ran to its end after its caller was gone");
        go.notify_one();
        assert_eq!(
            answer(router.clone(), Method::POST).await,
            (StatusCode::OK, "made".to_owned())
        );
        let (status, body) = answer(router, Method::DELETE).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(body.contains("stopped before answering"), "{body}");
        assert!(!body.contains("secret-ish"), "{body}");
    }
}
