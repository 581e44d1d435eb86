//! Frames (RGB rows from the helper) to PNG or JPEG, with the `png` and `jpeg-encoder`
//! crates. Only pixels the backend has checked the size of are encoded; nothing untrusted
//! is parsed here.

/// The encodings the API offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    Png,
    Jpeg,
}

/// JPEG quality (0-100): text stays readable for a model, frames stay several times smaller
/// than PNG.
const JPEG_QUALITY: u8 = 80;

/// Encodes `rgb` (`width * height * 3` bytes).
pub(crate) fn encode(
    format: Format,
    width: u32,
    height: u32,
    rgb: &[u8],
) -> Result<Vec<u8>, String> {
    match format {
        Format::Png => {
            let mut out = Vec::with_capacity(rgb.len() / 4);
            let mut enc = png::Encoder::new(&mut out, width, height);
            enc.set_color(png::ColorType::Rgb);
            enc.set_depth(png::BitDepth::Eight);
            enc.set_compression(png::Compression::Fast);
            let mut w = enc.write_header().map_err(|e| e.to_string())?;
            w.write_image_data(rgb).map_err(|e| e.to_string())?;
            w.finish().map_err(|e| e.to_string())?;
            Ok(out)
        }
        Format::Jpeg => {
            let (w, h) = match (u16::try_from(width), u16::try_from(height)) {
                (Ok(w), Ok(h)) => (w, h),
                _ => return Err(format!("a {width}x{height} frame is too large for JPEG")),
            };
            let mut out = Vec::with_capacity(rgb.len() / 10);
            jpeg_encoder::Encoder::new(&mut out, JPEG_QUALITY)
                .encode(rgb, w, h, jpeg_encoder::ColorType::Rgb)
                .map_err(|e| e.to_string())?;
            Ok(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn png_round_trips_and_jpeg_has_markers() {
        let (w, h) = (16u32, 8u32);
        let rgb: Vec<u8> = (0..w * h * 3).map(|i| (i * 7 % 251) as u8).collect();
        let png = encode(Format::Png, w, h, &rgb).unwrap();
        let mut reader = png::Decoder::new(std::io::Cursor::new(&png))
            .read_info()
            .unwrap();
        let mut buf = vec![0u8; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), (w, h));
        assert_eq!(&buf[..info.buffer_size()], &rgb[..]);
        let jpeg = encode(Format::Jpeg, w, h, &rgb).unwrap();
        assert_eq!(&jpeg[..2], &[0xff, 0xd8]);
        assert_eq!(&jpeg[jpeg.len() - 2..], &[0xff, 0xd9]);
    }
}
