//! Desktop (computer use): Connect RPC over JSON on the data plane (protocol §4.6).

use std::fmt;
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use super::sandbox::Tokens;
use super::{dual, Sandbox};
use crate::error::Result;
use crate::models::{
    check_resize, decode_screenshot, decode_step, DesktopAction, ImageFormat, KeyChord,
    MouseButton, PreviewAccess, Screenshot, StepOptions, StepResult, DESKTOP_STREAM_PORT,
};

const RPC_BASE: &str = "/superserve.boxd.v1.DesktopService/";
/// Largest answer to `Screenshot` and `Step` (a frame).
const MAX_FRAME_ANSWER: u64 = 48 * 1024 * 1024;
/// Largest answer to the other methods.
const MAX_ANSWER: u64 = 1024 * 1024;
const RPC_TIMEOUT: Duration = Duration::from_secs(30);

/// Controls the graphical desktop of a sandbox made from a desktop template (such as
/// `superserve/desktop`): screenshots, pointer, keyboard, batches of actions, the live view.
/// Made by [`Sandbox::desktop`].
///
/// Every call is one data-plane request (a paused sandbox is resumed first, like commands
/// and files). Coordinates are pixels from the top-left corner.
///
/// ```no_run
/// # #[cfg(feature = "blocking")]
/// # fn demo(sb: &superserve::Sandbox) -> superserve::Result<()> {
/// use superserve::{DesktopAction, ImageFormat, MouseButton, StepOptions};
/// let desktop = sb.desktop();
/// let shot = desktop.screenshot(ImageFormat::Png)?;
/// desktop.click(640, 400, MouseButton::Left)?;
/// desktop.write("hello")?;
/// desktop.press("ctrl+s")?;
/// let after = desktop.step(
///     StepOptions::new([DesktopAction::Press("enter".parse()?)]).wait_for_change(true),
/// )?;
/// println!("{}x{}, changed: {}", shot.width, shot.height, after.changed);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Desktop {
    sandbox: Sandbox,
}

impl fmt::Debug for Desktop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Desktop")
            .field("sandbox", &self.sandbox.id())
            .finish()
    }
}

#[dual]
impl Sandbox {
    /// The sandbox's desktop (for sandboxes made from a desktop template).
    pub fn desktop(&self) -> Desktop {
        Desktop {
            sandbox: self.clone(),
        }
    }
}

#[dual]
impl Desktop {
    async fn rpc(&self, method: &str, body: &Value, cap: u64) -> Result<Value> {
        self.sandbox.ensure_live()?;
        let path = format!("{RPC_BASE}{method}");
        let build = |t: &Tokens| {
            self.sandbox
                .dp_req(t, Method::POST, &path, RPC_TIMEOUT)
                .json(body)
        };
        let resp = self.sandbox.dp_send_capped(&build, cap).await?;
        if resp.is_empty() {
            return Ok(json!({}));
        }
        resp.json(&format!("POST {RPC_BASE}{method}"))
    }

    async fn one(&self, action: DesktopAction) -> Result<()> {
        let (method, body) = action.single()?;
        self.rpc(method, &body, MAX_ANSWER).await.map(drop)
    }

    /// Captures the display.
    #[tracing::instrument(name = "desktop.screenshot", level = "debug", skip_all, fields(sandbox_id = self.sandbox.id()))]
    pub async fn screenshot(&self, format: ImageFormat) -> Result<Screenshot> {
        let body = match format {
            ImageFormat::Jpeg => json!({ "format": "FRAME_FORMAT_JPEG" }),
            _ => json!({}),
        };
        let v = self.rpc("Screenshot", &body, MAX_FRAME_ANSWER).await?;
        decode_screenshot(&v)
    }

    /// Clicks `button` at (x, y).
    #[tracing::instrument(name = "desktop.click", level = "debug", skip_all, fields(sandbox_id = self.sandbox.id()))]
    pub async fn click(&self, x: u32, y: u32, button: MouseButton) -> Result<()> {
        self.one(DesktopAction::Click { x, y, button }).await
    }

    /// Double-clicks (left) at (x, y).
    pub async fn double_click(&self, x: u32, y: u32) -> Result<()> {
        self.one(DesktopAction::DoubleClick { x, y }).await
    }

    /// Right-clicks at (x, y).
    pub async fn right_click(&self, x: u32, y: u32) -> Result<()> {
        self.click(x, y, MouseButton::Right).await
    }

    /// Middle-clicks at (x, y).
    pub async fn middle_click(&self, x: u32, y: u32) -> Result<()> {
        self.click(x, y, MouseButton::Middle).await
    }

    /// Moves the pointer to (x, y) without clicking.
    pub async fn move_mouse(&self, x: u32, y: u32) -> Result<()> {
        self.one(DesktopAction::Move { x, y }).await
    }

    /// Drags from `from` to `to` with `button` held, as one batch (down, move, up) under the
    /// sandbox's input lock: no other input interleaves.
    pub async fn drag(&self, from: (u32, u32), to: (u32, u32), button: MouseButton) -> Result<()> {
        self.actions(&[
            DesktopAction::MouseDown {
                x: from.0,
                y: from.1,
                button,
            },
            DesktopAction::Move { x: to.0, y: to.1 },
            DesktopAction::MouseUp {
                x: to.0,
                y: to.1,
                button,
            },
        ])
        .await
    }

    /// Scrolls under the pointer: positive `dy` down, negative up; `dx` sideways.
    pub async fn scroll(&self, dx: i32, dy: i32) -> Result<()> {
        self.one(DesktopAction::Scroll { dx, dy }).await
    }

    /// Types `text` (no per-character pacing). Empty text sends nothing.
    #[tracing::instrument(name = "desktop.write", level = "debug", skip_all, fields(sandbox_id = self.sandbox.id()))]
    pub async fn write(&self, text: &str) -> Result<()> {
        if text.is_empty() {
            return Ok(());
        }
        self.one(DesktopAction::Write(text.to_owned())).await
    }

    /// Presses a key or chord: `"enter"`, `"ctrl+c"`, `"ctrl+shift+p"` (see [`KeyChord`] for
    /// the names).
    pub async fn press(&self, key: &str) -> Result<()> {
        self.press_chord(KeyChord::parse(key)?).await
    }

    /// Presses a typed chord.
    #[tracing::instrument(name = "desktop.press", level = "debug", skip_all, fields(sandbox_id = self.sandbox.id()))]
    pub async fn press_chord(&self, chord: KeyChord) -> Result<()> {
        self.one(DesktopAction::Press(chord)).await
    }

    /// Runs a batch of actions in one request, in order, under the sandbox's input lock; it
    /// stops at the first failing action. The whole batch is checked before anything is sent;
    /// an empty batch sends nothing.
    #[tracing::instrument(name = "desktop.actions", level = "debug", skip_all, fields(sandbox_id = self.sandbox.id()))]
    pub async fn actions(&self, actions: &[DesktopAction]) -> Result<()> {
        if actions.is_empty() {
            return Ok(());
        }
        let list = actions
            .iter()
            .map(DesktopAction::to_json)
            .collect::<Result<Vec<_>>>()?;
        self.rpc("SendActions", &json!({ "actions": list }), MAX_ANSWER)
            .await
            .map(drop)
    }

    /// Runs a batch and captures the frame after it, in one request: an agent's act-then-look
    /// turn as a single round trip. The frame is captured even when the batch stops early;
    /// see [`StepResult`].
    #[tracing::instrument(name = "desktop.step", level = "debug", skip_all, fields(sandbox_id = self.sandbox.id()))]
    pub async fn step(&self, opts: StepOptions) -> Result<StepResult> {
        let body = opts.to_body()?;
        let v = self.rpc("Step", &body, MAX_FRAME_ANSWER).await?;
        decode_step(&v)
    }

    /// Resizes the display (width a multiple of 8 in 320–8192, height 200–8192); takes effect
    /// live.
    #[tracing::instrument(name = "desktop.resize", level = "debug", skip_all, fields(sandbox_id = self.sandbox.id()))]
    pub async fn resize(&self, width: u32, height: u32) -> Result<()> {
        check_resize(width, height)?;
        self.rpc(
            "Resize",
            &json!({ "width": width, "height": height }),
            MAX_ANSWER,
        )
        .await
        .map(drop)
    }

    /// Publishes the live viewer (noVNC on port 6080) and returns its browser URL. Activates
    /// the sandbox first (so the viewer runs when the URL is opened). Under a private policy
    /// the URL carries a token valid for 60 s, which the preview edge swaps for a cookie.
    #[tracing::instrument(name = "desktop.get_stream_url", level = "debug", skip_all, fields(sandbox_id = self.sandbox.id()))]
    pub async fn get_stream_url(&self, view_only: bool) -> Result<String> {
        self.sandbox.ensure_live()?;
        self.sandbox.refresh(self.sandbox.tokens().revision).await?;
        let port = self
            .sandbox
            .publish_preview_port(DESKTOP_STREAM_PORT, None)
            .await?;
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        q.append_pair("autoconnect", "1")
            .append_pair("resize", "scale");
        if view_only {
            q.append_pair("view_only", "1");
        }
        if port.access == PreviewAccess::Private {
            let token = self
                .sandbox
                .get_preview_token(DESKTOP_STREAM_PORT, Some(Duration::from_secs(60)))
                .await?;
            q.append_pair(&token.query_param, &token.token);
        }
        let base = self.sandbox.get_preview_url(DESKTOP_STREAM_PORT)?;
        Ok(format!("{base}/vnc.html?{}", q.finish()))
    }
}
