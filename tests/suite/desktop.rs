//! The desktop of `superserve/desktop` sandboxes end to end: a real X server (Xvfb) in the
//! sandbox, a Tk app driven through the SDK (XTEST input, framebuffer screenshots), the
//! documented errors for other sandboxes and bad requests, and the live view (x11vnc +
//! noVNC on port 6080) opened through the preview proxy in headless Chromium.

use std::time::Duration;

use superserve::{
    CreateOptions, DesktopAction, Error, ImageFormat, KeyChord, MouseButton, Screenshot,
    StepOptions,
};

use superserve::local::LocalServer;

use crate::common::preview::chromium_eval_until;
use crate::common::{self, authority, raw_http};
use crate::dual;
use crate::flavor::Sandbox;

/// The built-in desktop template.
const DESKTOP: &str = "superserve/desktop";
/// Where the Tk app writes what it saw.
const OUT: &str = "/tmp/tkapp";
/// The Tk app: a button at (20, 20) 160×40 and a text field at (20, 100) 400×30 in a
/// 640×400 window at the top left of the screen. Clicking the button turns it red and writes
/// the click count to `clicked`; Ctrl+S writes the field's text to `saved`; wheel clicks
/// (X buttons 4 and 5) append `up` / `down` to `wheel`. Each file is replaced atomically.
const APP: &str = r##"
import os, tkinter as tk
OUT = "/tmp/tkapp"
os.makedirs(OUT, exist_ok=True)
def log(name, text):
    with open(f"{OUT}/{name}.tmp", "w") as f:
        f.write(text)
    os.replace(f"{OUT}/{name}.tmp", f"{OUT}/{name}")
root = tk.Tk()
root.geometry("640x400+0+0")
root.configure(bg="#ffffff")
clicks = [0]
def clicked():
    clicks[0] += 1
    button.config(text=f"clicked {clicks[0]}", bg="#d04040", activebackground="#d04040")
    log("clicked", str(clicks[0]))
button = tk.Button(root, text="click me", command=clicked)
button.place(x=20, y=20, width=160, height=40)
entry = tk.Entry(root)
entry.place(x=20, y=100, width=400, height=30)
def save(event):
    log("saved", entry.get())
    return "break"
root.bind_all("<Control-s>", save)
wheel = []
def on_wheel(direction):
    wheel.append(direction)
    log("wheel", " ".join(wheel))
root.bind_all("<Button-4>", lambda e: on_wheel("up"))
root.bind_all("<Button-5>", lambda e: on_wheel("down"))
root.after(300, lambda: log("ready", "1"))
root.mainloop()
"##;
/// Centre of the button and of the text field.
const BUTTON: (u32, u32) = (100, 40);
const FIELD: (u32, u32) = (220, 115);

#[dual]
async fn desktop_sandbox(target: &impl common::SdkConfig, name: &str) -> Sandbox {
    Sandbox::create_with_config(
        &target.sdk_config(),
        CreateOptions::new(name).from_template(DESKTOP),
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "create {name} from {DESKTOP}: {e} (the desktop needs Debian's xvfb, x11vnc, \
             novnc and websockify on the host)"
        )
    })
}

#[dual]
async fn sh(sb: &Sandbox, cmd: &str) -> String {
    let r = sb
        .commands()
        .run(cmd)
        .await
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert_eq!(r.exit_code, 0, "{cmd}: {}", r.stderr);
    r.stdout
}

/// Waits until the app has written `name` (with `want` in it, when given); its content.
#[dual]
async fn app_file(sb: &Sandbox, name: &str, want: Option<&str>) -> String {
    let mut last = String::new();
    for _ in 0..300 {
        let r = sb
            .commands()
            .run(&format!("cat {OUT}/{name} 2>/dev/null"))
            .await
            .unwrap();
        last = r.stdout;
        if r.exit_code == 0 && want.is_none_or(|w| last.contains(w)) {
            return last;
        }
        crate::flavor::sleep(Duration::from_millis(100)).await;
    }
    let log = sh(sb, "cat /tmp/tkapp.log 2>/dev/null; true").await;
    panic!("the Tk app never wrote {name} with {want:?} (last {last:?}; its log: {log})");
}

/// Starts the Tk app (`python3-tk`) on the sandbox's display and waits until it is up.
#[dual]
async fn start_app(sb: &Sandbox) {
    sb.files().write("/tmp/app.py", APP).await.unwrap();
    let has_tk = sb
        .commands()
        .run("python3 -c 'import tkinter'")
        .await
        .unwrap();
    assert_eq!(
        has_tk.exit_code, 0,
        "this test needs Python's Tk: install Debian's `python3-tk` package ({})",
        has_tk.stderr
    );
    // DISPLAY comes from the sandbox (a desktop sandbox's commands have it)
    sh(
        sb,
        &format!("rm -rf {OUT}; nohup python3 /tmp/app.py >/tmp/tkapp.log 2>&1 &"),
    )
    .await;
    app_file(sb, "ready", None).await;
}

/// Decodes a PNG screenshot: its size and RGB(A) pixels.
fn decode_png(shot: &Screenshot) -> (u32, u32, Vec<u8>) {
    assert_eq!(shot.format, ImageFormat::Png);
    let mut reader = png::Decoder::new(std::io::Cursor::new(&shot.bytes))
        .read_info()
        .expect("a PNG header");
    let mut buf = vec![0u8; reader.output_buffer_size().expect("a buffer size")];
    let info = reader.next_frame(&mut buf).expect("PNG pixels");
    buf.truncate(info.buffer_size());
    (info.width, info.height, buf)
}

/// The size in a JPEG's start-of-frame segment (markers walked from SOI to SOF).
fn jpeg_size(bytes: &[u8]) -> (u32, u32) {
    assert_eq!(&bytes[..2], &[0xff, 0xd8], "no JPEG start of image");
    assert_eq!(
        &bytes[bytes.len() - 2..],
        &[0xff, 0xd9],
        "no JPEG end of image"
    );
    let mut at = 2;
    while at + 9 < bytes.len() {
        assert_eq!(bytes[at], 0xff, "a JPEG marker at {at}");
        let marker = bytes[at + 1];
        let len = usize::from(u16::from_be_bytes([bytes[at + 2], bytes[at + 3]]));
        if matches!(marker, 0xc0..=0xc3) {
            let h = u16::from_be_bytes([bytes[at + 5], bytes[at + 6]]);
            let w = u16::from_be_bytes([bytes[at + 7], bytes[at + 8]]);
            return (u32::from(w), u32::from(h));
        }
        at += 2 + len;
    }
    panic!("no JPEG start of frame");
}

/// A Tk app in a desktop sandbox driven through the SDK: `click` on its button has its
/// effect (a file it writes, a red button on the next screenshot), `write` types into its
/// field and a `press` of Ctrl+S makes it save what it holds (read back exactly), `scroll`
/// reaches it as wheel clicks both ways, a batch of `actions` runs in order, screenshots are
/// decodable PNG and JPEG of the reported size whose pixels change after an action, and a
/// `step` with `wait_for_change` reports the change it caused.
#[dual]
pub async fn desktop_drives_a_tk_app() {
    local_only!("the local backend's desktop");
    let server = common::server();
    let sb = desktop_sandbox(&server, "desktop-tk").await;
    let display = sh(&sb, "echo $DISPLAY").await;
    assert_eq!(display.trim(), ":0");
    start_app(&sb).await;
    let desktop = sb.desktop();

    let before = desktop.screenshot(ImageFormat::Png).await.unwrap();
    assert_eq!((before.width, before.height), (1280, 800));
    let (w, h, pixels_before) = decode_png(&before);
    assert_eq!((w, h), (1280, 800));

    desktop
        .click(BUTTON.0, BUTTON.1, MouseButton::Left)
        .await
        .unwrap();
    let got = app_file(&sb, "clicked", Some("1")).await;
    assert_eq!(got, "1");
    // the app repaints after the click: poll until the frame shows it
    let mut pixels_after = pixels_before.clone();
    for _ in 0..100 {
        let after = desktop.screenshot(ImageFormat::Png).await.unwrap();
        let (w, h, p) = decode_png(&after);
        assert_eq!((w, h), (after.width, after.height));
        pixels_after = p;
        if pixels_after != pixels_before {
            break;
        }
        crate::flavor::sleep(Duration::from_millis(100)).await;
    }
    assert_ne!(
        pixels_after, pixels_before,
        "the screen did not change after the click"
    );
    // the button's centre turned red (#d04040) while the background stayed white
    let bpp = pixels_after.len() / (1280 * 800);
    let px = |p: &[u8], (x, y): (u32, u32)| {
        let at = (y as usize * 1280 + x as usize) * bpp;
        (p[at], p[at + 1], p[at + 2])
    };
    assert_eq!(px(&pixels_after, (30, 30)), (0xd0, 0x40, 0x40));
    assert_eq!(px(&pixels_after, (600, 300)), (0xff, 0xff, 0xff));

    let jpeg = desktop.screenshot(ImageFormat::Jpeg).await.unwrap();
    assert_eq!(jpeg.format, ImageFormat::Jpeg);
    assert_eq!(jpeg_size(&jpeg.bytes), (jpeg.width, jpeg.height));
    assert_eq!((jpeg.width, jpeg.height), (1280, 800));

    let text = "Hello, desktop! 42 <>&";
    desktop
        .click(FIELD.0, FIELD.1, MouseButton::Left)
        .await
        .unwrap();
    desktop.write(text).await.unwrap();
    desktop.press("ctrl+s").await.unwrap();
    let got = app_file(&sb, "saved", Some("42")).await;
    assert_eq!(got, text);

    // a typed chord and a batch: select all, replace the text, save again
    desktop
        .actions(&[
            DesktopAction::Click {
                x: FIELD.0,
                y: FIELD.1,
                button: MouseButton::Left,
            },
            DesktopAction::Press(KeyChord::new("End")),
            DesktopAction::Press(KeyChord::new("BackSpace")),
            DesktopAction::Press(KeyChord::new("BackSpace")),
            DesktopAction::Write("€ü".into()),
        ])
        .await
        .unwrap();
    desktop
        .press_chord(KeyChord::new("s").with("ctrl"))
        .await
        .unwrap();
    let want = format!("{}€ü", &text[..text.len() - 2]);
    let got = app_file(&sb, "saved", Some("€ü")).await;
    assert_eq!(got, want);

    desktop.move_mouse(300, 200).await.unwrap();
    desktop.scroll(0, 2).await.unwrap();
    desktop.scroll(0, -1).await.unwrap();
    let got = app_file(&sb, "wheel", Some("down down up")).await;
    assert_eq!(got, "down down up");

    // a step: one click, then wait for the frame to change (the label counts the clicks)
    let step = desktop
        .step(
            StepOptions::new([DesktopAction::Click {
                x: BUTTON.0,
                y: BUTTON.1,
                button: MouseButton::Left,
            }])
            .wait_for_change(true)
            .settle_ms(2000),
        )
        .await
        .unwrap();
    assert_eq!(step.executed, 1);
    assert_eq!(step.action_error, None);
    assert!(step.changed, "the step saw no change: {step:?}");
    let shot = step.screenshot.expect("a frame after the step");
    assert_eq!(decode_png(&shot).0, 1280);
    let got = app_file(&sb, "clicked", Some("2")).await;
    assert_eq!(got, "2");

    // leaving the button repaints it (Tk's hover highlight): a step that waits for that
    // change and then for a quiet screen
    let leave = desktop
        .step(
            StepOptions::new([DesktopAction::Move { x: 900, y: 700 }])
                .wait_for_change(true)
                .settle_ms(2000)
                .quiet_ms(200),
        )
        .await
        .unwrap();
    assert!(
        leave.changed,
        "leaving the button did not repaint it: {leave:?}"
    );
    // a step that changes nothing reports no change
    let still = desktop
        .step(
            StepOptions::new([DesktopAction::Move { x: 950, y: 750 }])
                .wait_for_change(true)
                .settle_ms(300),
        )
        .await
        .unwrap();
    assert_eq!(still.executed, 1);
    assert!(
        !still.changed,
        "a pointer move over the empty screen changed it"
    );
    sb.kill().await.unwrap();
}

/// `resize` restarts the virtual screen at the new size: screenshots have it, and input
/// still works on the new screen (a GUI app started after the resize gets the clicks). A
/// display too large for the sandbox's memory is refused and changes nothing.
#[dual]
pub async fn desktop_resize_changes_the_screenshot_size() {
    local_only!("the local backend's desktop");
    let server = common::server();
    let sb = desktop_sandbox(&server, "desktop-resize").await;
    let desktop = sb.desktop();
    desktop.resize(1024, 768).await.unwrap();
    let shot = desktop.screenshot(ImageFormat::Png).await.unwrap();
    assert_eq!((shot.width, shot.height), (1024, 768));
    assert_eq!((decode_png(&shot).0, decode_png(&shot).1), (1024, 768));
    let jpeg = desktop.screenshot(ImageFormat::Jpeg).await.unwrap();
    assert_eq!(jpeg_size(&jpeg.bytes), (1024, 768));
    // a coordinate beyond the new screen is refused by the server
    let err = desktop
        .click(1100, 10, MouseButton::Left)
        .await
        .unwrap_err();
    assert_eq!(err.status_code(), Some(400), "{err}");
    assert_eq!(err.code(), Some("out_of_range"), "{err}");
    start_app(&sb).await;
    desktop
        .click(BUTTON.0, BUTTON.1, MouseButton::Left)
        .await
        .unwrap();
    let got = app_file(&sb, "clicked", Some("1")).await;
    assert_eq!(got, "1");
    desktop.resize(640, 480).await.unwrap();
    let small = desktop.screenshot(ImageFormat::Png).await.unwrap();
    assert_eq!(decode_png(&small).0, 640);
    assert_eq!(small.height, 480);
    // a display the sandbox's memory cannot hold is refused, and the display stays as it is
    let err = desktop.resize(8192, 8192).await.unwrap_err();
    assert_eq!(err.status_code(), Some(400), "{err}");
    assert_eq!(err.code(), Some("failed_precondition"), "{err}");
    assert!(err.to_string().contains("MiB"), "{err}");
    let same = desktop.screenshot(ImageFormat::Png).await.unwrap();
    assert_eq!((same.width, same.height), (640, 480));
    sb.kill().await.unwrap();
}

/// A shell command printing the pids of the sandbox's processes whose command line starts
/// with `prefix`.
fn pid_of(prefix: &str) -> String {
    format!(
        "for p in /proc/[0-9]*; do \
           if tr '\\0' ' ' < $p/cmdline 2>/dev/null | grep -q '^{prefix}'; then \
             echo ${{p#/proc/}}; \
           fi; \
         done"
    )
}

/// A fake X server a hostile sandbox puts on its display socket: it answers every
/// connection with a "success" setup of 256 KiB of random bytes and then never answers again.
const FAKE_X: &str = r#"
import os, socket, struct
s = socket.socket(socket.AF_UNIX)
s.bind("/tmp/.X11-unix/X0")
s.listen(8)
open("/tmp/fake-x-ready", "w").write("1")
held = []
while True:
    c, _ = s.accept()
    held.append(c)
    try:
        c.recv(12)
        c.sendall(b"\x01\x00\x0b\x00\x00\x00" + struct.pack("<H", 0xffff) + os.urandom(0xffff * 4))
    except OSError:
        pass
"#;

/// A hostile process inside a desktop sandbox attacks the desktop's X client. It cannot
/// reach the helper's pipes to forge its answers to the backend (opening the helper's
/// stdout through `/proc` is refused). It moves the X server's socket aside, puts a fake X
/// server in its place (random bytes for a setup, then silence) and kills the helper: the
/// calls that follow get Connect errors (`unavailable`, 503) within the helper's deadline,
/// the backend keeps serving, and once the socket is back the desktop works again. Killing
/// the X server costs at most one `unavailable` call: the next gets a fresh one.
#[dual]
pub async fn desktop_survives_a_hostile_x_server_in_the_sandbox() {
    local_only!("the local backend's desktop");
    let server = common::server();
    let sb = desktop_sandbox(&server, "desktop-hostile").await;
    let desktop = sb.desktop();
    let first = desktop.screenshot(ImageFormat::Png).await.unwrap();
    assert_eq!(first.width, 1280);
    let pid = sh(&sb, &pid_of("/tmp/.superserve-desktop-")).await;
    let pid = pid.trim();
    assert!(!pid.is_empty(), "no desktop helper in the sandbox");
    let forge = sb
        .commands()
        .run(&format!("printf '\\377\\377\\377\\377' > /proc/{pid}/fd/1"))
        .await
        .unwrap();
    assert_ne!(
        forge.exit_code, 0,
        "the sandbox wrote into the helper's pipe"
    );
    assert!(
        forge.stderr.contains("Permission denied"),
        "{}",
        forge.stderr
    );

    sb.files().write("/tmp/fake_x.py", FAKE_X).await.unwrap();
    sh(
        &sb,
        "mv /tmp/.X11-unix/X0 /tmp/.X11-unix/X0.real && \
         (nohup python3 /tmp/fake_x.py >/tmp/fake-x.log 2>&1 & echo $! > /tmp/fake-x.pid) && \
         for i in $(seq 100); do test -e /tmp/fake-x-ready && break; sleep 0.1; done && \
         test -e /tmp/fake-x-ready",
    )
    .await;
    sh(&sb, &format!("kill -9 {pid}")).await;
    for _ in 0..2 {
        let err = desktop.screenshot(ImageFormat::Png).await.unwrap_err();
        assert_eq!(err.code(), Some("unavailable"), "{err}");
        assert_eq!(err.status_code(), Some(503), "{err}");
    }
    let err = desktop.click(10, 10, MouseButton::Left).await.unwrap_err();
    assert_eq!(err.code(), Some("unavailable"), "{err}");
    // the backend still serves: another sandbox's desktop works meanwhile
    let other = desktop_sandbox(&server, "desktop-bystander").await;
    let shot = other.desktop().screenshot(ImageFormat::Jpeg).await.unwrap();
    assert_eq!(jpeg_size(&shot.bytes), (1280, 800));
    other.kill().await.unwrap();

    sh(
        &sb,
        "kill $(cat /tmp/fake-x.pid); rm -f /tmp/.X11-unix/X0 && \
         mv /tmp/.X11-unix/X0.real /tmp/.X11-unix/X0",
    )
    .await;
    let again = desktop.screenshot(ImageFormat::Png).await.unwrap();
    assert_eq!((decode_png(&again).0, again.height), (1280, 800));

    // the sandbox kills its X server: a call that finds the display gone is `unavailable`
    // (or, once the backend has seen the exit, served by a fresh X server); the next works
    let xvfb = sh(&sb, &pid_of("Xvfb ")).await;
    sh(&sb, &format!("kill -9 {}", xvfb.trim())).await;
    if let Err(err) = desktop.screenshot(ImageFormat::Png).await {
        assert_eq!(err.code(), Some("unavailable"), "{err}");
        assert_eq!(err.status_code(), Some(503), "{err}");
    }
    let fresh = desktop.screenshot(ImageFormat::Png).await.unwrap();
    assert_eq!((fresh.width, fresh.height), (1280, 800));
    sb.kill().await.unwrap();
}

/// The desktop follows the sandbox's lifecycle: a pause and resume keep it (the Tk app
/// still answers clicks), and after a restart of the backend connecting resumes the sandbox
/// with a fresh desktop at the boot size (the sandbox is still a desktop sandbox).
#[dual]
pub async fn desktop_survives_pause_resume_and_a_backend_restart() {
    local_only!("the local backend's desktop and restarts");
    let dir = common::temp_path("superserve-desktop-restart");
    let key = "ss_live_desktoprestartkey000000000000";
    let id;
    {
        let server = LocalServer::builder()
            .data_dir(&dir)
            .api_key(key)
            .start()
            .unwrap();
        let sb = desktop_sandbox(&server, "desktop-lifecycle").await;
        start_app(&sb).await;
        sb.pause().await.unwrap();
        sb.resume().await.unwrap();
        sb.desktop()
            .click(BUTTON.0, BUTTON.1, MouseButton::Left)
            .await
            .unwrap();
        let got = app_file(&sb, "clicked", Some("1")).await;
        assert_eq!(got, "1");
        sb.desktop().resize(800, 600).await.unwrap();
        id = sb.id().to_owned();
        server.shutdown();
    }
    let server = LocalServer::builder()
        .data_dir(&dir)
        .api_key(key)
        .start()
        .unwrap();
    let sb = Sandbox::connect_with_config(&server.config(), &id)
        .await
        .unwrap();
    let shot = sb.desktop().screenshot(ImageFormat::Png).await.unwrap();
    assert_eq!((shot.width, shot.height), (1280, 800));
    let display = sh(&sb, "echo $DISPLAY").await;
    assert_eq!(display.trim(), ":0");
    sb.kill().await.unwrap();
    server.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A sandbox not made from a desktop template answers every desktop method with the
/// documented Connect error: `failed_precondition`, HTTP 400, a message naming the template.
#[dual]
pub async fn desktop_calls_on_a_non_desktop_sandbox_are_refused() {
    local_only!("the local backend's desktop");
    let server = common::server();
    let sb = crate::suite::make(&server, "not-a-desktop").await;
    let desktop = sb.desktop();
    let shot = desktop.screenshot(ImageFormat::Png).await.unwrap_err();
    let click = desktop.click(1, 1, MouseButton::Left).await.unwrap_err();
    let write = desktop.write("x").await.unwrap_err();
    let resize = desktop.resize(800, 600).await.unwrap_err();
    let step = StepOptions::new([DesktopAction::Scroll { dx: 0, dy: 1 }]);
    let step = desktop.step(step).await.unwrap_err();
    let errors: [Error; 5] = [shot, click, write, resize, step];
    for e in errors {
        assert_eq!(e.status_code(), Some(400), "{e}");
        assert_eq!(e.code(), Some("failed_precondition"), "{e}");
        assert!(e.to_string().contains(DESKTOP), "{e}");
    }
    // the sandbox itself is unaffected
    let ok = sh(&sb, "echo ok").await;
    assert_eq!(ok.trim(), "ok");
    sb.kill().await.unwrap();
}

/// Raw requests the SDK would never send get Connect errors from the server, not a crash:
/// a resize out of range or not a multiple of 8, coordinates out of range, a malformed body,
/// an unknown method; the desktop keeps answering afterwards.
#[dual]
pub async fn desktop_bad_raw_requests_get_connect_errors() {
    local_only!("the local backend's desktop");
    let server = common::server();
    let sb = desktop_sandbox(&server, "desktop-raw").await;
    let desktop = sb.desktop();
    // a call through the SDK first, so the sandbox's token is current for the raw ones
    desktop.move_mouse(1, 1).await.unwrap();
    let token = common::access_token(server.base_url(), server.api_key(), sb.id());
    let call = |method: &str, body: &str| -> (u16, serde_json::Value) {
        let (status, resp) = raw_http(
            &authority(server.sandbox_url()),
            &format!(
                "POST /superserve.boxd.v1.DesktopService/{method} HTTP/1.1\r\nhost: x\r\n\
                 x-superserve-sandbox-id: {}\r\nx-access-token: {token}\r\n\
                 content-type: application/json",
                sb.id()
            ),
            body.as_bytes(),
            Duration::from_secs(60),
        );
        let body = resp.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        let v = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {resp}"));
        (status, v)
    };
    for body in [
        r#"{"width":1281,"height":800}"#,
        r#"{"width":8200,"height":800}"#,
        r#"{"width":312,"height":800}"#,
        r#"{"width":1280,"height":199}"#,
        r#"{"width":-8,"height":800}"#,
        r#"{"width":1280}"#,
    ] {
        let (status, v) = call("Resize", body);
        assert_eq!(status, 400, "{body}: {v}");
        assert_eq!(v["code"], "out_of_range", "{body}: {v}");
        assert!(
            v["message"].as_str().unwrap().contains("multiple of 8"),
            "{v}"
        );
    }
    for (method, body, status, code) in [
        (
            "Resize",
            r#"{"width":"wide","height":800}"#,
            400,
            "invalid_argument",
        ),
        (
            "SendPointer",
            r#"{"x":2000,"y":10,"action":"POINTER_ACTION_CLICK"}"#,
            400,
            "out_of_range",
        ),
        (
            "SendPointer",
            r#"{"x":-1,"y":10,"action":"POINTER_ACTION_MOVE"}"#,
            400,
            "out_of_range",
        ),
        (
            "Step",
            r#"{"actions":[{"scroll":{"dy":1}}],"settleMs":5000}"#,
            400,
            "out_of_range",
        ),
        ("Screenshot", "{not json", 400, "invalid_argument"),
        ("Teleport", "{}", 501, "unimplemented"),
    ] {
        let (got, v) = call(method, body);
        assert_eq!(
            (got, v["code"].as_str()),
            (status, Some(code)),
            "{method} {body}: {v}"
        );
    }
    // nothing reached the display, which still answers at its size
    let (status, v) = call("Screenshot", "{}");
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        (v["width"].as_u64(), v["height"].as_u64()),
        (Some(1280), Some(800))
    );
    sb.kill().await.unwrap();
}

/// `get_stream_url` publishes port 6080 (x11vnc + websockify serving noVNC in the sandbox)
/// and its URL, opened in headless Chromium through the preview proxy, shows the noVNC page
/// connected to the desktop.
#[dual]
pub async fn desktop_stream_url_opens_connected_in_chromium() {
    local_only!("the local backend's preview proxy and desktop");
    let server = common::server();
    let sb = desktop_sandbox(&server, "desktop-stream").await;
    let url = sb.desktop().get_stream_url(false).await.unwrap();
    assert!(
        url.contains("/vnc.html?autoconnect=1&resize=scale"),
        "{url}"
    );
    // the page's own state, read in the browser until noVNC says it is connected (its root
    // element's class goes noVNC_connecting -> noVNC_connected once the VNC handshake is done)
    let state = chromium_eval_until(
        &url,
        "document.title + ' ' + document.documentElement.className",
        "noVNC_connected",
        Duration::from_secs(60),
    );
    assert!(state.contains("noVNC"), "not the noVNC page: {state}");
    assert!(
        state.contains("noVNC_connected"),
        "noVNC did not connect to the desktop: {state}"
    );
    let view = sb.desktop().get_stream_url(true).await.unwrap();
    assert!(view.ends_with("&view_only=1"), "{view}");
    sb.kill().await.unwrap();
}
