//! Screenshots as PNG: libvirt returns PNG or PPM depending on the driver.

use crate::error::{AgentError, Result};

/// Returns (PNG bytes, width, height) from what libvirt produced.
pub fn to_png(mime: &str, data: &[u8]) -> Result<(Vec<u8>, u32, u32)> {
    if data.starts_with(b"\x89PNG") {
        let decoder = png::Decoder::new(data);
        let reader = decoder
            .read_info()
            .map_err(|e| AgentError::internal(format!("bad PNG screenshot: {e}")))?;
        let info = reader.info();
        return Ok((data.to_vec(), info.width, info.height));
    }
    if data.starts_with(b"P6") {
        let (w, h, pixels) = parse_ppm(data)?;
        return Ok((encode_png(w, h, pixels)?, w, h));
    }
    Err(AgentError::Unsupported(format!(
        "screenshot in format {mime:?} cannot be converted to PNG"
    )))
}

/// Parses a binary PPM (P6, maxval 255): (width, height, RGB pixels).
pub fn parse_ppm(data: &[u8]) -> Result<(u32, u32, &[u8])> {
    let bad = || AgentError::internal("bad PPM screenshot");
    let mut fields = Vec::new();
    let mut i = 2;
    while fields.len() < 3 {
        while i < data.len() && data[i].is_ascii_whitespace() {
            i += 1;
        }
        if i < data.len() && data[i] == b'#' {
            while i < data.len() && data[i] != b'\n' {
                i += 1;
            }
            continue;
        }
        let start = i;
        while i < data.len() && data[i].is_ascii_digit() {
            i += 1;
        }
        let s = std::str::from_utf8(&data[start..i]).map_err(|_| bad())?;
        fields.push(s.parse::<u32>().map_err(|_| bad())?);
    }
    let (w, h, max) = (fields[0], fields[1], fields[2]);
    if max != 255 {
        return Err(bad());
    }
    let pixels = data.get(i + 1..).ok_or_else(bad)?;
    let need = (w as usize) * (h as usize) * 3;
    if pixels.len() < need {
        return Err(bad());
    }
    Ok((w, h, &pixels[..need]))
}

fn encode_png(w: u32, h: u32, rgb: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, w, h);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut writer = enc
            .write_header()
            .map_err(|e| AgentError::internal(format!("PNG: {e}")))?;
        writer
            .write_image_data(rgb)
            .map_err(|e| AgentError::internal(format!("PNG: {e}")))?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ppm_becomes_png() {
        let mut ppm = b"P6\n# comment\n2 1\n255\n".to_vec();
        ppm.extend_from_slice(&[255, 0, 0, 0, 255, 0]);
        let (png, w, h) = to_png("image/x-portable-pixmap", &ppm).unwrap();
        assert_eq!((w, h), (2, 1));
        assert!(png.starts_with(b"\x89PNG"));
        let (again, w2, _) = to_png("image/png", &png).unwrap();
        assert_eq!((again, w2), (png, 2));
        assert!(to_png("x", b"GIF89a").is_err());
    }
}
