//! Messages between the backend and the desktop helper (the X client inside a desktop
//! sandbox, see `helper/main.rs`).
//!
//! This file is compiled twice: into the library and into the helper program (see
//! `build.rs`), so both ends always agree. It uses `std` only and no `unsafe`. Each message
//! is a little-endian `u32` length, then that many bytes: a kind byte and its fields
//! (`u16`/`u32`/`u64` little-endian; lists as a `u32` count and items; text as a `u32` length
//! and UTF-8 bytes). The helper reads requests on its stdin and answers each with exactly one
//! reply on its stdout, in order.
//!
//! The backend treats every reply as untrusted (the helper runs inside the sandbox): it reads
//! a reply only up to a cap it chose for the request ([`reply_cap`]), and a frame only when
//! its size matches what it announces.

/// Largest request the helper accepts (a `Type` of this many bytes holds 16k keysyms).
pub const MAX_REQUEST: usize = 64 * 1024;
/// Largest error message a reply carries (longer ones are cut).
pub const MAX_MESSAGE: usize = 1024;
/// Largest display side (the API's range).
pub const MAX_SIDE: u32 = 8192;

/// Backend → helper.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// The root window's current size → [`Reply::Size`].
    Size,
    /// The whole root window as RGB → [`Reply::Frame`].
    Capture,
    /// A 64-bit digest of the whole root window → [`Reply::Digest`] (cheap change checks).
    Digest,
    /// Moves the pointer to (x, y) → [`Reply::Done`].
    Move { x: u16, y: u16 },
    /// Presses (`down`) or releases a pointer button (1 left, 2 middle, 3 right, 4-7 wheel)
    /// → [`Reply::Done`].
    Button { button: u8, down: bool },
    /// Presses or releases the key that produces `keysym` (remapping a spare keycode when no
    /// key does; Shift is held with it when the keysym is on the shifted level)
    /// → [`Reply::Done`].
    Key { keysym: u32, down: bool },
    /// Types these keysyms one after another (press and release each) → [`Reply::Done`].
    Type { keysyms: Vec<u32> },
    /// A round trip to the X server: every event sent before it has been processed, and any
    /// X error they caused is reported → [`Reply::Done`] or [`Reply::Failed`].
    Sync,
    /// Waits until something accepts TCP connections on `127.0.0.1:port` in the sandbox, at
    /// most `timeout_ms` → [`Reply::Done`] or [`Reply::Failed`].
    WaitPort { port: u16, timeout_ms: u32 },
}

/// Helper → backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// The request was carried out.
    Done,
    /// It could not be: why.
    Failed(String),
    /// The display's connection broke (the X server is gone): why. The helper ends after it.
    Lost(String),
    /// The root window's size (also the helper's first message once it is connected).
    Size { width: u32, height: u32 },
    /// A frame: `width * height * 3` bytes, rows top to bottom, RGB.
    Frame {
        width: u32,
        height: u32,
        rgb: Vec<u8>,
    },
    /// A digest of the frame and its size.
    Digest {
        width: u32,
        height: u32,
        digest: u64,
    },
}

/// A malformed message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed;

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("malformed desktop helper message")
    }
}

/// The most bytes the reply to `req` may take (its length prefix excluded), given the largest
/// display the backend configured.
pub fn reply_cap(req: &Request, max_width: u32, max_height: u32) -> usize {
    let text = 1 + 4 + MAX_MESSAGE;
    match req {
        Request::Capture => {
            let pixels = (max_width.min(MAX_SIDE) as usize) * (max_height.min(MAX_SIDE) as usize);
            text.max(1 + 8 + 4 + pixels * 3)
        }
        _ => text.max(1 + 16),
    }
}

struct Out(Vec<u8>);

impl Out {
    fn new() -> Out {
        // room for the length prefix, filled in by `finish`
        Out(vec![0; 4])
    }
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    /// A message, cut to [`MAX_MESSAGE`] bytes on a character boundary.
    fn text(&mut self, msg: &str) {
        let mut end = msg.len().min(MAX_MESSAGE);
        while !msg.is_char_boundary(end) {
            end -= 1;
        }
        self.u32(end as u32);
        self.0.extend_from_slice(&msg.as_bytes()[..end]);
    }
    fn finish(mut self) -> Vec<u8> {
        let len = u32::try_from(self.0.len() - 4).unwrap_or(u32::MAX);
        self.0[..4].copy_from_slice(&len.to_le_bytes());
        self.0
    }
}

struct In<'a>(&'a [u8]);

impl In<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], Malformed> {
        if self.0.len() < n {
            return Err(Malformed);
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, Malformed> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, Malformed> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, Malformed> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, Malformed> {
        let lo = u64::from(self.u32()?);
        let hi = u64::from(self.u32()?);
        Ok(lo | (hi << 32))
    }
    fn text(&mut self) -> Result<String, Malformed> {
        let n = self.u32()? as usize;
        if n > MAX_MESSAGE {
            return Err(Malformed);
        }
        Ok(String::from_utf8_lossy(self.take(n)?).into_owned())
    }
    fn end(&self) -> Result<(), Malformed> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(Malformed)
        }
    }
}

impl Request {
    /// The message, length prefix included.
    pub fn encode(&self) -> Vec<u8> {
        let mut o = Out::new();
        match self {
            Request::Size => o.u8(1),
            Request::Capture => o.u8(2),
            Request::Digest => o.u8(3),
            Request::Move { x, y } => {
                o.u8(4);
                o.u16(*x);
                o.u16(*y);
            }
            Request::Button { button, down } => {
                o.u8(5);
                o.u8(*button);
                o.u8(u8::from(*down));
            }
            Request::Key { keysym, down } => {
                o.u8(6);
                o.u32(*keysym);
                o.u8(u8::from(*down));
            }
            Request::Type { keysyms } => {
                o.u8(7);
                o.u32(u32::try_from(keysyms.len()).unwrap_or(u32::MAX));
                for k in keysyms {
                    o.u32(*k);
                }
            }
            Request::Sync => o.u8(8),
            Request::WaitPort { port, timeout_ms } => {
                o.u8(9);
                o.u16(*port);
                o.u32(*timeout_ms);
            }
        }
        o.finish()
    }

    /// Reads a message body (without its length prefix).
    pub fn decode(b: &[u8]) -> Result<Request, Malformed> {
        let mut i = In(b);
        let r = match i.u8()? {
            1 => Request::Size,
            2 => Request::Capture,
            3 => Request::Digest,
            4 => Request::Move {
                x: i.u16()?,
                y: i.u16()?,
            },
            5 => Request::Button {
                button: i.u8()?,
                down: i.u8()? != 0,
            },
            6 => Request::Key {
                keysym: i.u32()?,
                down: i.u8()? != 0,
            },
            7 => {
                let n = i.u32()? as usize;
                if n > i.0.len() / 4 {
                    return Err(Malformed);
                }
                let keysyms = (0..n).map(|_| i.u32()).collect::<Result<_, _>>()?;
                Request::Type { keysyms }
            }
            8 => Request::Sync,
            9 => Request::WaitPort {
                port: i.u16()?,
                timeout_ms: i.u32()?,
            },
            _ => return Err(Malformed),
        };
        i.end()?;
        Ok(r)
    }
}

impl Reply {
    /// The message, length prefix included.
    pub fn encode(&self) -> Vec<u8> {
        let mut o = Out::new();
        match self {
            Reply::Done => o.u8(1),
            Reply::Failed(msg) => {
                o.u8(2);
                o.text(msg);
            }
            Reply::Lost(msg) => {
                o.u8(6);
                o.text(msg);
            }
            Reply::Size { width, height } => {
                o.u8(3);
                o.u32(*width);
                o.u32(*height);
            }
            Reply::Frame { width, height, rgb } => {
                o.u8(4);
                o.u32(*width);
                o.u32(*height);
                o.u32(u32::try_from(rgb.len()).unwrap_or(u32::MAX));
                o.0.extend_from_slice(rgb);
            }
            Reply::Digest {
                width,
                height,
                digest,
            } => {
                o.u8(5);
                o.u32(*width);
                o.u32(*height);
                o.u64(*digest);
            }
        }
        o.finish()
    }

    /// Reads a message body (without its length prefix). A frame must hold exactly
    /// `width * height * 3` bytes, with both sides in 1..=[`MAX_SIDE`].
    pub fn decode(b: &[u8]) -> Result<Reply, Malformed> {
        let mut i = In(b);
        let r = match i.u8()? {
            1 => Reply::Done,
            2 => Reply::Failed(i.text()?),
            6 => Reply::Lost(i.text()?),
            3 => {
                let (width, height) = (i.u32()?, i.u32()?);
                check_size(width, height)?;
                Reply::Size { width, height }
            }
            4 => {
                let (width, height) = (i.u32()?, i.u32()?);
                check_size(width, height)?;
                let n = i.u32()? as usize;
                if n != (width as usize) * (height as usize) * 3 {
                    return Err(Malformed);
                }
                Reply::Frame {
                    width,
                    height,
                    rgb: i.take(n)?.to_vec(),
                }
            }
            5 => {
                let (width, height) = (i.u32()?, i.u32()?);
                check_size(width, height)?;
                Reply::Digest {
                    width,
                    height,
                    digest: i.u64()?,
                }
            }
            _ => return Err(Malformed),
        };
        i.end()?;
        Ok(r)
    }
}

fn check_size(width: u32, height: u32) -> Result<(), Malformed> {
    if (1..=MAX_SIDE).contains(&width) && (1..=MAX_SIDE).contains(&height) {
        Ok(())
    } else {
        Err(Malformed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_replies_round_trip() {
        let requests = [
            Request::Size,
            Request::Capture,
            Request::Digest,
            Request::Move { x: 1279, y: 0 },
            Request::Button {
                button: 5,
                down: true,
            },
            Request::Key {
                keysym: 0x0100_20ac,
                down: false,
            },
            Request::Type {
                keysyms: vec![0x61, 0xff0d],
            },
            Request::Sync,
            Request::WaitPort {
                port: 6080,
                timeout_ms: 15_000,
            },
        ];
        // the backend types text in requests of at most 4096 keysyms: the helper takes them
        let typed = Request::Type {
            keysyms: vec![0x0100_20ac; 4096],
        };
        assert!(typed.encode().len() - 4 <= MAX_REQUEST);
        for r in requests {
            let m = r.encode();
            assert_eq!(
                u32::from_le_bytes([m[0], m[1], m[2], m[3]]) as usize,
                m.len() - 4
            );
            assert_eq!(Request::decode(&m[4..]), Ok(r));
        }
        let replies = [
            Reply::Done,
            Reply::Failed("X error BadValue".into()),
            Reply::Lost("broken pipe".into()),
            Reply::Size {
                width: 1280,
                height: 800,
            },
            Reply::Frame {
                width: 2,
                height: 1,
                rgb: vec![1, 2, 3, 4, 5, 6],
            },
            Reply::Digest {
                width: 8,
                height: 8,
                digest: u64::MAX - 7,
            },
        ];
        for r in replies {
            let m = r.encode();
            assert!(m.len() - 4 <= reply_cap(&Request::Capture, 2, 1));
            assert_eq!(Reply::decode(&m[4..]), Ok(r));
        }
    }

    #[test]
    fn hostile_replies_are_refused() {
        let frame = |w: u32, h: u32, n: u32, data: &[u8]| {
            let mut b = vec![4];
            b.extend_from_slice(&w.to_le_bytes());
            b.extend_from_slice(&h.to_le_bytes());
            b.extend_from_slice(&n.to_le_bytes());
            b.extend_from_slice(data);
            b
        };
        // a frame whose pixels do not match its size, or of a size out of range
        assert_eq!(Reply::decode(&frame(2, 1, 5, &[0; 5])), Err(Malformed));
        assert_eq!(Reply::decode(&frame(2, 1, 6, &[0; 5])), Err(Malformed));
        assert_eq!(Reply::decode(&frame(0, 1, 0, &[])), Err(Malformed));
        assert_eq!(
            Reply::decode(&frame(MAX_SIDE + 8, 1, (MAX_SIDE + 8) * 3, &[])),
            Err(Malformed)
        );
        // trailing bytes, unknown kinds, empty messages, over-long messages
        assert_eq!(Reply::decode(&[1, 0]), Err(Malformed));
        assert_eq!(Reply::decode(&[99]), Err(Malformed));
        assert_eq!(Reply::decode(&[]), Err(Malformed));
        let mut long = vec![2];
        long.extend_from_slice(&(MAX_MESSAGE as u32 + 1).to_le_bytes());
        long.extend(std::iter::repeat_n(b'x', MAX_MESSAGE + 1));
        assert_eq!(Reply::decode(&long), Err(Malformed));
        // a long error is cut on a character boundary when sent
        let m = Reply::Failed("é".repeat(MAX_MESSAGE)).encode();
        match Reply::decode(&m[4..]) {
            Ok(Reply::Failed(s)) => assert!(s.len() <= MAX_MESSAGE && s.chars().all(|c| c == 'é')),
            other => panic!("{other:?}"),
        }
        // a Type request claiming more keysyms than it carries
        let mut t = vec![7];
        t.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(Request::decode(&t), Err(Malformed));
        // only a capture may be large: every other reply is capped near an error message
        assert!(reply_cap(&Request::Size, 8192, 8192) < 2048);
        assert_eq!(
            reply_cap(&Request::Capture, 1280, 800),
            1 + 8 + 4 + 1280 * 800 * 3
        );
    }
}
