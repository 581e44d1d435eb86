//! Control-plane routes (protocol.md §3.1–3.3) and the `/_local/*` admin routes.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;
use serde::de::DeserializeOwned;

use super::app::App;
use super::data::{sse_event, sse_response};
use super::error::ApiError;
use super::fault::FaultRule;
use super::journal::{redact_header, Plane};
use super::model::{Record, Status, KNOWN_STATUSES};
use super::reply::{form_pairs, json};
use super::secrets;
use super::snapshots;
use super::store::{self, decode_cursor, Before, EventQuery};
use super::templates::BuildStatus;
use super::time::parse_rfc3339;
use super::time::{format_rfc3339, now_ns};

/// The control-plane router.
pub(crate) fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/sandboxes", post(create).get(list))
        .route("/sandboxes/{id}", get(get_one).patch(patch).delete(remove))
        .route("/sandboxes/{id}/activate", post(activate))
        .route("/sandboxes/{id}/pause", post(pause))
        .route("/sandboxes/{id}/resume", post(resume))
        .route("/sandboxes/{id}/secrets", post(bind_secret))
        .route("/sandboxes/{id}/secrets/{env_key}", delete(unbind_secret))
        .route("/sandboxes/{id}/network", get(network_log))
        .route("/sandboxes/{id}/snapshot", post(create_snapshot))
        .route("/sandboxes/{id}/snapshots", get(list_snapshots))
        .route(
            "/snapshots/{sid}",
            get(get_snapshot)
                .patch(rename_snapshot)
                .delete(delete_snapshot),
        )
        .route("/templates", post(create_template).get(list_templates))
        .route(
            "/templates/{*rest}",
            get(template_get)
                .post(template_post)
                .delete(template_delete),
        )
        .route("/secrets", post(create_secret).get(list_secrets))
        .route(
            "/secrets/{name}",
            get(get_secret).patch(rotate_secret).delete(delete_secret),
        )
        .route("/secrets/{name}/audit", get(secret_audit))
        .route("/secrets/{name}/sandboxes", get(secret_sandboxes))
        .route("/providers", get(providers))
        .merge(super::preview_api::routes())
        .route("/_local/faults", post(add_fault).delete(clear_faults))
        .route("/_local/requests", get(requests).delete(clear_requests))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(app)
}

async fn not_found() -> ApiError {
    ApiError::not_found("route not found")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed for this route",
    )
}

async fn health() -> Response {
    json(
        StatusCode::OK,
        &serde_json::json!({"status": "ok", "version": "0.1.0"}),
    )
}

/// Parses a strict JSON body.
fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request("a JSON request body is required"));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid request body: {e}")))
}

fn view(rec: &Record, with_token: bool) -> Response {
    json(StatusCode::OK, &rec.view(with_token))
}

async fn create(State(app): State<Arc<App>>, body: Bytes) -> Result<Response, ApiError> {
    let body = parse_body(&body)?;
    let rec = app.create(body).await?;
    Ok(json(StatusCode::CREATED, &rec.view(true)))
}

async fn list(
    State(app): State<Arc<App>>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let mut metadata: BTreeMap<String, String> = BTreeMap::new();
    let mut statuses: Option<Vec<String>> = None;
    let mut limit: Option<usize> = None;
    let mut offset = 0usize;
    for (k, v) in form_pairs(query.as_deref().unwrap_or("")) {
        if let Some(key) = k.strip_prefix("metadata.") {
            if metadata.insert(key.to_owned(), v).is_some() {
                return Err(ApiError::bad_request(format!(
                    "metadata filter {key:?} is given more than once"
                )));
            }
            continue;
        }
        match k.as_str() {
            "status" => {
                let list: Vec<String> = v
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect();
                if let Some(bad) = list.iter().find(|s| !KNOWN_STATUSES.contains(&s.as_str())) {
                    return Err(ApiError::bad_request(format!("unknown status {bad:?}")));
                }
                statuses.get_or_insert_with(Vec::new).extend(list);
            }
            "limit" => {
                limit = Some(v.parse().map_err(|_| {
                    ApiError::bad_request(format!(
                        "limit must be a non-negative integer, got {v:?}"
                    ))
                })?)
            }
            "offset" => {
                offset = v.parse().map_err(|_| {
                    ApiError::bad_request(format!(
                        "offset must be a non-negative integer, got {v:?}"
                    ))
                })?
            }
            _ => {}
        }
    }
    super::model::validate_metadata(&metadata).map_err(ApiError::bad_request)?;
    let mut out: Vec<Record> = app
        .all()
        .into_iter()
        .map(|e| e.rec())
        .filter(|r| {
            metadata
                .iter()
                .all(|(k, v)| r.metadata.get(k).is_some_and(|have| have == v))
        })
        .filter(|r| match &statuses {
            None => true,
            Some(list) => list.iter().any(|s| s == r.status.as_str()),
        })
        .collect();
    // newest first
    out.sort_by_key(|r| std::cmp::Reverse(r.seq));
    let page: Vec<_> = out
        .iter()
        .skip(offset)
        .take(limit.unwrap_or(usize::MAX))
        .map(|r| r.view(false))
        .collect();
    Ok(json(StatusCode::OK, &page))
}

async fn get_one(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(view(&app.record(&id)?, false))
}

async fn patch(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    // unknown sandbox first: a 404 beats a body complaint
    app.record(&id)?;
    let body = parse_body(&body)?;
    app.patch(&id, body).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn remove(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    app.delete(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn activate(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let rec = app.activate(&id).await?;
    Ok(view(&rec, true))
}

async fn pause(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let prefer_async = headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim().eq_ignore_ascii_case("respond-async"));
    let done = app.pause(&id, !prefer_async).await?;
    if done {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Ok(json(
            StatusCode::ACCEPTED,
            &serde_json::json!({"status": "pausing"}),
        ))
    }
}

async fn resume(State(app): State<Arc<App>>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let rec = app.resume(&id).await?;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({
            "id": rec.id,
            "status": Status::Active.as_str(),
            "access_token": rec.access_token,
        }),
    ))
}

async fn bind_secret(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    app.record(&id)?;
    let body = parse_body(&body)?;
    let binding = app.bind_secret(&id, body).await?;
    Ok(json(StatusCode::CREATED, &binding.view()))
}

async fn unbind_secret(
    State(app): State<Arc<App>>,
    Path((id, env_key)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    app.unbind_secret(&id, &env_key).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Parses the network-log query (protocol.md §3.3).
pub(crate) fn parse_network_query(query: &str) -> Result<EventQuery, ApiError> {
    let mut q = EventQuery {
        limit: 100,
        before: None,
        since_ns: None,
        verdict: None,
    };
    for (k, v) in form_pairs(query) {
        match k.as_str() {
            "limit" => {
                q.limit = match v.parse::<usize>() {
                    Ok(n) if (1..=1000).contains(&n) => n,
                    _ => {
                        return Err(ApiError::bad_request(format!(
                            "limit must be an integer between 1 and 1000, got {v:?}"
                        )))
                    }
                }
            }
            "before" => {
                q.before = Some(
                    decode_cursor(&v)
                        .or_else(|| parse_rfc3339(&v).map(Before::Time))
                        .ok_or_else(|| {
                            ApiError::bad_request(format!(
                                "before must be a cursor or an RFC 3339 timestamp, got {v:?}"
                            ))
                        })?,
                )
            }
            "since" => {
                q.since_ns = Some(parse_rfc3339(&v).ok_or_else(|| {
                    ApiError::bad_request(format!("since must be an RFC 3339 timestamp, got {v:?}"))
                })?)
            }
            "verdict" => match v.as_str() {
                "allowed" | "blocked" | "failed" => q.verdict = Some(v),
                _ => {
                    return Err(ApiError::bad_request(format!(
                        "verdict must be allowed, blocked or failed, got {v:?}"
                    )))
                }
            },
            _ => {}
        }
    }
    Ok(q)
}

async fn network_log(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    app.record(&id)?;
    let q = parse_network_query(query.as_deref().unwrap_or(""))?;
    let page = app
        .db
        .call(move |c| store::query_network_events(c, &id, &q))
        .await?;
    Ok(json(StatusCode::OK, &page))
}

async fn create_snapshot(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    // an empty body asks for an unnamed snapshot without a key
    let body: snapshots::CreateBody = if body.iter().all(u8::is_ascii_whitespace) {
        snapshots::CreateBody::default()
    } else {
        parse_body(&body)?
    };
    let (row, status) = app.snapshot(&id, body).await?;
    Ok(json(status, &row.view()))
}

/// `limit` and `offset` of a list query.
fn paging(query: Option<&str>) -> Result<(Option<usize>, usize), ApiError> {
    let (mut limit, mut offset) = (None, 0);
    for (k, v) in form_pairs(query.unwrap_or("")) {
        let n = || {
            v.parse::<usize>()
                .map_err(|_| ApiError::bad_request(format!("{k} must be a non-negative integer")))
        };
        match k.as_str() {
            "limit" => limit = Some(n()?),
            "offset" => offset = n()?,
            _ => {}
        }
    }
    Ok((limit, offset))
}

async fn list_snapshots(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let (limit, offset) = paging(query.as_deref())?;
    let rows = app.list_snapshots(&id, limit, offset).await?;
    let views: Vec<serde_json::Value> = rows.iter().map(snapshots::SnapshotRow::view).collect();
    Ok(json(StatusCode::OK, &views))
}

async fn get_snapshot(
    State(app): State<Arc<App>>,
    Path(sid): Path<String>,
) -> Result<Response, ApiError> {
    let row = app.get_snapshot(&sid).await?;
    Ok(json(StatusCode::OK, &row.view()))
}

async fn rename_snapshot(
    State(app): State<Arc<App>>,
    Path(sid): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body = parse_body(&body)?;
    let row = app.rename_snapshot(&sid, body).await?;
    Ok(json(StatusCode::OK, &row.view()))
}

async fn delete_snapshot(
    State(app): State<Arc<App>>,
    Path(sid): Path<String>,
) -> Result<StatusCode, ApiError> {
    app.delete_snapshot(&sid).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn create_template(State(app): State<Arc<App>>, body: Bytes) -> Result<Response, ApiError> {
    let body = parse_body(&body)?;
    let v = app.create_template(body).await?;
    Ok(json(StatusCode::ACCEPTED, &v))
}

async fn list_templates(
    State(app): State<Arc<App>>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let prefix = form_pairs(query.as_deref().unwrap_or(""))
        .into_iter()
        .find(|(k, _)| k == "name_prefix")
        .map(|(_, v)| v);
    Ok(json(StatusCode::OK, &app.list_templates(prefix).await?))
}

/// What a path under `/templates/` names (template names may hold `/`).
enum TemplatePath {
    Template(String),
    Builds(String),
    Build(String, String),
    Logs(String, String),
}

fn template_path(rest: &str) -> Result<TemplatePath, ApiError> {
    let segs: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
    let n = segs.len();
    let name = |k: usize| -> Result<String, ApiError> {
        let s = segs[..k].join("/");
        if s.is_empty() {
            Err(ApiError::not_found("template not found"))
        } else {
            Ok(s)
        }
    };
    Ok(match segs.as_slice() {
        [.., "builds", bid, "logs"] if n >= 4 => {
            TemplatePath::Logs(name(n - 3)?, (*bid).to_owned())
        }
        [.., "builds", bid] if n >= 3 => TemplatePath::Build(name(n - 2)?, (*bid).to_owned()),
        [.., "builds"] if n >= 2 => TemplatePath::Builds(name(n - 1)?),
        _ => TemplatePath::Template(name(n)?),
    })
}

async fn template_get(
    State(app): State<Arc<App>>,
    Path(rest): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    match template_path(&rest)? {
        TemplatePath::Template(t) => Ok(json(StatusCode::OK, &app.get_template(&t).await?)),
        TemplatePath::Builds(t) => {
            let (limit, _) = paging(query.as_deref())?;
            let rows = app.list_builds(&t, limit.unwrap_or(20)).await?;
            let views: Vec<serde_json::Value> = rows.iter().map(|b| b.view()).collect();
            Ok(json(StatusCode::OK, &views))
        }
        TemplatePath::Build(t, b) => Ok(json(StatusCode::OK, &app.get_build(&t, &b).await?.view())),
        TemplatePath::Logs(t, b) => build_log_stream(app, &t, &b).await,
    }
}

async fn template_post(
    State(app): State<Arc<App>>,
    Path(rest): Path<String>,
) -> Result<Response, ApiError> {
    match template_path(&rest)? {
        TemplatePath::Builds(t) => {
            let (b, status) = app.rebuild(&t).await?;
            Ok(json(status, &b.view()))
        }
        _ => Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "method not allowed for this route",
        )),
    }
}

async fn template_delete(
    State(app): State<Arc<App>>,
    Path(rest): Path<String>,
) -> Result<StatusCode, ApiError> {
    match template_path(&rest)? {
        TemplatePath::Template(t) => app.delete_template(&t).await?,
        TemplatePath::Build(t, b) => app.cancel_build(&t, &b).await?,
        _ => {
            return Err(ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed for this route",
            ))
        }
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /templates/{id}/builds/{bid}/logs`: the log from its start, then live, with a
/// `system` notice every 2 s while the build waits, closed after the terminal event.
async fn build_log_stream(app: Arc<App>, template: &str, bid: &str) -> Result<Response, ApiError> {
    let tid = app.template_id(template).await?;
    // unknown builds are a 404 before the stream starts
    app.build_logs(&tid, bid, i64::MAX).await?;
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let bid = bid.to_owned();
    tokio::spawn(async move {
        let mut last = 0i64;
        let mut queued_at: Option<std::time::Instant> = None;
        loop {
            let Ok((lines, b)) = app.build_logs(&tid, &bid, last).await else {
                return;
            };
            let drained = lines.is_empty();
            for l in lines {
                last = l.seq;
                let ev = serde_json::json!({
                    "timestamp": format_rfc3339(l.ts_ns),
                    "stream": l.stream,
                    "text": l.text,
                    "finished": false,
                });
                if tx.send(Ok(sse_event(&ev))).await.is_err() {
                    return;
                }
            }
            if drained && b.status.is_terminal() {
                let ev = serde_json::json!({
                    "timestamp": format_rfc3339(now_ns()),
                    "stream": "system",
                    "text": format!("build {}", b.status.as_str()),
                    "finished": true,
                    "status": b.status.as_str(),
                });
                let _ = tx.send(Ok(sse_event(&ev))).await;
                return;
            }
            if b.status == BuildStatus::Pending
                && queued_at.is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(2))
            {
                queued_at = Some(std::time::Instant::now());
                let ev = serde_json::json!({
                    "timestamp": format_rfc3339(now_ns()),
                    "stream": "system",
                    "text": "build queued, waiting for a free build slot",
                    "finished": false,
                });
                if tx.send(Ok(sse_event(&ev))).await.is_err() {
                    return;
                }
            }
            if drained {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    });
    Ok(sse_response(rx))
}

async fn add_fault(State(app): State<Arc<App>>, body: Bytes) -> Result<StatusCode, ApiError> {
    let rule: FaultRule = parse_body(&body)?;
    app.faults.push(rule);
    Ok(StatusCode::NO_CONTENT)
}

async fn clear_faults(State(app): State<Arc<App>>) -> StatusCode {
    app.faults.clear();
    StatusCode::NO_CONTENT
}

async fn requests(State(app): State<Arc<App>>) -> Response {
    let list: Vec<serde_json::Value> = app
        .journal
        .snapshot()
        .into_iter()
        .map(|r| {
            serde_json::json!({
                "plane": match r.plane { Plane::Control => "control", Plane::Data => "data" },
                "method": r.method,
                "path": r.path,
                "query": r.query,
                "status": r.status,
                "headers": r.headers.iter().map(|(k, v)| (k.clone(), redact_header(k, v))).collect::<Vec<_>>(),
                "body": String::from_utf8_lossy(&r.body),
            })
        })
        .collect();
    json(StatusCode::OK, &list)
}

async fn clear_requests(State(app): State<Arc<App>>) -> StatusCode {
    app.journal.clear();
    StatusCode::NO_CONTENT
}

/// Parses a body that may carry a secret value: errors never quote the input.
fn parse_secret_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request("a JSON request body is required"));
    }
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!(
            "invalid request body (line {}, column {}): malformed JSON, an unknown field or a \
             field of the wrong type",
            e.line(),
            e.column()
        ))
    })
}

async fn create_secret(State(app): State<Arc<App>>, body: Bytes) -> Result<Response, ApiError> {
    let body: secrets::CreateBody = parse_secret_body(&body)?;
    let rec = app.secrets.create(body).await?;
    Ok(json(StatusCode::CREATED, &rec.view()))
}

async fn list_secrets(State(app): State<Arc<App>>) -> Result<Response, ApiError> {
    let all: Vec<serde_json::Value> = app.secrets.list().await?.iter().map(|r| r.view()).collect();
    Ok(json(StatusCode::OK, &all))
}

async fn get_secret(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    Ok(json(StatusCode::OK, &app.secrets.get(&name).await?.view()))
}

async fn rotate_secret(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body: secrets::RotateBody = parse_secret_body(&body)?;
    Ok(json(
        StatusCode::OK,
        &app.secrets.rotate(&name, body).await?.view(),
    ))
}

async fn delete_secret(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    app.secrets.delete(&name).await?;
    app.revoke_bindings_of(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn secret_audit(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let q = secrets::parse_audit_query(form_pairs(query.as_deref().unwrap_or("")))
        .map_err(ApiError::bad_request)?;
    let mut events = app.secrets.audit(&name, q).await?;
    // the sandbox's current name; null once it is deleted
    for e in &mut events {
        let live = e["sandbox_id"]
            .as_str()
            .and_then(|id| app.get(id))
            .map(|entry| entry.rec().name);
        e["sandbox_name"] = live.map_or(serde_json::Value::Null, serde_json::Value::String);
    }
    Ok(json(StatusCode::OK, &events))
}

async fn secret_sandboxes(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    app.secrets.get(&name).await?;
    let out: Vec<serde_json::Value> = app
        .bindings_of(&name)
        .into_iter()
        .map(|(id, sb_name, env_key, status)| {
            serde_json::json!({
                "sandbox_id": id,
                "sandbox_name": sb_name,
                "env_key": env_key,
                "status": status.as_str(),
            })
        })
        .collect();
    Ok(json(StatusCode::OK, &out))
}

async fn providers() -> Response {
    json(StatusCode::OK, &secrets::providers_view())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_query_validation() {
        assert!(parse_network_query("limit=0").is_err());
        assert!(parse_network_query("limit=abc").is_err());
        assert!(parse_network_query("verdict=maybe").is_err());
        assert!(parse_network_query("before=yesterday").is_err());
        assert!(parse_network_query("since=2026-01-01").is_err());
        let q =
            parse_network_query("limit=100&verdict=blocked").unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(q.limit, 100);
        assert_eq!(q.verdict.as_deref(), Some("blocked"));
        let q = parse_network_query("before=2026-01-01T00%3A00%3A00Z&since=2025-12-31T00:00:00Z")
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert!(matches!(q.before, Some(Before::Time(_))));
        assert!(q.since_ns.is_some());
        let q = parse_network_query(&format!("before={}", store::encode_cursor(5, 7)))
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(q.before, Some(Before::Cursor { ts_ns: 5, id: 7 }));
    }
}
