//! Encoding the result. Metadata is stripped unless the spec keeps it.
//!
//! JPEG: libjpeg-turbo (see [`super::jpeg`]); alpha is flattened onto the
//! spec's background (default white). PNG: the `image` crate. WebP: libwebp,
//! lossy with quality or lossless; alpha kept.

use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::{DynamicImage, ImageEncoder};
use pixmesh_protocol::{Colour, OutputFormat, OutputSpec};

use super::{PipelineError, jpeg};

/// Metadata that may be carried to the output when the spec asks.
#[derive(Debug, Default)]
pub struct Metadata {
    /// EXIF block (TIFF structure).
    pub exif: Option<Vec<u8>>,
    /// ICC profile.
    pub icc: Option<Vec<u8>>,
}

/// WebP cannot store sides longer than this.
const WEBP_MAX_SIDE: u32 = 16_383;

/// Encode `img` (RGB8 or RGBA8) as the spec says.
pub fn encode(
    img: &DynamicImage,
    out: &OutputSpec,
    meta: &Metadata,
) -> Result<Vec<u8>, PipelineError> {
    let format = out.format.as_str();
    let fail = |message: String| PipelineError::Encode { format, message };
    let (w, h) = (img.width(), img.height());
    match out.format {
        OutputFormat::Jpeg => {
            let rgb = match img {
                DynamicImage::ImageRgb8(rgb) => std::borrow::Cow::Borrowed(rgb.as_raw()),
                other => std::borrow::Cow::Owned(flatten(other, out.background())),
            };
            let (icc, exif) = if out.keep_metadata {
                (meta.icc.as_deref(), meta.exif.as_deref())
            } else {
                (None, None)
            };
            jpeg::encode(&rgb, w, h, out.quality(), icc, exif).map_err(|e| fail(e.0))
        }
        OutputFormat::Png => {
            let mut buf = Vec::new();
            let encoder = PngEncoder::new_with_quality(
                &mut buf,
                CompressionType::Default,
                FilterType::Adaptive,
            );
            encoder
                .write_image(img.as_bytes(), w, h, img.color().into())
                .map_err(|e| fail(e.to_string()))?;
            Ok(buf)
        }
        OutputFormat::Webp => {
            if w > WEBP_MAX_SIDE || h > WEBP_MAX_SIDE {
                return Err(fail(format!(
                    "{w}x{h} is larger than WebP allows ({WEBP_MAX_SIDE} per side)"
                )));
            }
            let encoder = match img {
                DynamicImage::ImageRgba8(rgba) => webp::Encoder::from_rgba(rgba.as_raw(), w, h),
                other => webp::Encoder::from_rgb(other.as_bytes(), w, h),
            };
            let quality = if out.lossless {
                75.0
            } else {
                f32::from(out.quality())
            };
            let mem = encoder
                .encode_simple(out.lossless, quality)
                .map_err(|e| fail(format!("libwebp: {e:?}")))?;
            Ok(mem.to_vec())
        }
        OutputFormat::Avif => Err(fail(
            "this build of pixmesh has no AVIF encoder; use webp or jpeg".into(),
        )),
    }
}

/// Composite RGBA over an opaque background, returning RGB8.
pub fn flatten(img: &DynamicImage, bg: Colour) -> Vec<u8> {
    // Borrow when the image is already RGBA8 (the usual case): no copy.
    let converted;
    let rgba = match img.as_rgba8() {
        Some(rgba) => rgba,
        None => {
            converted = img.to_rgba8();
            &converted
        }
    };
    let [br, bgg, bb, _] = bg.0;
    let mut out = Vec::with_capacity(rgba.len() / 4 * 3);
    for p in rgba.pixels() {
        let a = u32::from(p[3]);
        let mix = |c: u8, b: u8| ((u32::from(c) * a + u32::from(b) * (255 - a) + 127) / 255) as u8;
        out.extend_from_slice(&[mix(p[0], br), mix(p[1], bgg), mix(p[2], bb)]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{Rgba, RgbaImage};

    #[test]
    fn flatten_blends_onto_background() {
        let img = DynamicImage::ImageRgba8(RgbaImage::from_fn(3, 1, |x, _| match x {
            0 => Rgba([255, 0, 0, 255]),
            1 => Rgba([255, 0, 0, 0]),
            _ => Rgba([0, 0, 0, 128]),
        }));
        let rgb = flatten(&img, Colour::WHITE);
        assert_eq!(&rgb[0..3], &[255, 0, 0], "opaque stays");
        assert_eq!(
            &rgb[3..6],
            &[255, 255, 255],
            "transparent becomes background"
        );
        assert_eq!(
            &rgb[6..9],
            &[127, 127, 127],
            "half black over white is mid grey"
        );
    }

    #[test]
    fn png_and_webp_keep_alpha() {
        let img = DynamicImage::ImageRgba8(RgbaImage::from_pixel(4, 4, Rgba([1, 2, 3, 100])));
        for out in [
            OutputSpec {
                format: OutputFormat::Png,
                ..OutputSpec::default()
            },
            OutputSpec {
                format: OutputFormat::Webp,
                lossless: true,
                ..OutputSpec::default()
            },
        ] {
            let bytes = encode(&img, &out, &Metadata::default()).expect("encode");
            let back = image::load_from_memory(&bytes).expect("decode").to_rgba8();
            assert_eq!(back.get_pixel(2, 2).0, [1, 2, 3, 100], "{:?}", out.format);
        }
    }
}
