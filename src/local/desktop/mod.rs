//! The desktop of `superserve/desktop` sandboxes (protocol.md §4.6): a real X server and the
//! `DesktopService` methods on the data plane.
//!
//! A sandbox made from the built-in `superserve/desktop` template boots, through its agent
//! like any command and as the sandbox's own root:
//!
//! * **Xvfb** on display `:0` (1280×800, 24-bit), the X server every screenshot and input goes
//!   to. Commands of the sandbox get `DISPLAY=:0`, so a GUI program started with `exec`
//!   appears on it;
//! * **the desktop helper**, a small program of the backend's (`helper/main.rs`, built by
//!   `build.rs`, `std` only) that is the X client: it captures the root window (`GetImage`,
//!   converted to RGB) and sends input through the XTEST extension (pointer, buttons, keys by
//!   keysym, typed text; keysyms no key produces are mapped onto a spare keycode first);
//! * **the live view**: x11vnc serving the display on the sandbox's loopback (port 5900) and
//!   websockify serving noVNC's pages and bridging its WebSocket to x11vnc on port 6080, the
//!   port `get_stream_url` publishes through the preview proxy. A watcher restarts either
//!   when it exits.
//!
//! **Where the X client lives.** The X server belongs to the sandbox, and a hostile sandbox
//! can replace it with anything that speaks on its socket. Talking X11 from the backend would
//! parse that untrusted protocol (replies of any length, events, errors) in the backend. The
//! helper keeps all of it inside the sandbox: the backend only reads the helper's small fixed
//! replies and raw RGB frames (`wire.rs`), each capped by the size the backend itself started
//! the X server with and bounded in time; a helper that breaks either rule is killed and
//! replaced. PNG and JPEG are encoded in the backend (`png`, `jpeg-encoder`) from those
//! checked pixels, one frame per request. Key names are resolved to keysyms in the backend
//! (`keysym.rs`): the helper only receives numbers.
//!
//! **Input.** Every method that touches the display holds the sandbox's input lock (the
//! helper connection) for its whole run: `SendActions` and `Step` run their batch without
//! any other input interleaving, and `Step` also keeps it through the settle time and the
//! capture. Each action ends with a round trip to the X server, so the events have been
//! processed (and any X error is reported) before the next one.
//!
//! **Resize.** A display must fit in the sandbox's memory (about 16 bytes a pixel for the X
//! server, the VNC server's copy and a capture, plus 64 MiB): a larger one is refused with
//! `failed_precondition` naming what it would need (4096×4096 fits the default 512 MiB,
//! 8192×8192 does not). Xvfb cannot grow its framebuffer through RandR (its RandR maximum
//! is the size it started with, and starting every desktop at 8192×8192 would cost 256 MiB
//! of each sandbox's memory), so `Resize` restarts the virtual screen at the new size:
//! programs connected to the display lose their connection (as on any X server restart) and
//! must be started again; the VNC server follows (viewers reconnect). A fresh process tree
//! (a resume after a backend restart) starts at 1280×800 again.
//!
//! **Errors** are Connect errors, `{"code","message"}` with the Connect HTTP status:
//! `failed_precondition` (400) for a sandbox not made from a desktop template,
//! `invalid_argument` / `out_of_range` (400) for bad bodies and ranges (checked by the server
//! as well as by the SDK), `unimplemented` (501) for an unknown method, `unavailable` (503)
//! when the desktop's programs cannot run, `resource_exhausted` (429) for a frame too large to
//! answer, `internal` (500) for a refusal of the X server.
//!
//! Host packages (the sandbox's `/usr` is the host's): `xvfb`, `x11vnc`, `novnc`,
//! `websockify`. Without them, creating a sandbox from `superserve/desktop` fails (503
//! `service_unavailable`) with an error naming what is missing and the `apt-get install`
//! that adds it. A desktop that cannot boot fails the create (or the resume) the same way.

mod encode;
mod helper;
mod keysym;
pub(crate) mod rpc;
mod services;
// one file for both ends: the backend only encodes requests and decodes replies
#[cfg_attr(not(test), allow(dead_code))]
mod wire;

use std::path::Path;
use std::sync::{Arc, Weak};
use std::time::Duration;

use super::runtime::Runtime;
use helper::Helper;
use services::{LiveView, Program};
use wire::{Reply, Request};

/// The built-in desktop template.
pub(crate) const TEMPLATE: &str = "superserve/desktop";
/// Its fixed id (accepted by `from_template` too).
pub(crate) const TEMPLATE_ID: &str = "00000000-0000-4000-8000-0000000000d5";
/// The X display of a desktop sandbox.
pub(crate) const DISPLAY: &str = ":0";
const DISPLAY_NUMBER: u32 = 0;
/// The display size a desktop boots with.
const DEFAULT_SIZE: (u32, u32) = (1280, 800);
/// Where websockify listens (noVNC's pages and the VNC WebSocket), the port `get_stream_url`
/// publishes.
const STREAM_PORT: u16 = 6080;
/// Where x11vnc listens (the sandbox's loopback only).
const VNC_PORT: u16 = 5900;
/// noVNC's pages (Debian's `novnc`).
const NOVNC_DIR: &str = "/usr/share/novnc";
/// How long boot waits for the live view to accept connections.
const LIVE_VIEW_TIMEOUT_MS: u32 = 15_000;

/// What the template needs from the host: (Debian package, a file it installs).
const REQUIRED: &[(&str, &str)] = &[
    ("xvfb", "usr/bin/Xvfb"),
    ("x11vnc", "usr/bin/x11vnc"),
    ("websockify", "usr/bin/websockify"),
    ("novnc", "usr/share/novnc/vnc.html"),
];

/// Whether a template reference names the built-in desktop template. (The one place that
/// knows it, for the template registry to take over.)
pub(crate) fn is_template(reference: &str) -> bool {
    reference == TEMPLATE || reference == TEMPLATE_ID
}

/// The packages of [`REQUIRED`] whose file is missing under `root`, as `package (/path)`.
fn missing_under(root: &Path) -> Vec<(&'static str, &'static str)> {
    REQUIRED
        .iter()
        .filter(|(_, file)| !root.join(file).exists())
        .copied()
        .collect()
}

/// Checks that the host has what the desktop runs (see [`REQUIRED`]); the error names what
/// is missing.
pub(crate) fn check_host() -> Result<(), String> {
    check_under(Path::new("/"))
}

fn check_under(root: &Path) -> Result<(), String> {
    let missing = missing_under(root);
    if missing.is_empty() {
        return Ok(());
    }
    let named: Vec<String> = missing
        .iter()
        .map(|(pkg, file)| format!("{pkg} (/{file})"))
        .collect();
    let packages: Vec<&str> = missing.iter().map(|(pkg, _)| *pkg).collect();
    Err(format!(
        "the {TEMPLATE} template needs host packages that are missing: {}; install them on \
         the machine running the backend (apt-get install {})",
        named.join(", "),
        packages.join(" ")
    ))
}

/// Memory a display needs in its sandbox per pixel: Xvfb's framebuffer (4 bytes), x11vnc's
/// copy of it (4), and the helper's capture (the X reply, 4, and its RGB conversion, 3), with
/// room to spare.
const BYTES_PER_PIXEL: u64 = 16;
/// Memory the desktop's programs need besides their frames.
const BASE_MIB: u64 = 64;

/// Whether a `width`×`height` display fits in a sandbox of `memory_mib`; the error says what
/// it would need. (Without this check a large resize gets the X server or the helper killed
/// by the sandbox's memory limit at the first capture.)
pub(crate) fn check_display_memory(width: u32, height: u32, memory_mib: u32) -> Result<(), String> {
    let need = u64::from(width) * u64::from(height) * BYTES_PER_PIXEL / (1024 * 1024) + BASE_MIB;
    if need <= u64::from(memory_mib) {
        return Ok(());
    }
    Err(format!(
        "a {width}x{height} display needs about {need} MiB in the sandbox, which has \
         {memory_mib} MiB of memory"
    ))
}

/// Why a desktop call could not be carried out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DesktopError {
    /// The desktop's programs are not running and could not be started.
    Unavailable(String),
    /// The X server refused what was asked.
    Failed(String),
}

impl std::fmt::Display for DesktopError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DesktopError::Unavailable(m) | DesktopError::Failed(m) => f.write_str(m),
        }
    }
}

/// The X server and the helper of a desktop; the desktop's input lock guards it.
#[derive(Debug)]
pub(crate) struct Screen {
    rt: Weak<Runtime>,
    /// The size the X server is (to be) started with.
    size: (u32, u32),
    xvfb: Option<Program>,
    helper: Option<Helper>,
}

impl Screen {
    fn runtime(&self) -> Result<Arc<Runtime>, DesktopError> {
        self.rt
            .upgrade()
            .filter(|rt| !rt.is_dead())
            .ok_or_else(|| DesktopError::Unavailable("the sandbox is not running".into()))
    }

    /// The helper, starting the X server and the helper when they are not running.
    async fn ensure(&mut self) -> Result<&mut Helper, DesktopError> {
        let rt = self.runtime()?;
        if self.xvfb.as_mut().is_none_or(Program::exited) {
            self.helper = None;
            self.xvfb = None;
            self.xvfb = Some(services::start_xvfb(&rt, self.size.0, self.size.1).await?);
        }
        if self.helper.is_none() {
            self.helper = Some(Helper::start(&rt, DISPLAY, self.size).await?);
        }
        match self.helper.as_mut() {
            Some(h) => Ok(h),
            None => Err(DesktopError::Unavailable("no desktop helper".into())),
        }
    }

    /// One helper request; a helper that failed is dropped (and started again next time).
    async fn call(&mut self, req: &Request) -> Result<Reply, DesktopError> {
        let r = self.ensure().await?.call(req).await;
        if let Err(DesktopError::Unavailable(_)) = r {
            self.helper = None;
        }
        r
    }

    /// A request answered by `Done`.
    async fn act(&mut self, req: &Request) -> Result<(), DesktopError> {
        match self.call(req).await? {
            Reply::Done => Ok(()),
            other => {
                self.helper = None;
                Err(DesktopError::Unavailable(format!(
                    "the desktop helper answered {other:?}"
                )))
            }
        }
    }

    /// The display's current size.
    async fn size(&mut self) -> Result<(u32, u32), DesktopError> {
        match self.call(&Request::Size).await? {
            Reply::Size { width, height } => Ok((width, height)),
            other => {
                self.helper = None;
                Err(DesktopError::Unavailable(format!(
                    "the desktop helper answered {other:?}"
                )))
            }
        }
    }

    /// The current frame: (width, height, RGB rows).
    async fn capture(&mut self) -> Result<(u32, u32, Vec<u8>), DesktopError> {
        match self.call(&Request::Capture).await? {
            Reply::Frame { width, height, rgb } => Ok((width, height, rgb)),
            other => {
                self.helper = None;
                Err(DesktopError::Unavailable(format!(
                    "the desktop helper answered {other:?}"
                )))
            }
        }
    }

    /// A digest of the current frame (with its size).
    async fn digest(&mut self) -> Result<(u32, u32, u64), DesktopError> {
        match self.call(&Request::Digest).await? {
            Reply::Digest {
                width,
                height,
                digest,
            } => Ok((width, height, digest)),
            other => {
                self.helper = None;
                Err(DesktopError::Unavailable(format!(
                    "the desktop helper answered {other:?}"
                )))
            }
        }
    }

    /// Restarts the virtual screen at `width`×`height` (see the module docs).
    async fn resize(&mut self, width: u32, height: u32) -> Result<(), DesktopError> {
        self.helper = None;
        if let Some(x) = self.xvfb.take() {
            x.stop(Duration::from_secs(2)).await;
        }
        self.size = (width, height);
        self.ensure().await.map(drop)
    }
}

/// A desktop sandbox's desktop: its screen (behind the input lock) and its live view.
#[derive(Debug)]
pub(crate) struct Desktop {
    rt: Weak<Runtime>,
    screen: tokio::sync::Mutex<Screen>,
    /// Kept for its lifetime: dropping it stops the live view's programs.
    _live: LiveView,
}

impl Desktop {
    /// Boots the desktop of a freshly started sandbox: the X server, the helper and the live
    /// view, and waits until the live view accepts connections.
    pub(crate) async fn boot(rt: &Arc<Runtime>) -> Result<Arc<Desktop>, DesktopError> {
        check_host().map_err(DesktopError::Unavailable)?;
        let mut screen = Screen {
            rt: Arc::downgrade(rt),
            size: DEFAULT_SIZE,
            xvfb: None,
            helper: None,
        };
        screen.ensure().await?;
        let live = LiveView::start(rt);
        for (port, log) in [(VNC_PORT, &live.logs[0]), (STREAM_PORT, &live.logs[1])] {
            let wait = Request::WaitPort {
                port,
                timeout_ms: LIVE_VIEW_TIMEOUT_MS,
            };
            if let Err(e) = screen.act(&wait).await {
                let name = if port == VNC_PORT {
                    "x11vnc"
                } else {
                    "websockify"
                };
                return Err(DesktopError::Unavailable(format!(
                    "the live view ({name} on port {port}) did not start: {e} ({})",
                    log.text().trim()
                )));
            }
        }
        Ok(Arc::new(Desktop {
            rt: Arc::downgrade(rt),
            screen: tokio::sync::Mutex::new(screen),
            _live: live,
        }))
    }

    /// Whether this desktop belongs to the runtime `rt`.
    pub(crate) fn runs_on(&self, rt: &Arc<Runtime>) -> bool {
        std::ptr::eq(self.rt.as_ptr(), Arc::as_ptr(rt))
    }

    /// Takes the input lock.
    pub(crate) async fn lock(&self) -> tokio::sync::MutexGuard<'_, Screen> {
        self.screen.lock().await
    }

    /// One raw capture under the input lock, timed from the request to the helper to the
    /// checked frame in the backend (no encoding): the frame's size and the time.
    pub(crate) async fn capture_timed(&self) -> Result<(u32, u32, Duration), DesktopError> {
        let mut screen = self.lock().await;
        let began = std::time::Instant::now();
        let (width, height, _rgb) = screen.capture().await?;
        Ok((width, height, began.elapsed()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_host_packages_are_named() {
        let root = std::env::temp_dir().join(format!("superserve-desktop-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("usr/bin")).unwrap();
        std::fs::write(root.join("usr/bin/Xvfb"), b"").unwrap();
        std::fs::write(root.join("usr/bin/websockify"), b"").unwrap();
        let err = check_under(&root).unwrap_err();
        assert!(err.contains("x11vnc (/usr/bin/x11vnc)"), "{err}");
        assert!(err.contains("novnc (/usr/share/novnc/vnc.html)"), "{err}");
        assert!(!err.contains("xvfb ("), "{err}");
        assert!(err.contains("(apt-get install x11vnc novnc)"), "{err}");
        std::fs::create_dir_all(root.join("usr/share/novnc")).unwrap();
        std::fs::write(root.join("usr/bin/x11vnc"), b"").unwrap();
        std::fs::write(root.join("usr/share/novnc/vnc.html"), b"").unwrap();
        assert_eq!(check_under(&root), Ok(()));
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn displays_must_fit_in_the_sandboxs_memory() {
        assert_eq!(check_display_memory(1280, 800, 512), Ok(()));
        assert_eq!(check_display_memory(4096, 4096, 512), Ok(()));
        let err = check_display_memory(8192, 8192, 512).unwrap_err();
        assert!(
            err.contains("8192x8192") && err.contains("512 MiB"),
            "{err}"
        );
        assert_eq!(check_display_memory(8192, 8192, 2048), Ok(()));
    }

    #[test]
    fn template_references() {
        assert!(is_template("superserve/desktop"));
        assert!(is_template(TEMPLATE_ID));
        assert!(!is_template("superserve/base"));
        assert!(!is_template("superserve/desktop2"));
    }
}
