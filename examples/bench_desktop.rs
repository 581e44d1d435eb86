//! Benchmark of the local backend's desktop (`superserve/desktop` sandboxes): screenshot
//! latency (PNG and JPEG of the 1280×800 display, p50 and p90 through the SDK) and a `step`
//! round trip (one click, 50 ms settle, a screenshot, in one request), against, as the
//! baseline measured in the same run, the raw capture of the same frame inside the backend
//! (`LocalServer::desktop_capture`: the in-sandbox helper's `GetImage` and RGB conversion and
//! the raw frame's transfer to the backend, without encoding or HTTP). The screen shows a Tk
//! window full of text and coloured bars, like a real desktop (an empty screen would
//! compress for free). The kinds of measurement alternate, so all see the same machine load.
//!
//! ```text
//! cargo run --release --example bench_desktop --features blocking,local
//! ```

use std::time::{Duration, Instant};

use superserve::{CreateOptions, DesktopAction, ImageFormat, MouseButton, Sandbox, StepOptions};

const ROUNDS: usize = 10;
const PER_ROUND: usize = 5;
const SETTLE_MS: u32 = 50;

/// A full-screen Tk window: 50 lines of text over coloured bars; writes /tmp/ready once shown.
const APP: &str = r##"
import tkinter as tk
root = tk.Tk()
root.geometry("1280x800+0+0")
c = tk.Canvas(root, width=1280, height=800, highlightthickness=0, bg="#f4f4f4")
c.place(x=0, y=0)
colours = ["#e06c75", "#98c379", "#61afef", "#c678dd", "#e5c07b", "#56b6c2"]
for i in range(50):
    y = 8 + i * 16
    c.create_rectangle(0, y, 40 + (i * 97) % 400, y + 12, fill=colours[i % 6], width=0)
    text = f"{i:02d}  the quick brown fox jumps over the lazy dog  " * 2
    c.create_text(460, y + 6, text=text[: 40 + (i * 13) % 60], anchor="w", font=("DejaVu Sans Mono", 10))
root.after(500, lambda: open("/tmp/ready", "w").write("1"))
root.mainloop()
"##;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = superserve::local::LocalServer::start()?;
    let sb = Sandbox::create_with_config(
        &server.config(),
        CreateOptions::new("bench-desktop").from_template("superserve/desktop"),
    )?;
    sb.files().write("/tmp/app.py", APP)?;
    sb.commands()
        .run("nohup python3 /tmp/app.py >/tmp/app.log 2>&1 &")?
        .check()?;
    let mut shown = false;
    for _ in 0..200 {
        if sb.commands().run("test -e /tmp/ready")?.exit_code == 0 {
            shown = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(shown, "the Tk app did not start (python3-tk installed?)");
    let desktop = sb.desktop();

    let png_size = desktop.screenshot(ImageFormat::Png)?.bytes.len();
    let jpeg_size = desktop.screenshot(ImageFormat::Jpeg)?.bytes.len();
    // warm-up
    for _ in 0..3 {
        server.desktop_capture(sb.id())?;
        desktop.screenshot(ImageFormat::Png)?;
        desktop.screenshot(ImageFormat::Jpeg)?;
    }
    let click = DesktopAction::Click {
        x: 1200,
        y: 780,
        button: MouseButton::Left,
    };
    let (mut raw, mut png, mut jpeg, mut step, mut step_jpeg) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut step_capture = Vec::new();
    for _ in 0..ROUNDS {
        for _ in 0..PER_ROUND {
            let (w, h, t) = server.desktop_capture(sb.id())?;
            assert_eq!((w, h), (1280, 800));
            raw.push(ms(t));
        }
        for _ in 0..PER_ROUND {
            let t = Instant::now();
            let s = desktop.screenshot(ImageFormat::Png)?;
            png.push(ms(t.elapsed()));
            assert_eq!((s.width, s.height), (1280, 800));
        }
        for _ in 0..PER_ROUND {
            let t = Instant::now();
            desktop.screenshot(ImageFormat::Jpeg)?;
            jpeg.push(ms(t.elapsed()));
        }
        for (format, times) in [
            (ImageFormat::Png, &mut step),
            (ImageFormat::Jpeg, &mut step_jpeg),
        ] {
            for _ in 0..PER_ROUND {
                let t = Instant::now();
                let r = desktop.step(
                    StepOptions::new([click.clone()])
                        .settle_ms(SETTLE_MS)
                        .format(format),
                )?;
                times.push(ms(t.elapsed()));
                assert!(r.screenshot.is_some(), "{r:?}");
                if format == ImageFormat::Png {
                    if let Some(timings) = r.timings {
                        step_capture.push(timings.capture_ms as f64);
                    }
                }
            }
        }
    }
    for v in [
        &mut raw,
        &mut png,
        &mut jpeg,
        &mut step,
        &mut step_jpeg,
        &mut step_capture,
    ] {
        v.sort_by(f64::total_cmp);
    }
    let base = percentile(&raw, 0.5);
    let n = raw.len();
    println!("desktop 1280x800, {n} of each (ms; ratio = p50 / raw capture p50):");
    println!("                                          p50       p90    ratio");
    for (name, t) in [
        ("raw capture in the backend (baseline)", &raw),
        ("screenshot PNG", &png),
        ("screenshot JPEG", &jpeg),
        ("step: click + 50 ms settle + PNG", &step),
        ("step: click + 50 ms settle + JPEG", &step_jpeg),
    ] {
        let p50 = percentile(t, 0.5);
        println!(
            "  {name:38}{p50:8.2}  {:8.2}  {:6.2}x",
            percentile(t, 0.9),
            p50 / base
        );
    }
    if !step_capture.is_empty() {
        println!(
            "  step's own capture + PNG encode (server timing, p50): {:.0} ms",
            percentile(&step_capture, 0.5)
        );
    }
    println!(
        "  step PNG minus settle, against a screenshot PNG (p50): {:+.2} ms",
        percentile(&step, 0.5) - f64::from(SETTLE_MS) - percentile(&png, 0.5)
    );
    println!("encoded frame: PNG {png_size} bytes, JPEG {jpeg_size} bytes (raw RGB 3072000)");
    sb.kill()?;
    Ok(())
}
