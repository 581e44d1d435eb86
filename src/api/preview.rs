//! Preview ports: how a port inside a sandbox becomes a URL (protocol §1.5, §3.4).

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Map, Value};

use super::{dual, rt, Sandbox};
use crate::error::{Error, Result, TimeoutKind};
use crate::models::{
    check_preview_port, PreviewAccessPolicy, PreviewPortList, PreviewToken, PublishedPreviewPort,
};
use crate::options::{RunOptions, WaitOptions};

/// Longest lifetime of a preview token.
const MAX_TOKEN_SECS: u64 = 604_800;
/// Lifetime of the token in a signed URL unless one is given.
const SIGNED_URL_SECS: u64 = 60;

/// Probes a port from inside the sandbox: exit 0 once it answers, 1 while it does not, 3 when
/// the sandbox has no tool to probe with. `SS_PORT` and `SS_PATH` come from the environment
/// (never interpolated into the script).
const PROBE: &str = r#"
if command -v python3 >/dev/null 2>&1; then
  exec python3 -c '
import os, socket, sys, urllib.request, urllib.error
port, path = int(os.environ["SS_PORT"]), os.environ.get("SS_PATH", "")
try:
    if not path:
        socket.create_connection(("127.0.0.1", port), 2).close()
        sys.exit(0)
    try:
        code = urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path), timeout=2).status
    except urllib.error.HTTPError as e:
        code = e.code
    sys.exit(0 if code < 500 else 1)
except Exception:
    sys.exit(1)
'
fi
if [ -n "$SS_PATH" ] && command -v curl >/dev/null 2>&1; then
  code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$SS_PORT$SS_PATH")
  [ "$code" -ge 100 ] 2>/dev/null && [ "$code" -lt 500 ] && exit 0
  exit 1
fi
if [ -z "$SS_PATH" ] && command -v bash >/dev/null 2>&1; then
  exec bash -c '(exec 3<>"/dev/tcp/127.0.0.1/$SS_PORT") 2>/dev/null'
fi
exit 3
"#;

fn token_body(expires_in: Option<Duration>) -> Result<Value> {
    let mut m = Map::new();
    if let Some(d) = expires_in {
        let secs = d.as_secs();
        if !(1..=MAX_TOKEN_SECS).contains(&secs) {
            return Err(Error::invalid(format!(
                "a preview token lives 1 s to {MAX_TOKEN_SECS} s (7 days); got {secs} s"
            )));
        }
        m.insert("expires_in_seconds".into(), json!(secs));
    }
    Ok(Value::Object(m))
}

#[dual]
impl Sandbox {
    /// The URL of `port` of this sandbox (`https://{port}-{id}.{sandbox host}`, or the
    /// configured preview address's form). Pure: no request is sent, in both flavours. Fails
    /// with [`Error::InvalidInput`] for a port outside 1024–65535 or the reserved 49983.
    ///
    /// Under `public` and `private` policies the port must be published first
    /// ([`publish_preview_port`](Self::publish_preview_port)); a private port also needs a
    /// credential ([`get_preview_token`](Self::get_preview_token) or
    /// [`get_signed_preview_url`](Self::get_signed_preview_url)).
    pub fn get_preview_url(&self, port: u16) -> Result<String> {
        check_preview_port(port)?;
        Ok(self.config().preview_url_for(self.id(), port))
    }

    /// The sandbox's preview policy and published ports. Does not resume the sandbox.
    #[tracing::instrument(name = "sandbox.list_preview_ports", level = "debug", skip_all, fields(sandbox_id = self.id()))]
    pub async fn list_preview_ports(&self) -> Result<PreviewPortList> {
        let (api, path) = self.control_path("/preview-ports")?;
        let resp = api.send(&api.control(Method::GET, &path)).await?;
        resp.json("GET /sandboxes/{id}/preview-ports")
    }

    /// Publishes `port`: with `access`, as public or private; without, a new port gets the
    /// sandbox's default and a published one keeps its mode. Does not resume the sandbox.
    ///
    /// ```no_run
    /// # #[cfg(feature = "blocking")]
    /// # fn demo(sb: &superserve::Sandbox) -> superserve::Result<()> {
    /// use superserve::PreviewAccessPolicy;
    /// sb.publish_preview_port(8000, Some(PreviewAccessPolicy::Private))?;
    /// let link = sb.get_signed_preview_url(8000, None)?; // valid for 60 s
    /// # let _ = link; Ok(()) }
    /// ```
    #[tracing::instrument(name = "sandbox.publish_preview_port", level = "debug", skip_all, fields(sandbox_id = self.id(), port))]
    pub async fn publish_preview_port(
        &self,
        port: u16,
        access: Option<PreviewAccessPolicy>,
    ) -> Result<PublishedPreviewPort> {
        check_preview_port(port)?;
        let (api, path) = self.control_path("/preview-ports")?;
        let mut body = json!({ "port": port });
        if let Some(a) = access {
            body["access"] = json!(a.as_str());
        }
        let req = api.control(Method::POST, &path).json(&body);
        api.send(&req)
            .await?
            .json("POST /sandboxes/{id}/preview-ports")
    }

    /// Unpublishes `port` and revokes its tokens, signed links and cookies. Idempotent on the
    /// server; a 404 (unknown sandbox) is returned as an error. Does not resume the sandbox.
    #[tracing::instrument(name = "sandbox.unpublish_preview_port", level = "debug", skip_all, fields(sandbox_id = self.id(), port))]
    pub async fn unpublish_preview_port(&self, port: u16) -> Result<()> {
        check_preview_port(port)?;
        let (api, path) = self.control_path(&format!("/preview-ports/{port}"))?;
        api.send(&api.control(Method::DELETE, &path))
            .await
            .map(drop)
    }

    /// Mints a credential for `port` (for a header, or a link's query parameter), valid for
    /// `expires_in` (1 s to 7 days) or, without one, until the port's tokens are rotated or it
    /// is unpublished. Does not resume the sandbox.
    #[tracing::instrument(name = "sandbox.get_preview_token", level = "debug", skip_all, fields(sandbox_id = self.id(), port))]
    pub async fn get_preview_token(
        &self,
        port: u16,
        expires_in: Option<Duration>,
    ) -> Result<PreviewToken> {
        check_preview_port(port)?;
        let body = token_body(expires_in)?;
        let (api, path) = self.control_path(&format!("/preview-ports/{port}/token"))?;
        let req = api.control(Method::POST, &path).json(&body);
        api.send(&req)
            .await?
            .json("POST /sandboxes/{id}/preview-ports/{port}/token")
    }

    /// A link that opens `port` in a browser: the preview URL with a fresh token (valid for
    /// `expires_in`, default 60 s) as its query parameter; the preview edge swaps it for a
    /// cookie and redirects to the URL without it. Does not resume the sandbox.
    pub async fn get_signed_preview_url(
        &self,
        port: u16,
        expires_in: Option<Duration>,
    ) -> Result<String> {
        let expires_in = expires_in.unwrap_or(Duration::from_secs(SIGNED_URL_SECS));
        let token = self.get_preview_token(port, Some(expires_in)).await?;
        let base = self.get_preview_url(port)?;
        let query = url::form_urlencoded::Serializer::new(String::new())
            .append_pair(&token.query_param, &token.token)
            .finish();
        Ok(format!("{base}?{query}"))
    }

    /// Rotates `port`'s credentials: its header tokens, signed links and cookies stop working
    /// (other ports are untouched); returns a token of the new version. Does not resume the
    /// sandbox.
    #[tracing::instrument(name = "sandbox.rotate_preview_token", level = "debug", skip_all, fields(sandbox_id = self.id(), port))]
    pub async fn rotate_preview_token(&self, port: u16) -> Result<PreviewToken> {
        check_preview_port(port)?;
        let (api, path) = self.control_path(&format!("/preview-ports/{port}/token/rotate"))?;
        api.send(&api.control(Method::POST, &path))
            .await?
            .json("POST /sandboxes/{id}/preview-ports/{port}/token/rotate")
    }

    /// Returns once the app inside the sandbox answers on `port`: a TCP connection, or with
    /// [`WaitOptions::http_path`] an HTTP status below 500 on that path. Probes from inside the
    /// sandbox (with `python3`, `curl` or `bash`, whichever it has), so the port need not be
    /// published. Fails with [`Error::Timeout`] ([`TimeoutKind::Operation`]) when it does not
    /// answer in time. Like any command, it resumes a paused sandbox.
    ///
    /// ```no_run
    /// # #[cfg(feature = "blocking")]
    /// # fn demo(sb: &superserve::Sandbox) -> superserve::Result<()> {
    /// use superserve::{PreviewAccessPolicy, RunOptions, WaitOptions};
    /// let _server = sb.commands().spawn("python3 -m http.server 8000")?;
    /// sb.wait_for_port(8000, WaitOptions::new().http_path("/"))?;
    /// sb.publish_preview_port(8000, Some(PreviewAccessPolicy::Private))?;
    /// println!("{}", sb.get_signed_preview_url(8000, None)?);
    /// # Ok(()) }
    /// ```
    #[tracing::instrument(name = "sandbox.wait_for_port", level = "debug", skip_all, fields(sandbox_id = self.id(), port))]
    pub async fn wait_for_port(&self, port: u16, opts: WaitOptions) -> Result<()> {
        opts.check()?;
        let deadline = Instant::now() + opts.timeout;
        let probe = || {
            RunOptions::new()
                .env("SS_PORT", port.to_string())
                .env("SS_PATH", opts.http_path.clone().unwrap_or_default())
                .timeout_seconds(10)
        };
        loop {
            let r = self.commands().run_with(PROBE, probe()).await?;
            match r.exit_code {
                0 => return Ok(()),
                3 => {
                    return Err(Error::invalid(
                        "wait_for_port needs python3, curl or bash inside the sandbox",
                    ))
                }
                _ => {}
            }
            if Instant::now() + opts.interval >= deadline {
                return Err(Error::timeout(
                    TimeoutKind::Operation,
                    format!(
                        "port {port} of sandbox {} did not answer within {:?}",
                        self.id(),
                        opts.timeout
                    ),
                ));
            }
            rt::sleep(opts.interval).await;
        }
    }
}
