//! Control-plane endpoints 12–16 (protocol.md §3.4): list, publish, unpublish, mint and
//! rotate. None of them resumes a sandbox; they work in every state.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{delete, get, post};
use axum::Router;
use serde::Deserialize;

use super::app::App;
use super::error::ApiError;
use super::preview::{
    check_port, Access, PortState, MAX_TOKEN_SECONDS, TOKEN_HEADER, TOKEN_QUERY_PARAM,
};
use super::reply::json;
use super::time::{format_rfc3339, now_ns};

/// The routes, merged into the control-plane router (which authenticates them).
pub(crate) fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/sandboxes/{id}/preview-ports", get(list).post(publish))
        .route("/sandboxes/{id}/preview-ports/{port}", delete(unpublish))
        .route("/sandboxes/{id}/preview-ports/{port}/token", post(mint))
        .route(
            "/sandboxes/{id}/preview-ports/{port}/token/rotate",
            post(rotate),
        )
}

/// `POST …/preview-ports` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishBody {
    port: Option<i64>,
    #[serde(default)]
    access: Option<String>,
}

/// `POST …/token` body.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenBody {
    #[serde(default)]
    expires_in_seconds: Option<i64>,
}

fn port_json(port: u16, s: PortState) -> serde_json::Value {
    serde_json::json!({
        "port": port,
        "token_version": s.version,
        "access": s.access.as_str(),
    })
}

/// The sandbox's `preview_access` (404 for an unknown sandbox).
fn preview_access(app: &App, id: &str) -> Result<String, ApiError> {
    Ok(app.record(id)?.preview_access)
}

fn parse_port(raw: &str) -> Result<u16, ApiError> {
    let n: i64 = raw.parse().map_err(|_| {
        ApiError::bad_request(format!("preview port must be an integer, got {raw:?}"))
    })?;
    check_port(n).map_err(ApiError::bad_request)
}

fn not_published(port: u16) -> ApiError {
    ApiError::not_found(format!("port {port} is not published"))
}

async fn list(State(app): State<Arc<App>>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let preview_access = preview_access(&app, &id)?;
    let ports: Vec<_> = app
        .previews
        .published(&id)
        .into_iter()
        .map(|(p, s)| port_json(p, s))
        .collect();
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "preview_access": preview_access, "ports": ports }),
    ))
}

async fn publish(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let preview_access = preview_access(&app, &id)?;
    let body: PublishBody = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("invalid request body: {e}")))?;
    let port = check_port(
        body.port
            .ok_or_else(|| ApiError::bad_request("port is required"))?,
    )
    .map_err(ApiError::bad_request)?;
    let access = match body.access.as_deref() {
        None => None,
        Some(a) => Some(Access::parse(a).ok_or_else(|| {
            ApiError::bad_request(format!(
                "access must be \"public\" or \"private\", got {a:?}"
            ))
        })?),
    };
    let state = app
        .previews
        .publish(&id, port, access, Access::default_for(&preview_access))
        .await?;
    // a sandbox deleted meanwhile leaves nothing behind
    if app.get(&id).is_none() {
        app.previews.forget(&id).await?;
        return Err(ApiError::not_found("sandbox not found"));
    }
    Ok(json(StatusCode::OK, &port_json(port, state)))
}

async fn unpublish(
    State(app): State<Arc<App>>,
    Path((id, port)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    preview_access(&app, &id)?;
    let port = parse_port(&port)?;
    app.previews.unpublish(&id, port).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A `PreviewToken` answer for `port` at `state`, expiring after `ttl` seconds.
fn token_answer(
    app: &App,
    id: &str,
    preview_access: &str,
    port: u16,
    state: PortState,
    ttl: Option<i64>,
) -> Response {
    let now_s = now_ns().div_euclid(1_000_000_000);
    let exp = ttl.map(|t| now_s.saturating_add(t));
    let token = app.previews.mint(id, port, state.version, exp);
    let mut body = serde_json::json!({
        "token": token,
        "port": port,
        "header": TOKEN_HEADER,
        "query_param": TOKEN_QUERY_PARAM,
        "token_version": state.version,
        "access": state.access.as_str(),
        "preview_access": preview_access,
    });
    if let Some(exp) = exp {
        body["expires_at"] = format_rfc3339(exp.saturating_mul(1_000_000_000)).into();
    }
    json(StatusCode::OK, &body)
}

async fn mint(
    State(app): State<Arc<App>>,
    Path((id, port)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let preview_access = preview_access(&app, &id)?;
    let port = parse_port(&port)?;
    let body: TokenBody = if body.iter().all(u8::is_ascii_whitespace) {
        TokenBody::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("invalid request body: {e}")))?
    };
    let max = i64::try_from(MAX_TOKEN_SECONDS).unwrap_or(i64::MAX);
    if let Some(t) = body.expires_in_seconds {
        if !(1..=max).contains(&t) {
            return Err(ApiError::bad_request(format!(
                "expires_in_seconds must be between 1 and {max}, got {t}"
            )));
        }
    }
    let state = app
        .previews
        .port(&id, port)
        .filter(|s| s.published)
        .ok_or_else(|| not_published(port))?;
    Ok(token_answer(
        &app,
        &id,
        &preview_access,
        port,
        state,
        body.expires_in_seconds,
    ))
}

async fn rotate(
    State(app): State<Arc<App>>,
    Path((id, port)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let preview_access = preview_access(&app, &id)?;
    let port = parse_port(&port)?;
    let state = app
        .previews
        .rotate(&id, port)
        .await?
        .ok_or_else(|| not_published(port))?;
    Ok(token_answer(&app, &id, &preview_access, port, state, None))
}
