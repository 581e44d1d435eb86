//! Flavour primitives with the same names in both flavours: the transport, sleeping, locking.
//!
//! `crate::api` is compiled once against `rt::blocking` and once against `rt::nonblocking`.

#[cfg(feature = "blocking")]
pub(crate) mod blocking;
#[cfg(feature = "async")]
pub(crate) mod nonblocking;

use crate::error::Error;

/// Maps a transport error to the crate's error.
pub(crate) fn transport_error(what: &str, e: reqwest::Error) -> Error {
    if e.is_timeout() {
        Error::timeout(format!("{what} timed out"))
    } else {
        let msg = format!("{what}: {}", display_chain(&e));
        Error::connection(msg, Some(Box::new(e)))
    }
}

fn display_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        let t = inner.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = inner.source();
    }
    s
}

/// Starts a reqwest request (blocking or async builder: the same methods) from a [`Req`]:
/// method, URL, headers, and the buffered body.
///
/// [`Req`]: crate::wire::Req
#[cfg(any(feature = "blocking", feature = "async"))]
macro_rules! request_builder {
    ($client:expr, $req:expr) => {{
        let req = $req;
        let mut b = $client.request(req.method.clone(), &req.url);
        for (k, v) in &req.headers {
            b = b.header(*k, v);
        }
        match &req.body {
            crate::wire::Body::Empty => b,
            crate::wire::Body::Json(j) => b.body(j.clone()),
            crate::wire::Body::Bytes(bytes) => b
                .header("content-type", "application/octet-stream")
                .body(bytes.clone()),
        }
    }};
}
#[cfg(any(feature = "blocking", feature = "async"))]
pub(crate) use request_builder;

/// Appends one chunk of a buffered response, refusing to go past `cap` bytes.
#[cfg(any(feature = "blocking", feature = "async"))]
pub(crate) fn push_capped(
    body: &mut Vec<u8>,
    chunk: &[u8],
    cap: u64,
    what: &str,
) -> crate::Result<()> {
    if (body.len() + chunk.len()) as u64 > cap {
        return Err(Error::validation(format!(
            "{what}: response exceeds the limit of {cap} bytes"
        )));
    }
    body.extend_from_slice(chunk);
    Ok(())
}

/// Everything needed to open an `exec/connect` session.
pub(crate) struct ExecDial {
    pub(crate) url: String,
    /// Offered subprotocols (the second carries the access token: never log this).
    pub(crate) protocols: Vec<String>,
    /// Value of `X-Superserve-Sandbox-Id`, in shared-host mode.
    pub(crate) sandbox_id: Option<String>,
    pub(crate) connect_timeout: std::time::Duration,
    /// The start frame (JSON text).
    pub(crate) start: String,
    pub(crate) sink: crate::wire::exec::OutputSink,
}

#[cfg(any(feature = "blocking", feature = "async"))]
impl ExecDial {
    /// The handshake request.
    pub(crate) fn request(&self) -> crate::Result<tungstenite_request::http::Request<()>> {
        use tungstenite_request::client::IntoClientRequest;
        use tungstenite_request::http;
        let bad = |what: &str| Error::validation(format!("cannot open exec/connect: {what}"));
        let mut req = self
            .url
            .as_str()
            .into_client_request()
            .map_err(|_| bad("invalid URL"))?;
        let h = req.headers_mut();
        h.insert(
            "sec-websocket-protocol",
            http::HeaderValue::from_str(&self.protocols.join(", "))
                .map_err(|_| bad("the access token is not a valid header value"))?,
        );
        h.insert(
            "user-agent",
            http::HeaderValue::from_static(crate::wire::USER_AGENT),
        );
        if let Some(id) = &self.sandbox_id {
            h.insert(
                "x-superserve-sandbox-id",
                http::HeaderValue::from_str(id).map_err(|_| bad("invalid sandbox id"))?,
            );
        }
        Ok(req)
    }
}

#[cfg(all(feature = "async", not(feature = "blocking")))]
use tokio_tungstenite::tungstenite as tungstenite_request;
#[cfg(feature = "blocking")]
use tungstenite as tungstenite_request;

/// Describes a WebSocket failure without leaking the request (its headers carry the token).
pub(crate) fn ws_error_detail(e: &dyn std::fmt::Display) -> String {
    let s = e.to_string();
    if s.contains("token.") {
        "WebSocket handshake failed".to_owned()
    } else {
        s
    }
}

#[cfg(all(test, any(feature = "blocking", feature = "async")))]
mod tests {
    use super::*;

    #[test]
    fn buffered_responses_stop_at_the_cap() {
        let mut body = Vec::new();
        push_capped(&mut body, b"12345", 8, "GET /x").unwrap();
        push_capped(&mut body, b"678", 8, "GET /x").unwrap();
        assert_eq!(body, b"12345678", "exactly the cap is allowed");
        let err = push_capped(&mut body, b"9", 8, "GET /x").unwrap_err();
        assert!(matches!(err, Error::Validation(_)), "{err:?}");
        assert!(err
            .to_string()
            .contains("GET /x: response exceeds the limit of 8 bytes"));
        assert_eq!(body.len(), 8, "nothing past the cap was kept");
    }
}
