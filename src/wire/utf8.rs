//! Incremental UTF-8 decoding: multi-byte characters split across chunks are joined; invalid
//! bytes become U+FFFD.

#[derive(Default)]
pub(crate) struct Utf8Decoder {
    pending: Vec<u8>,
}

impl Utf8Decoder {
    /// Decodes what can be decoded of `pending + chunk`, keeping an incomplete tail.
    pub(crate) fn decode(&mut self, chunk: &[u8]) -> String {
        self.pending.extend_from_slice(chunk);
        let mut out = String::new();
        let mut rest: &[u8] = &self.pending;
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    rest = &[];
                    break;
                }
                Err(e) => {
                    let (good, bad) = rest.split_at(e.valid_up_to());
                    // valid_up_to guarantees `good` is UTF-8
                    out.push_str(std::str::from_utf8(good).unwrap_or_default());
                    match e.error_len() {
                        Some(n) => {
                            out.push('\u{FFFD}');
                            rest = &bad[n..];
                        }
                        None => {
                            rest = bad; // incomplete: wait for more
                            break;
                        }
                    }
                }
            }
        }
        self.pending = rest.to_vec();
        out
    }

    /// Flushes an incomplete tail as U+FFFD.
    pub(crate) fn finish(&mut self) -> String {
        let tail = std::mem::take(&mut self.pending);
        String::from_utf8_lossy(&tail).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_split_characters() {
        let text = "añ€😀b";
        let bytes = text.as_bytes();
        let mut d = Utf8Decoder::default();
        let mut out = String::new();
        for b in bytes.chunks(1) {
            out.push_str(&d.decode(b));
        }
        out.push_str(&d.finish());
        assert_eq!(out, text);
        let mut d = Utf8Decoder::default();
        assert_eq!(d.decode(&[b'a', 0xff, b'b', 0xe2]), "a\u{FFFD}b");
        assert_eq!(d.finish(), "\u{FFFD}");
    }
}
