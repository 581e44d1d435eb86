use std::fmt;

use serde_json::{json, Value};

use crate::error::{Error, Result};

/// A mouse button.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum MouseButton {
    /// The left (primary) button.
    #[default]
    Left,
    /// The right button.
    Right,
    /// The middle button (wheel click).
    Middle,
}

impl MouseButton {
    pub(crate) fn wire(self) -> &'static str {
        match self {
            MouseButton::Left => "POINTER_BUTTON_LEFT",
            MouseButton::Right => "POINTER_BUTTON_RIGHT",
            MouseButton::Middle => "POINTER_BUTTON_MIDDLE",
        }
    }
}

/// How a captured frame is encoded: PNG (lossless) or JPEG (several times smaller and faster
/// to encode, for loops where a model reads the frame).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum ImageFormat {
    /// PNG (the default).
    #[default]
    Png,
    /// JPEG.
    Jpeg,
}

impl ImageFormat {
    /// `"png"` or `"jpeg"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ImageFormat::Png => "png",
            ImageFormat::Jpeg => "jpeg",
        }
    }
}

/// A captured frame: the encoded image and the display's size.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Screenshot {
    /// The encoded image (see `format`).
    pub bytes: Vec<u8>,
    /// Display width in pixels.
    pub width: u32,
    /// Display height in pixels.
    pub height: u32,
    /// The encoding.
    pub format: ImageFormat,
}

impl fmt::Debug for Screenshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Screenshot")
            .field("bytes", &format_args!("<{} bytes>", self.bytes.len()))
            .field("width", &self.width)
            .field("height", &self.height)
            .field("format", &self.format)
            .finish()
    }
}

/// A key, optionally with modifiers: `KeyChord::parse("ctrl+c")`, or typed:
/// `KeyChord::new("c").with("ctrl")`. Friendly names map to X keysyms, case-insensitively:
/// enter/return → `Return`, esc/escape → `Escape`, tab, space, backspace, delete, insert,
/// up/down/left/right, home, end, pageup → `Page_Up`, pagedown → `Page_Down`, ctrl/control,
/// alt, shift, cmd/win/super → `super`; any other name is sent as it is (every X keysym
/// works).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyChord {
    modifiers: Vec<String>,
    key: String,
}

/// Friendly key name → X keysym (unknown names pass through).
pub(crate) fn keysym(name: &str) -> String {
    let mapped = match name.to_ascii_lowercase().as_str() {
        "enter" | "return" => "Return",
        "esc" | "escape" => "Escape",
        "tab" => "Tab",
        "space" => "space",
        "backspace" => "BackSpace",
        "delete" => "Delete",
        "insert" => "Insert",
        "up" => "Up",
        "down" => "Down",
        "left" => "Left",
        "right" => "Right",
        "home" => "Home",
        "end" => "End",
        "pageup" => "Page_Up",
        "pagedown" => "Page_Down",
        "ctrl" | "control" => "ctrl",
        "alt" => "alt",
        "shift" => "shift",
        "cmd" | "win" | "super" => "super",
        _ => return name.to_owned(),
    };
    mapped.to_owned()
}

impl KeyChord {
    /// A single key.
    pub fn new(key: impl Into<String>) -> Self {
        KeyChord {
            modifiers: Vec::new(),
            key: key.into(),
        }
    }

    /// Adds a modifier (held while the key is pressed).
    #[must_use]
    pub fn with(mut self, modifier: impl Into<String>) -> Self {
        self.modifiers.push(modifier.into());
        self
    }

    /// Parses `"ctrl+shift+p"`: the last part is the key, the others modifiers. Fails with
    /// [`Error::InvalidInput`] for an empty part.
    pub fn parse(chord: &str) -> Result<KeyChord> {
        let parts: Vec<&str> = chord.split('+').collect();
        if parts.iter().any(|p| p.trim().is_empty()) {
            return Err(Error::invalid(format!("key {chord:?} has an empty part")));
        }
        let (key, mods) = parts.split_last().unwrap_or((&"", &[]));
        Ok(KeyChord {
            modifiers: mods.iter().map(|m| (*m).to_owned()).collect(),
            key: (*key).to_owned(),
        })
    }

    pub(crate) fn to_json(&self) -> Result<Value> {
        if self.key.trim().is_empty() || self.modifiers.iter().any(|m| m.trim().is_empty()) {
            return Err(Error::invalid(
                "a key chord needs a key and non-empty modifiers",
            ));
        }
        let mods: Vec<String> = self.modifiers.iter().map(|m| keysym(m)).collect();
        Ok(json!({ "key": keysym(&self.key), "modifiers": mods }))
    }
}

impl std::str::FromStr for KeyChord {
    type Err = Error;
    fn from_str(s: &str) -> Result<KeyChord> {
        KeyChord::parse(s)
    }
}

/// One desktop action, for `Desktop::actions` and `Desktop::step`.
///
/// ```
/// use superserve::{DesktopAction, KeyChord, MouseButton};
/// let batch = [
///     DesktopAction::Click { x: 640, y: 32, button: MouseButton::Left },
///     DesktopAction::Write("https://example.com".into()),
///     DesktopAction::Press(KeyChord::new("enter")),
/// ];
/// # let _ = batch;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DesktopAction {
    /// Click at (x, y).
    Click {
        /// Column.
        x: u32,
        /// Row.
        y: u32,
        /// Which button.
        button: MouseButton,
    },
    /// Double-click (left) at (x, y).
    DoubleClick {
        /// Column.
        x: u32,
        /// Row.
        y: u32,
    },
    /// Move the pointer to (x, y).
    Move {
        /// Column.
        x: u32,
        /// Row.
        y: u32,
    },
    /// Press a button at (x, y) and hold it.
    MouseDown {
        /// Column.
        x: u32,
        /// Row.
        y: u32,
        /// Which button.
        button: MouseButton,
    },
    /// Release a button at (x, y).
    MouseUp {
        /// Column.
        x: u32,
        /// Row.
        y: u32,
        /// Which button.
        button: MouseButton,
    },
    /// Press a key or chord.
    Press(KeyChord),
    /// Type text.
    Write(String),
    /// Scroll: positive `dy` down, negative up; `dx` sideways.
    Scroll {
        /// Horizontal amount.
        dx: i32,
        /// Vertical amount.
        dy: i32,
    },
}

fn pointer(x: u32, y: u32, action: &str, button: MouseButton) -> Value {
    json!({ "x": x, "y": y, "button": button.wire(), "action": action })
}

impl DesktopAction {
    /// The proto-JSON of one action in a batch.
    pub(crate) fn to_json(&self) -> Result<Value> {
        Ok(match self {
            DesktopAction::Click { x, y, button } => {
                json!({ "pointer": pointer(*x, *y, "POINTER_ACTION_CLICK", *button) })
            }
            DesktopAction::DoubleClick { x, y } => json!({
                "pointer": pointer(*x, *y, "POINTER_ACTION_DOUBLE_CLICK", MouseButton::Left)
            }),
            DesktopAction::Move { x, y } => {
                json!({ "pointer": pointer(*x, *y, "POINTER_ACTION_MOVE", MouseButton::Left) })
            }
            DesktopAction::MouseDown { x, y, button } => {
                json!({ "pointer": pointer(*x, *y, "POINTER_ACTION_DOWN", *button) })
            }
            DesktopAction::MouseUp { x, y, button } => {
                json!({ "pointer": pointer(*x, *y, "POINTER_ACTION_UP", *button) })
            }
            DesktopAction::Press(chord) => json!({ "key": chord.to_json()? }),
            DesktopAction::Write(text) => json!({ "key": { "text": text } }),
            DesktopAction::Scroll { dx, dy } => json!({ "scroll": { "dx": dx, "dy": dy } }),
        })
    }

    /// The body of the single-action RPC (`SendPointer`, `SendKey`, `Scroll`).
    pub(crate) fn single(&self) -> Result<(&'static str, Value)> {
        let v = self.to_json()?;
        let (method, key) = match self {
            DesktopAction::Press(_) | DesktopAction::Write(_) => ("SendKey", "key"),
            DesktopAction::Scroll { .. } => ("Scroll", "scroll"),
            _ => ("SendPointer", "pointer"),
        };
        Ok((method, v[key].clone()))
    }
}

/// Where the sandbox spent a `Desktop::step`, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct StepTimings {
    /// Waiting for the sandbox's input lock.
    pub queue_ms: u64,
    /// Delivering the actions.
    pub actions_ms: u64,
    /// Sleeping, or waiting for a changed frame.
    pub settle_ms: u64,
    /// Capturing and encoding the frame.
    pub capture_ms: u64,
}

/// What a `Desktop::step` did. Input is not idempotent, so a failed action and a failed
/// capture are reported here rather than raised: the actions that ran have landed either way.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StepResult {
    /// Actions that executed: the batch size unless `action_error` is set (then the failing
    /// index).
    pub executed: u32,
    /// Why the batch stopped early.
    pub action_error: Option<String>,
    /// The frame captured after the batch, unless the capture failed.
    pub screenshot: Option<Screenshot>,
    /// Why no frame was captured.
    pub screenshot_error: Option<String>,
    /// With `wait_for_change`: whether the frame differs from the one before the batch.
    pub changed: bool,
    /// The sandbox's phase timings, when it reports them.
    pub timings: Option<StepTimings>,
}

/// A `Desktop::step`: a batch of actions and a frame captured after it, in one request.
///
/// ```
/// use superserve::{DesktopAction, ImageFormat, MouseButton, StepOptions};
/// let opts = StepOptions::new([DesktopAction::Click { x: 10, y: 20, button: MouseButton::Left }])
///     .wait_for_change(true)
///     .settle_ms(1500)
///     .quiet_ms(200)
///     .format(ImageFormat::Jpeg);
/// # let _ = opts;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct StepOptions {
    pub(crate) actions: Vec<DesktopAction>,
    pub(crate) settle_ms: u32,
    pub(crate) wait_for_change: bool,
    pub(crate) format: ImageFormat,
    pub(crate) quiet_ms: u32,
}

impl StepOptions {
    /// A step running `actions` (at least one), then capturing a PNG at once.
    pub fn new(actions: impl IntoIterator<Item = DesktopAction>) -> Self {
        StepOptions {
            actions: actions.into_iter().collect(),
            settle_ms: 0,
            wait_for_change: false,
            format: ImageFormat::Png,
            quiet_ms: 0,
        }
    }
    /// How long the sandbox waits before capturing (at most 2000 ms); with
    /// `wait_for_change`, the longest it waits for a changed frame (0: its default, 1000).
    pub fn settle_ms(mut self, ms: u32) -> Self {
        self.settle_ms = ms;
        self
    }
    /// Capture the first frame that differs from the one before the batch.
    pub fn wait_for_change(mut self, wait: bool) -> Self {
        self.wait_for_change = wait;
        self
    }
    /// With `wait_for_change`: keep capturing while repaints arrive, and return once the
    /// display has been still this long (bounded by `settle_ms`).
    pub fn quiet_ms(mut self, ms: u32) -> Self {
        self.quiet_ms = ms;
        self
    }
    /// The frame's encoding.
    pub fn format(mut self, format: ImageFormat) -> Self {
        self.format = format;
        self
    }

    pub(crate) fn to_body(&self) -> Result<Value> {
        if self.actions.is_empty() {
            return Err(Error::invalid("a step needs at least one action"));
        }
        if self.settle_ms > 2000 {
            return Err(Error::invalid(format!(
                "settle_ms is at most 2000 (got {})",
                self.settle_ms
            )));
        }
        if self.quiet_ms > 0 && !self.wait_for_change {
            return Err(Error::invalid("quiet_ms needs wait_for_change"));
        }
        let actions = self
            .actions
            .iter()
            .map(DesktopAction::to_json)
            .collect::<Result<Vec<_>>>()?;
        let mut body = json!({ "actions": actions, "settleMs": self.settle_ms });
        if self.format == ImageFormat::Jpeg {
            body["format"] = json!("FRAME_FORMAT_JPEG");
        }
        if self.wait_for_change {
            body["waitForChange"] = json!(true);
        }
        if self.quiet_ms > 0 {
            body["quietMs"] = json!(self.quiet_ms);
        }
        Ok(body)
    }
}

/// Decodes `{image, width, height, format?}`.
pub(crate) fn decode_screenshot(v: &Value) -> Result<Screenshot> {
    let image = v
        .get("image")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::decode("Screenshot: no image in the answer", b""))?;
    let bytes = crate::wire::base64_decode(image.as_bytes())
        .ok_or_else(|| Error::decode("Screenshot: the image is not base64", b""))?;
    let n = |k: &str| {
        v.get(k)
            .and_then(Value::as_u64)
            .and_then(|x| u32::try_from(x).ok())
            .unwrap_or(0)
    };
    Ok(Screenshot {
        bytes,
        width: n("width"),
        height: n("height"),
        format: if v.get("format").and_then(Value::as_str) == Some("FRAME_FORMAT_JPEG") {
            ImageFormat::Jpeg
        } else {
            ImageFormat::Png
        },
    })
}

/// Decodes a `Step` answer (proto-JSON omits zero values).
pub(crate) fn decode_step(v: &Value) -> Result<StepResult> {
    let n = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
    let s = |k: &str| {
        v.get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    let phases = ["queueMs", "actionsMs", "settleMs", "captureMs"];
    let timings = phases
        .iter()
        .any(|k| v.get(*k).is_some())
        .then(|| StepTimings {
            queue_ms: n("queueMs"),
            actions_ms: n("actionsMs"),
            settle_ms: n("settleMs"),
            capture_ms: n("captureMs"),
        });
    let shot = v.get("screenshot").filter(|s| s.get("image").is_some());
    let (screenshot, screenshot_error) = match shot {
        Some(s) => (Some(decode_screenshot(s)?), None),
        None => (
            None,
            Some(s("captureError").unwrap_or_else(|| "Step response missing image data".into())),
        ),
    };
    Ok(StepResult {
        executed: u32::try_from(n("executed")).unwrap_or(u32::MAX),
        action_error: s("actionError"),
        changed: screenshot.is_some() && v.get("changed").and_then(Value::as_bool) == Some(true),
        screenshot,
        screenshot_error,
        timings,
    })
}

/// Checks a display size: width a multiple of 8 in 320–8192, height 200–8192.
pub(crate) fn check_resize(width: u32, height: u32) -> Result<()> {
    if !(320..=8192).contains(&width) || !width.is_multiple_of(8) || !(200..=8192).contains(&height)
    {
        return Err(Error::invalid(format!(
            "a display is 320-8192 wide (a multiple of 8) and 200-8192 high; got {width}x{height}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chords_actions_and_answers() {
        let c = KeyChord::parse("ctrl+Shift+p").unwrap();
        assert_eq!(
            c.to_json().unwrap(),
            json!({"key": "p", "modifiers": ["ctrl", "shift"]})
        );
        assert_eq!(
            KeyChord::new("enter").to_json().unwrap(),
            json!({"key": "Return", "modifiers": []})
        );
        assert!(KeyChord::parse("ctrl+").is_err());
        let (m, body) = DesktopAction::Click {
            x: 0,
            y: 7,
            button: MouseButton::Right,
        }
        .single()
        .unwrap();
        assert_eq!(m, "SendPointer");
        assert_eq!(
            body,
            json!({"x": 0, "y": 7, "button": "POINTER_BUTTON_RIGHT", "action": "POINTER_ACTION_CLICK"})
        );
        assert!(StepOptions::new([]).to_body().is_err());
        assert!(StepOptions::new([DesktopAction::Write("x".into())])
            .settle_ms(2001)
            .to_body()
            .is_err());
        assert!(check_resize(1280, 800).is_ok());
        assert!(check_resize(1281, 800).is_err());
        assert!(check_resize(1280, 100).is_err());
        let r = decode_step(&json!({"executed": 2, "captureError": "no display", "queueMs": 3}))
            .unwrap();
        assert_eq!(r.executed, 2);
        assert!(r.screenshot.is_none());
        assert_eq!(r.screenshot_error.as_deref(), Some("no display"));
        assert_eq!(r.timings.unwrap().queue_ms, 3);
        let r = decode_step(
            &json!({"screenshot": {"image": "iVBO", "width": 2, "height": 1}, "changed": true}),
        )
        .unwrap();
        assert!(r.changed);
        assert_eq!(r.screenshot.unwrap().width, 2);
    }
}
