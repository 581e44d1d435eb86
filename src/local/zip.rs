//! A streaming ZIP writer: stored (uncompressed) entries with data descriptors, ZIP64 where
//! sizes or offsets need it. Written in one pass, so a directory is streamed as it is read.

use std::io::{self, Read, Write};

use super::time::utc_parts;

const LOCAL_SIG: u32 = 0x0403_4b50;
const DESCRIPTOR_SIG: u32 = 0x0807_4b50;
const CENTRAL_SIG: u32 = 0x0201_4b50;
const EOCD_SIG: u32 = 0x0605_4b50;
const ZIP64_EOCD_SIG: u32 = 0x0606_4b50;
const ZIP64_LOCATOR_SIG: u32 = 0x0706_4b50;
const FLAG_DESCRIPTOR: u16 = 0x0008;
const FLAG_UTF8: u16 = 0x0800;
/// "Made by" host Unix (3), spec version 4.5.
const MADE_BY: u16 = (3 << 8) | 45;
const MAX32: u64 = 0xffff_ffff;

fn crc_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    for (i, slot) in table.iter_mut().enumerate() {
        let mut c = i as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
        *slot = c;
    }
    table
}

/// Incremental CRC-32 (IEEE), as ZIP uses.
pub(crate) struct Crc32 {
    table: [u32; 256],
    value: u32,
}

impl Crc32 {
    pub(crate) fn new() -> Crc32 {
        Crc32 {
            table: crc_table(),
            value: 0xffff_ffff,
        }
    }

    pub(crate) fn update(&mut self, data: &[u8]) {
        let mut c = self.value;
        for &b in data {
            c = self.table[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8);
        }
        self.value = c;
    }

    pub(crate) fn finish(&self) -> u32 {
        self.value ^ 0xffff_ffff
    }
}

/// MS-DOS (time, date) of a Unix time, UTC; clamped to 1980..=2107.
fn dos_time(unix_secs: i64) -> (u16, u16) {
    let (y, mo, d, h, mi, s) = utc_parts(unix_secs);
    if y < 1980 {
        return (0, (1 << 5) | 1);
    }
    let y = y.min(2107) as u16;
    let time = ((h as u16) << 11) | ((mi as u16) << 5) | ((s as u16) / 2);
    let date = ((y - 1980) << 9) | ((mo as u16) << 5) | (d as u16);
    (time, date)
}

struct Counting<W> {
    inner: W,
    written: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

struct Central {
    name: Vec<u8>,
    flags: u16,
    time: u16,
    date: u16,
    crc: u32,
    size: u64,
    offset: u64,
    external: u32,
    needed: u16,
}

/// Writes a ZIP archive to `W` entry by entry.
pub(crate) struct ZipWriter<W: Write> {
    out: Counting<W>,
    entries: Vec<Central>,
}

fn name_flags(name: &[u8]) -> u16 {
    if std::str::from_utf8(name).is_ok() {
        FLAG_UTF8
    } else {
        0
    }
}

impl<W: Write> ZipWriter<W> {
    pub(crate) fn new(out: W) -> Self {
        ZipWriter {
            out: Counting {
                inner: out,
                written: 0,
            },
            entries: Vec::new(),
        }
    }

    fn u16(&mut self, v: u16) -> io::Result<()> {
        self.out.write_all(&v.to_le_bytes())
    }
    fn u32(&mut self, v: u32) -> io::Result<()> {
        self.out.write_all(&v.to_le_bytes())
    }
    fn u64(&mut self, v: u64) -> io::Result<()> {
        self.out.write_all(&v.to_le_bytes())
    }

    /// A directory entry; `name` without the trailing `/` (added here).
    pub(crate) fn add_dir(&mut self, name: &[u8], mtime: i64, mode: u32) -> io::Result<()> {
        let mut name = name.to_vec();
        name.push(b'/');
        let offset = self.out.written;
        let (time, date) = dos_time(mtime);
        let flags = name_flags(&name);
        self.u32(LOCAL_SIG)?;
        self.u16(20)?;
        self.u16(flags)?;
        self.u16(0)?;
        self.u16(time)?;
        self.u16(date)?;
        self.u32(0)?;
        self.u32(0)?;
        self.u32(0)?;
        self.u16(name.len() as u16)?;
        self.u16(0)?;
        self.out.write_all(&name)?;
        self.entries.push(Central {
            name,
            flags,
            time,
            date,
            crc: 0,
            size: 0,
            offset,
            external: ((0o040_000 | (mode & 0o7777)) << 16) | 0x10,
            needed: 20,
        });
        Ok(())
    }

    /// A file entry, its bytes read from `reader` (at most `expected` bytes are taken:
    /// a file growing while it is read is cut at the size it had when it was listed).
    pub(crate) fn add_file(
        &mut self,
        name: &[u8],
        mtime: i64,
        mode: u32,
        expected: u64,
        reader: &mut dyn Read,
    ) -> io::Result<()> {
        let zip64 = expected >= MAX32;
        let offset = self.out.written;
        let (time, date) = dos_time(mtime);
        let flags = FLAG_DESCRIPTOR | name_flags(name);
        let needed = if zip64 { 45 } else { 20 };
        self.u32(LOCAL_SIG)?;
        self.u16(needed)?;
        self.u16(flags)?;
        self.u16(0)?; // stored
        self.u16(time)?;
        self.u16(date)?;
        self.u32(0)?; // crc (in the descriptor)
        if zip64 {
            self.u32(MAX32 as u32)?;
            self.u32(MAX32 as u32)?;
        } else {
            self.u32(0)?;
            self.u32(0)?;
        }
        self.u16(name.len() as u16)?;
        self.u16(if zip64 { 20 } else { 0 })?;
        self.out.write_all(name)?;
        if zip64 {
            self.u16(0x0001)?;
            self.u16(16)?;
            self.u64(0)?;
            self.u64(0)?;
        }
        let mut crc = Crc32::new();
        let mut size = 0u64;
        let mut buf = vec![0u8; 64 * 1024];
        let mut limited = reader.take(expected);
        loop {
            let n = match limited.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            crc.update(&buf[..n]);
            self.out.write_all(&buf[..n])?;
            size += n as u64;
        }
        let crc = crc.finish();
        self.u32(DESCRIPTOR_SIG)?;
        self.u32(crc)?;
        if zip64 {
            self.u64(size)?;
            self.u64(size)?;
        } else {
            self.u32(size as u32)?;
            self.u32(size as u32)?;
        }
        self.entries.push(Central {
            name: name.to_vec(),
            flags,
            time,
            date,
            crc,
            size,
            offset,
            external: (0o100_000 | (mode & 0o7777)) << 16,
            needed,
        });
        Ok(())
    }

    /// Writes the central directory and end records; returns the sink.
    pub(crate) fn finish(mut self) -> io::Result<W> {
        let cd_start = self.out.written;
        let entries = std::mem::take(&mut self.entries);
        for e in &entries {
            let big_size = e.size >= MAX32;
            let big_offset = e.offset >= MAX32;
            let mut extra = Vec::new();
            if big_size {
                extra.extend_from_slice(&e.size.to_le_bytes());
                extra.extend_from_slice(&e.size.to_le_bytes());
            }
            if big_offset {
                extra.extend_from_slice(&e.offset.to_le_bytes());
            }
            let needed = if big_size || big_offset { 45 } else { e.needed };
            self.u32(CENTRAL_SIG)?;
            self.u16(MADE_BY)?;
            self.u16(needed)?;
            self.u16(e.flags)?;
            self.u16(0)?;
            self.u16(e.time)?;
            self.u16(e.date)?;
            self.u32(e.crc)?;
            let s32 = if big_size {
                MAX32 as u32
            } else {
                e.size as u32
            };
            self.u32(s32)?;
            self.u32(s32)?;
            self.u16(e.name.len() as u16)?;
            self.u16(if extra.is_empty() {
                0
            } else {
                extra.len() as u16 + 4
            })?;
            self.u16(0)?; // comment
            self.u16(0)?; // disk
            self.u16(0)?; // internal attributes
            self.u32(e.external)?;
            self.u32(if big_offset {
                MAX32 as u32
            } else {
                e.offset as u32
            })?;
            self.out.write_all(&e.name)?;
            if !extra.is_empty() {
                self.u16(0x0001)?;
                self.u16(extra.len() as u16)?;
                self.out.write_all(&extra)?;
            }
        }
        let cd_end = self.out.written;
        let cd_size = cd_end - cd_start;
        let count = entries.len() as u64;
        let need64 = count >= 0xffff || cd_size >= MAX32 || cd_start >= MAX32;
        if need64 {
            self.u32(ZIP64_EOCD_SIG)?;
            self.u64(44)?;
            self.u16(MADE_BY)?;
            self.u16(45)?;
            self.u32(0)?;
            self.u32(0)?;
            self.u64(count)?;
            self.u64(count)?;
            self.u64(cd_size)?;
            self.u64(cd_start)?;
            self.u32(ZIP64_LOCATOR_SIG)?;
            self.u32(0)?;
            self.u64(cd_end)?;
            self.u32(1)?;
        }
        self.u32(EOCD_SIG)?;
        self.u16(0)?;
        self.u16(0)?;
        let c16 = if need64 { 0xffff } else { count as u16 };
        self.u16(c16)?;
        self.u16(c16)?;
        self.u32(if need64 { MAX32 as u32 } else { cd_size as u32 })?;
        self.u32(if need64 {
            MAX32 as u32
        } else {
            cd_start as u32
        })?;
        self.u16(0)?;
        self.out.flush()?;
        Ok(self.out.inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_check_value() {
        let mut c = Crc32::new();
        c.update(b"1234");
        c.update(b"56789");
        assert_eq!(c.finish(), 0xcbf4_3926);
    }

    #[test]
    fn archive_structure() -> io::Result<()> {
        let mut z = ZipWriter::new(Vec::new());
        z.add_dir(b"out", 0, 0o755)?;
        z.add_file(b"out/a.txt", 1_700_000_000, 0o644, 1, &mut &b"A"[..])?;
        // a file that shrank after listing: only what is there is stored
        z.add_file(b"out/b.txt", 1_700_000_000, 0o644, 10, &mut &b"BB"[..])?;
        let zip = z.finish()?;
        assert_eq!(&zip[..4], b"PK\x03\x04");
        // the end record names 3 entries and points at the central directory
        let eocd = zip.len() - 22;
        assert_eq!(&zip[eocd..eocd + 4], b"PK\x05\x06");
        assert_eq!(u16::from_le_bytes([zip[eocd + 10], zip[eocd + 11]]), 3);
        let cd_off = u32::from_le_bytes([
            zip[eocd + 16],
            zip[eocd + 17],
            zip[eocd + 18],
            zip[eocd + 19],
        ]) as usize;
        assert_eq!(&zip[cd_off..cd_off + 4], b"PK\x01\x02");
        // central entry 2 (a.txt) carries the crc of "A" and size 1
        let mut i = cd_off;
        let mut names = Vec::new();
        let mut sizes = Vec::new();
        while &zip[i..i + 4] == b"PK\x01\x02" {
            let n = u16::from_le_bytes([zip[i + 28], zip[i + 29]]) as usize;
            let m = u16::from_le_bytes([zip[i + 30], zip[i + 31]]) as usize;
            names.push(String::from_utf8_lossy(&zip[i + 46..i + 46 + n]).into_owned());
            sizes.push(u32::from_le_bytes([
                zip[i + 24],
                zip[i + 25],
                zip[i + 26],
                zip[i + 27],
            ]));
            i += 46 + n + m;
        }
        assert_eq!(names, ["out/", "out/a.txt", "out/b.txt"]);
        assert_eq!(sizes, [0, 1, 2]);
        Ok(())
    }

    #[test]
    fn dos_times() {
        assert_eq!(dos_time(0), (0, 0x21));
        // 2024-02-29 12:34:56 UTC
        let (t, d) = dos_time(1_709_210_096);
        assert_eq!(d, ((2024 - 1980) << 9) | (2 << 5) | 29);
        assert_eq!(t, (12 << 11) | (34 << 5) | 28);
    }
}
