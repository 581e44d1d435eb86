//! The desktop helper: the X client of a desktop sandbox, started inside it (through its agent,
//! like any command) by the backend.
//!
//! A program of its own (built by `build.rs` with `std` only, embedded in the library) so that
//! the X11 protocol, which a hostile sandbox controls end to end, is parsed inside the sandbox
//! and never in the backend. It connects to the display named on its command line and then
//! answers the backend's requests (see `wire.rs`) on stdin/stdout: frames of the root window
//! (`GetImage`, converted to RGB), their digests, and input through the XTEST extension
//! (pointer motion, buttons, keys by keysym, typed text). Keysyms no key produces are mapped
//! onto a spare keycode first (`ChangeKeyboardMapping`), as `xdotool` does.
//!
//! It removes its own file once it runs (the backend writes a fresh copy for each start).

#![forbid(unsafe_code)]
#![warn(missing_debug_implementations)]

#[path = "../wire.rs"]
#[allow(dead_code)]
mod wire;

use std::collections::HashMap;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use wire::{Reply, Request, MAX_REQUEST};

/// How long the helper tries to reach the display.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest X reply accepted (a frame of the largest display, 8192 × 8192 × 4 bytes, fits).
const MAX_X_REPLY: usize = 8192 * 8192 * 4 + 64;
/// How long a mapping change is given to reach clients (they refresh their keymap when
/// they read the MappingNotify event) before keys that need it are pressed.
const REMAP_SETTLE: Duration = Duration::from_millis(20);
/// `Shift_L`.
const XK_SHIFT_L: u32 = 0xffe1;

fn main() {
    let mut args = std::env::args();
    let me = args.next().unwrap_or_default();
    // the backend wrote this copy for this start only
    let _ = std::fs::remove_file(&me);
    let display = args.next().unwrap_or_else(|| ":0".into());
    let stdout = io::stdout();
    let mut out = BufWriter::with_capacity(1 << 16, stdout.lock());
    let mut x = match X::connect(&display) {
        Ok(x) => x,
        Err(e) => {
            let _ = send(
                &mut out,
                &Reply::Failed(format!("cannot open display {display}: {e}")),
            );
            std::process::exit(1);
        }
    };
    let (w, h) = (u32::from(x.width), u32::from(x.height));
    if send(
        &mut out,
        &Reply::Size {
            width: w,
            height: h,
        },
    )
    .is_err()
    {
        return;
    }
    let stdin = io::stdin();
    let mut input = BufReader::new(stdin.lock());
    loop {
        let req = match read_request(&mut input) {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(e) => {
                let _ = send(&mut out, &Reply::Failed(format!("bad request: {e}")));
                return;
            }
        };
        let reply = match x.handle(req) {
            Ok(r) => r,
            Err(XError::Protocol(msg)) => Reply::Failed(msg),
            Err(XError::Io(e)) => {
                // the display is gone: say so and end (the backend starts a new helper)
                let _ = send(
                    &mut out,
                    &Reply::Lost(format!("display connection lost: {e}")),
                );
                std::process::exit(1);
            }
        };
        if send(&mut out, &reply).is_err() {
            return;
        }
    }
}

fn read_request(r: &mut impl Read) -> io::Result<Option<Request>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_REQUEST {
        return Err(io::Error::other("request too large"));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    Request::decode(&body)
        .map(Some)
        .map_err(|e| io::Error::other(e.to_string()))
}

fn send(out: &mut impl Write, reply: &Reply) -> io::Result<()> {
    out.write_all(&reply.encode())?;
    out.flush()
}

#[derive(Debug)]
enum XError {
    /// The server refused a request (or answered nonsense): reported, the helper goes on.
    Protocol(String),
    /// The connection broke.
    Io(io::Error),
}

impl std::fmt::Display for XError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            XError::Protocol(msg) => f.write_str(msg),
            XError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl From<io::Error> for XError {
    fn from(e: io::Error) -> Self {
        XError::Io(e)
    }
}

type XResult<T> = Result<T, XError>;

fn proto<T>(msg: impl Into<String>) -> XResult<T> {
    Err(XError::Protocol(msg.into()))
}

fn pad4(n: usize) -> usize {
    (4 - n % 4) % 4
}

/// Little-endian field readers over a byte slice, failing instead of panicking.
struct Fields<'a>(&'a [u8]);

impl Fields<'_> {
    fn u8(&self, at: usize) -> XResult<u8> {
        match self.0.get(at) {
            Some(b) => Ok(*b),
            None => proto("short X reply"),
        }
    }
    fn u16(&self, at: usize) -> XResult<u16> {
        Ok(u16::from_le_bytes([self.u8(at)?, self.u8(at + 1)?]))
    }
    fn u32(&self, at: usize) -> XResult<u32> {
        Ok(u32::from_le_bytes([
            self.u8(at)?,
            self.u8(at + 1)?,
            self.u8(at + 2)?,
            self.u8(at + 3)?,
        ]))
    }
}

/// How pixels of the root window are laid out.
#[derive(Debug, Clone, Copy)]
struct PixelFormat {
    bits_per_pixel: u8,
    scanline_pad: u8,
    msb_first: bool,
    red: u32,
    green: u32,
    blue: u32,
}

/// A connection to the X server.
#[derive(Debug)]
struct X {
    r: BufReader<UnixStream>,
    w: BufWriter<UnixStream>,
    /// Sequence number of the last request sent.
    seq: u16,
    root: u32,
    width: u16,
    height: u16,
    format: PixelFormat,
    xtest: u8,
    min_keycode: u8,
    max_keycode: u8,
    /// Keysyms per keycode of `keymap`.
    per: usize,
    /// The core keyboard mapping: `per` keysyms for each keycode from `min_keycode`.
    keymap: Vec<u32>,
    /// Keycodes without keysyms, for keysyms no key produces (used round robin, so a
    /// keycode is only mapped again after every other spare was: a client still reading
    /// the keys typed before sees the mapping they were typed with).
    spare: Vec<u8>,
    next_spare: usize,
    /// Keys held down by `Key` requests: keysym → (keycode, with Shift).
    held: HashMap<u32, (u8, bool)>,
    /// An X error for a request without reply, reported at the next `Sync`.
    pending_error: Option<String>,
}

impl X {
    fn connect(display: &str) -> XResult<X> {
        let number: u32 = display
            .strip_prefix(':')
            .and_then(|d| d.split('.').next())
            .and_then(|d| d.parse().ok())
            .ok_or_else(|| XError::Protocol(format!("unsupported display name {display:?}")))?;
        let path = format!("/tmp/.X11-unix/X{number}");
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        let stream = loop {
            match UnixStream::connect(&path) {
                Ok(s) => break s,
                Err(e) if Instant::now() >= deadline => return Err(e.into()),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        let mut r = BufReader::with_capacity(1 << 16, stream.try_clone()?);
        let mut w = BufWriter::with_capacity(1 << 12, stream);
        // byte order 'l', protocol 11.0, no authorization
        w.write_all(&[b'l', 0, 11, 0, 0, 0, 0, 0, 0, 0, 0, 0])?;
        w.flush()?;
        let mut head = [0u8; 8];
        r.read_exact(&mut head)?;
        let extra = usize::from(u16::from_le_bytes([head[6], head[7]])) * 4;
        let mut setup = vec![0u8; extra];
        r.read_exact(&mut setup)?;
        if head[0] != 1 {
            let reason = setup.get(..usize::from(head[1])).unwrap_or(&[]);
            return proto(format!(
                "the X server refused the connection: {}",
                String::from_utf8_lossy(reason).trim()
            ));
        }
        let s = Fields(&setup);
        let vendor_len = usize::from(s.u16(16)?);
        let formats = usize::from(s.u8(21)?);
        let msb_first = s.u8(22)? == 1;
        let min_keycode = s.u8(26)?;
        let max_keycode = s.u8(27)?;
        let formats_at = 32 + vendor_len + pad4(vendor_len);
        let screen = formats_at + formats * 8;
        let root = s.u32(screen)?;
        let width = s.u16(screen + 20)?;
        let height = s.u16(screen + 22)?;
        let root_visual = s.u32(screen + 32)?;
        let root_depth = s.u8(screen + 38)?;
        let depths = usize::from(s.u8(screen + 39)?);
        let (mut bpp, mut pad) = (0, 0);
        for i in 0..formats {
            let at = formats_at + i * 8;
            if s.u8(at)? == root_depth {
                bpp = s.u8(at + 1)?;
                pad = s.u8(at + 2)?;
            }
        }
        let mut masks = None;
        let mut at = screen + 40;
        for _ in 0..depths {
            let visuals = usize::from(s.u16(at + 2)?);
            at += 8;
            for _ in 0..visuals {
                if s.u32(at)? == root_visual {
                    masks = Some((s.u32(at + 8)?, s.u32(at + 12)?, s.u32(at + 16)?));
                }
                at += 24;
            }
        }
        let Some((red, green, blue)) = masks else {
            return proto("the root visual is not described by the X server");
        };
        if !matches!(bpp, 16 | 24 | 32) || red == 0 || green == 0 || blue == 0 {
            return proto(format!(
                "unsupported root window format: depth {root_depth}, {bpp} bits per pixel"
            ));
        }
        let mut x = X {
            r,
            w,
            seq: 0,
            root,
            width,
            height,
            format: PixelFormat {
                bits_per_pixel: bpp,
                scanline_pad: pad.max(8),
                msb_first,
                red,
                green,
                blue,
            },
            xtest: 0,
            min_keycode,
            max_keycode,
            per: 0,
            keymap: Vec::new(),
            spare: Vec::new(),
            next_spare: 0,
            held: HashMap::new(),
            pending_error: None,
        };
        x.xtest = x.query_extension("XTEST")?;
        x.load_keymap()?;
        Ok(x)
    }

    fn handle(&mut self, req: Request) -> XResult<Reply> {
        match req {
            Request::Size => {
                self.refresh_size()?;
                Ok(Reply::Size {
                    width: u32::from(self.width),
                    height: u32::from(self.height),
                })
            }
            Request::Capture => {
                let rgb = self.capture()?;
                Ok(Reply::Frame {
                    width: u32::from(self.width),
                    height: u32::from(self.height),
                    rgb,
                })
            }
            Request::Digest => {
                let rgb = self.capture()?;
                Ok(Reply::Digest {
                    width: u32::from(self.width),
                    height: u32::from(self.height),
                    digest: digest(&rgb),
                })
            }
            Request::Move { x, y } => {
                self.fake(6, 0, x as i16, y as i16)?;
                Ok(Reply::Done)
            }
            Request::Button { button, down } => {
                if !(1..=7).contains(&button) {
                    return proto(format!("no pointer button {button}"));
                }
                self.fake(if down { 4 } else { 5 }, button, 0, 0)?;
                Ok(Reply::Done)
            }
            Request::Key { keysym, down } => {
                self.key(keysym, down)?;
                Ok(Reply::Done)
            }
            Request::Type { keysyms } => {
                self.type_keysyms(&keysyms)?;
                Ok(Reply::Done)
            }
            Request::WaitPort { port, timeout_ms } => {
                let deadline = Instant::now() + Duration::from_millis(u64::from(timeout_ms));
                let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
                loop {
                    if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500))
                        .is_ok()
                    {
                        return Ok(Reply::Done);
                    }
                    if Instant::now() >= deadline {
                        return Ok(Reply::Failed(format!(
                            "nothing accepts connections on port {port} in the sandbox"
                        )));
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            Request::Sync => {
                self.round_trip()?;
                match self.pending_error.take() {
                    Some(e) => Ok(Reply::Failed(e)),
                    None => Ok(Reply::Done),
                }
            }
        }
    }

    /// Sends one request (its bytes, a multiple of 4 long).
    fn request(&mut self, bytes: &[u8]) -> XResult<u16> {
        self.w.write_all(bytes)?;
        self.seq = self.seq.wrapping_add(1);
        Ok(self.seq)
    }

    /// Flushes and reads until the reply to `seq`: its 32-byte head and the rest. Events are
    /// skipped; errors for other requests are kept for the next `Sync`.
    fn reply(&mut self, seq: u16) -> XResult<(Vec<u8>, Vec<u8>)> {
        self.w.flush()?;
        loop {
            let mut head = vec![0u8; 32];
            self.r.read_exact(&mut head)?;
            let f = Fields(&head);
            let this = f.u16(2)?;
            match head[0] {
                0 => {
                    let msg = format!(
                        "X error {} (request {}.{})",
                        error_name(head[1]),
                        head[10],
                        f.u16(8)?
                    );
                    if this == seq {
                        return Err(XError::Protocol(msg));
                    }
                    self.pending_error.get_or_insert(msg);
                }
                1 => {
                    let extra = f.u32(4)? as usize * 4;
                    if extra > MAX_X_REPLY {
                        return Err(XError::Io(io::Error::other("X reply too large")));
                    }
                    let mut body = vec![0u8; extra];
                    self.r.read_exact(&mut body)?;
                    if this == seq {
                        return Ok((head, body));
                    }
                }
                kind => {
                    // GenericEvent carries more than 32 bytes
                    if kind & 0x7f == 35 {
                        let extra = f.u32(4)? as usize * 4;
                        if extra > MAX_X_REPLY {
                            return Err(XError::Io(io::Error::other("X event too large")));
                        }
                        io::copy(&mut (&mut self.r).take(extra as u64), &mut io::sink())?;
                    }
                }
            }
        }
    }

    fn query_extension(&mut self, name: &str) -> XResult<u8> {
        let n = name.len();
        let len = (8 + n + pad4(n)) / 4;
        let mut b = vec![98, 0];
        b.extend_from_slice(&(len as u16).to_le_bytes());
        b.extend_from_slice(&(n as u16).to_le_bytes());
        b.extend_from_slice(&[0, 0]);
        b.extend_from_slice(name.as_bytes());
        b.resize(len * 4, 0);
        let seq = self.request(&b)?;
        let (head, _) = self.reply(seq)?;
        if head[8] == 0 {
            return proto(format!("the X server has no {name} extension"));
        }
        Ok(head[9])
    }

    /// GetInputFocus as a round trip.
    fn round_trip(&mut self) -> XResult<()> {
        let seq = self.request(&[43, 0, 1, 0])?;
        self.reply(seq).map(drop)
    }

    fn refresh_size(&mut self) -> XResult<()> {
        // GetGeometry of the root window (RandR may have changed it)
        let mut b = vec![14, 0, 2, 0];
        b.extend_from_slice(&self.root.to_le_bytes());
        let seq = self.request(&b)?;
        let (head, _) = self.reply(seq)?;
        let f = Fields(&head);
        let (w, h) = (f.u16(16)?, f.u16(18)?);
        if w == 0 || h == 0 {
            return proto("the root window has no size");
        }
        self.width = w;
        self.height = h;
        Ok(())
    }

    /// The root window as RGB rows.
    fn capture(&mut self) -> XResult<Vec<u8>> {
        self.refresh_size()?;
        let (w, h) = (self.width, self.height);
        // GetImage, ZPixmap, all planes
        let mut b = vec![73, 2, 5, 0];
        b.extend_from_slice(&self.root.to_le_bytes());
        b.extend_from_slice(&0u16.to_le_bytes());
        b.extend_from_slice(&0u16.to_le_bytes());
        b.extend_from_slice(&w.to_le_bytes());
        b.extend_from_slice(&h.to_le_bytes());
        b.extend_from_slice(&u32::MAX.to_le_bytes());
        let seq = self.request(&b)?;
        let (_, data) = self.reply(seq)?;
        let f = self.format;
        let bpp = usize::from(f.bits_per_pixel);
        let pad = usize::from(f.scanline_pad);
        let stride = (usize::from(w) * bpp).div_ceil(pad) * pad / 8;
        let (w, h) = (usize::from(w), usize::from(h));
        if data.len() < stride * h {
            return proto("short GetImage reply");
        }
        let mut rgb = vec![0u8; w * h * 3];
        let standard = f.red == 0xff_0000 && f.green == 0xff00 && f.blue == 0xff;
        for (y, row) in rgb.chunks_exact_mut(w * 3).enumerate() {
            let line = &data[y * stride..y * stride + w * bpp / 8];
            if bpp == 32 && standard && !f.msb_first {
                for (px, src) in row.chunks_exact_mut(3).zip(line.chunks_exact(4)) {
                    px[0] = src[2];
                    px[1] = src[1];
                    px[2] = src[0];
                }
                continue;
            }
            for (px, src) in row.chunks_exact_mut(3).zip(line.chunks_exact(bpp / 8)) {
                let mut v: u32 = 0;
                if f.msb_first {
                    for b in src {
                        v = (v << 8) | u32::from(*b);
                    }
                } else {
                    for b in src.iter().rev() {
                        v = (v << 8) | u32::from(*b);
                    }
                }
                px[0] = channel(v, f.red);
                px[1] = channel(v, f.green);
                px[2] = channel(v, f.blue);
            }
        }
        Ok(rgb)
    }

    /// XTEST FakeInput: `kind` 2/3 key press/release, 4/5 button press/release, 6 motion.
    fn fake(&mut self, kind: u8, detail: u8, x: i16, y: i16) -> XResult<()> {
        let mut b = vec![self.xtest, 2, 9, 0, kind, detail, 0, 0];
        b.extend_from_slice(&0u32.to_le_bytes()); // time: now
        b.extend_from_slice(&self.root.to_le_bytes());
        b.extend_from_slice(&[0; 8]);
        b.extend_from_slice(&x.to_le_bytes());
        b.extend_from_slice(&y.to_le_bytes());
        b.extend_from_slice(&[0; 8]);
        self.request(&b).map(drop)
    }

    fn load_keymap(&mut self) -> XResult<()> {
        if self.max_keycode < self.min_keycode || self.min_keycode < 8 {
            return proto("bad keycode range");
        }
        let count = self.max_keycode - self.min_keycode + 1;
        let b = [101, 0, 2, 0, self.min_keycode, count, 0, 0];
        let seq = self.request(&b)?;
        let (head, body) = self.reply(seq)?;
        let per = usize::from(head[1]);
        if per == 0 || body.len() < per * usize::from(count) * 4 {
            return proto("bad keyboard mapping");
        }
        self.per = per;
        self.keymap = body
            .chunks_exact(4)
            .take(per * usize::from(count))
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        self.spare = (0..usize::from(count))
            .filter(|i| self.keymap[i * per..(i + 1) * per].iter().all(|k| *k == 0))
            .map(|i| self.min_keycode + i as u8)
            .collect();
        Ok(())
    }

    /// The keycode producing `keysym` on the first group, and whether Shift is needed.
    fn find(&self, keysym: u32) -> Option<(u8, bool)> {
        let per = self.per;
        for level in 0..per.min(2) {
            for (i, syms) in self.keymap.chunks_exact(per).enumerate() {
                if syms[level] == keysym {
                    return Some((self.min_keycode + i as u8, level == 1));
                }
            }
        }
        None
    }

    /// Types `keysyms` (press and release each). The keysyms no key produces are mapped
    /// onto spare keycodes before a run of keys is typed, one mapping change and one pause
    /// for the whole run ([`REMAP_SETTLE`]), rather than between keys: a client sees the
    /// mapping change before the keys that need it. A run ends before it would need more
    /// spare keycodes than there are, so nothing is remapped while still to be typed.
    fn type_keysyms(&mut self, keysyms: &[u32]) -> XResult<()> {
        let mut start = 0;
        while start < keysyms.len() {
            let mut remapped = 0;
            let mut end = start;
            while let Some(&k) = keysyms.get(end) {
                if self.find(k).is_none() {
                    if remapped > 0 && remapped >= self.spare.len() {
                        break;
                    }
                    self.remap_only(k)?;
                    remapped += 1;
                }
                end += 1;
            }
            if remapped > 0 {
                self.round_trip()?;
                std::thread::sleep(REMAP_SETTLE);
            }
            for &k in &keysyms[start..end] {
                self.key(k, true)?;
                self.key(k, false)?;
            }
            start = end;
        }
        Ok(())
    }

    /// Maps `keysym` onto a spare keycode and waits until clients can have seen it.
    fn remap(&mut self, keysym: u32) -> XResult<(u8, bool)> {
        let kc = self.remap_only(keysym)?;
        // the mapping must be in place before the key is pressed
        self.round_trip()?;
        std::thread::sleep(REMAP_SETTLE);
        Ok((kc, false))
    }

    /// Maps `keysym` onto a spare keycode (the oldest remapping is reused when all are
    /// taken), without waiting; its keycode.
    fn remap_only(&mut self, keysym: u32) -> XResult<u8> {
        if self.spare.is_empty() {
            return proto(format!(
                "no key produces keysym 0x{keysym:x} and no spare keycode is left to map it"
            ));
        }
        let kc = self.spare[self.next_spare % self.spare.len()];
        self.next_spare = self.next_spare.wrapping_add(1);
        let per = self.per;
        let mut syms = vec![0u32; per];
        syms[0] = keysym;
        if per > 1 {
            syms[1] = keysym;
        }
        let mut b = vec![100, 1];
        b.extend_from_slice(&((2 + per) as u16).to_le_bytes());
        b.extend_from_slice(&[kc, per as u8, 0, 0]);
        for s in &syms {
            b.extend_from_slice(&s.to_le_bytes());
        }
        self.request(&b)?;
        let at = usize::from(kc - self.min_keycode) * per;
        self.keymap[at..at + per].copy_from_slice(&syms);
        Ok(kc)
    }

    fn key(&mut self, keysym: u32, down: bool) -> XResult<()> {
        if !down {
            if let Some((kc, shift)) = self.held.remove(&keysym) {
                self.fake(3, kc, 0, 0)?;
                if shift {
                    self.shift(false)?;
                }
                return Ok(());
            }
        }
        let (kc, shift) = match self.find(keysym) {
            Some(k) => k,
            None => self.remap(keysym)?,
        };
        if down {
            if shift {
                self.shift(true)?;
            }
            self.fake(2, kc, 0, 0)?;
            self.held.insert(keysym, (kc, shift));
        } else {
            self.fake(3, kc, 0, 0)?;
        }
        Ok(())
    }

    fn shift(&mut self, down: bool) -> XResult<()> {
        let Some((kc, _)) = self.find(XK_SHIFT_L) else {
            return proto("no key produces Shift_L");
        };
        self.fake(if down { 2 } else { 3 }, kc, 0, 0)
    }
}

/// An 8-bit channel of pixel `v` under `mask`.
fn channel(v: u32, mask: u32) -> u8 {
    let shift = mask.trailing_zeros();
    let bits = (mask >> shift).count_ones();
    let c = (v & mask) >> shift;
    match bits {
        0 => 0,
        8 => c as u8,
        b if b > 8 => (c >> (b - 8)) as u8,
        b => ((c * 255) / ((1 << b) - 1)) as u8,
    }
}

/// FNV-1a over 64-bit words (the tail byte-wise): equal frames, equal digests.
fn digest(data: &[u8]) -> u64 {
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut words = data.chunks_exact(8);
    for w in &mut words {
        let v = u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
        h = (h ^ v).wrapping_mul(PRIME);
    }
    for b in words.remainder() {
        h = (h ^ u64::from(*b)).wrapping_mul(PRIME);
    }
    h
}

fn error_name(code: u8) -> String {
    let name = match code {
        1 => "BadRequest",
        2 => "BadValue",
        3 => "BadWindow",
        8 => "BadMatch",
        9 => "BadDrawable",
        10 => "BadAccess",
        11 => "BadAlloc",
        16 => "BadLength",
        17 => "BadImplementation",
        _ => return format!("{code}"),
    };
    name.to_owned()
}
