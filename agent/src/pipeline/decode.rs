//! Decoding: sniff the format from the bytes, check limits from the header,
//! then decode to 8-bit RGB or RGBA.
//!
//! The format comes from magic bytes, never the file name. JPEG goes through
//! [`super::jpeg`] (shrink-on-load); PNG, WebP and GIF (first frame) through
//! the `image` crate with its allocation limits set explicitly.

use std::io::Cursor;

use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader};

use super::jpeg;
use super::{Limits, PipelineError};

/// The input formats pixmesh decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceFormat {
    /// JPEG (baseline or progressive).
    Jpeg,
    /// PNG, 8 or 16 bits, any colour type.
    Png,
    /// WebP, lossy or lossless; the first frame if animated.
    Webp,
    /// GIF, the first frame.
    Gif,
}

impl SourceFormat {
    /// Lower-case name for messages and reports.
    pub fn name(self) -> &'static str {
        match self {
            SourceFormat::Jpeg => "jpeg",
            SourceFormat::Png => "png",
            SourceFormat::Webp => "webp",
            SourceFormat::Gif => "gif",
        }
    }

    fn image_format(self) -> ImageFormat {
        match self {
            SourceFormat::Jpeg => ImageFormat::Jpeg,
            SourceFormat::Png => ImageFormat::Png,
            SourceFormat::Webp => ImageFormat::WebP,
            SourceFormat::Gif => ImageFormat::Gif,
        }
    }
}

/// What the header says about an input.
#[derive(Debug, Clone)]
pub struct Probe {
    /// Sniffed format.
    pub format: SourceFormat,
    /// Stored width (before orientation).
    pub width: u32,
    /// Stored height (before orientation).
    pub height: u32,
    /// EXIF orientation, applied by the `orient` step.
    pub orientation: Orientation,
    /// EXIF block, if the format carries one.
    pub exif: Option<Vec<u8>>,
    /// ICC profile, if any.
    pub icc: Option<Vec<u8>>,
}

/// Sniff the format from magic bytes.
pub fn sniff(bytes: &[u8]) -> Result<SourceFormat, PipelineError> {
    match image::guess_format(bytes) {
        Ok(ImageFormat::Jpeg) => Ok(SourceFormat::Jpeg),
        Ok(ImageFormat::Png) => Ok(SourceFormat::Png),
        Ok(ImageFormat::WebP) => Ok(SourceFormat::Webp),
        Ok(ImageFormat::Gif) => Ok(SourceFormat::Gif),
        Ok(other) => Err(PipelineError::Unsupported(format!(
            "{} (pixmesh reads JPEG, PNG, WebP and GIF)",
            other
                .extensions_str()
                .first()
                .copied()
                .unwrap_or("unknown")
                .to_uppercase()
        ))),
        Err(_) => {
            let head: Vec<String> = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
            Err(PipelineError::Unsupported(format!(
                "not a recognised image (first bytes: {})",
                head.join(" ")
            )))
        }
    }
}

pub(super) fn check_pixels(width: u32, height: u32, limits: &Limits) -> Result<(), PipelineError> {
    let pixels = u64::from(width) * u64::from(height);
    if pixels > limits.max_pixels {
        return Err(PipelineError::TooManyPixels {
            width,
            height,
            pixels,
            limit: limits.max_pixels,
        });
    }
    if pixels == 0 {
        return Err(PipelineError::Unsupported(format!(
            "image has no pixels ({width}x{height})"
        )));
    }
    Ok(())
}

fn image_limits(limits: &Limits) -> image::Limits {
    let mut l = image::Limits::default();
    let side = u32::try_from(limits.max_pixels.min(u64::from(u32::MAX))).unwrap_or(u32::MAX);
    l.max_image_width = Some(side);
    l.max_image_height = Some(side);
    l.max_alloc = Some(limits.max_decoder_alloc());
    l
}

fn reader<'a>(
    bytes: &'a [u8],
    format: SourceFormat,
    limits: &Limits,
) -> ImageReader<Cursor<&'a [u8]>> {
    let mut r = ImageReader::with_format(Cursor::new(bytes), format.image_format());
    r.limits(image_limits(limits));
    r
}

fn decode_error(format: SourceFormat, e: impl std::fmt::Display) -> PipelineError {
    PipelineError::Decode {
        format: format.name(),
        message: e.to_string(),
    }
}

/// Check size, sniff, and read the header. No pixels are decoded.
pub fn probe(bytes: &[u8], limits: &Limits) -> Result<Probe, PipelineError> {
    if bytes.is_empty() {
        return Err(PipelineError::Empty);
    }
    let size = bytes.len() as u64;
    if size > limits.max_input_bytes {
        return Err(PipelineError::InputTooLarge {
            size,
            limit: limits.max_input_bytes,
        });
    }
    let format = sniff(bytes)?;
    let probe = match format {
        SourceFormat::Jpeg => {
            jpeg_probe(jpeg::read_header(bytes).map_err(|e| decode_error(format, e))?)
        }
        _ => {
            let mut decoder = reader(bytes, format, limits)
                .into_decoder()
                .map_err(|e| decode_error(format, e))?;
            let (width, height) = decoder.dimensions();
            check_pixels(width, height, limits)?;
            let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
            let exif = decoder.exif_metadata().ok().flatten();
            let icc = decoder.icc_profile().ok().flatten();
            Probe {
                format,
                width,
                height,
                orientation,
                exif,
                icc,
            }
        }
    };
    check_pixels(probe.width, probe.height, limits)?;
    Ok(probe)
}

/// What a JPEG's header says, as a [`Probe`].
pub(super) fn jpeg_probe(h: jpeg::Header) -> Probe {
    let orientation = h
        .exif
        .as_deref()
        .and_then(Orientation::from_exif_chunk)
        .unwrap_or(Orientation::NoTransforms);
    Probe {
        format: SourceFormat::Jpeg,
        width: h.width,
        height: h.height,
        orientation,
        exif: h.exif,
        icc: h.icc,
    }
}

/// Decoded JPEG pixels as an image.
pub(super) fn jpeg_image(d: jpeg::Decoded) -> Result<DynamicImage, PipelineError> {
    let img = image::RgbImage::from_raw(d.width, d.height, d.rgb).ok_or_else(|| {
        decode_error(
            SourceFormat::Jpeg,
            "decoder returned a buffer of the wrong size",
        )
    })?;
    Ok(DynamicImage::ImageRgb8(img))
}

/// A JPEG decoding error.
pub(super) fn jpeg_error(e: jpeg::JpegError) -> PipelineError {
    decode_error(SourceFormat::Jpeg, e)
}

/// Decode to RGB8 (no alpha in the source) or RGBA8. JPEGs are shrunk by
/// `1/jpeg_shrink` during decoding (1, 2, 4 or 8); other formats ignore it.
pub fn decode(
    bytes: &[u8],
    probe: &Probe,
    jpeg_shrink: u8,
    limits: &Limits,
) -> Result<DynamicImage, PipelineError> {
    let format = probe.format;
    if format == SourceFormat::Jpeg {
        let d = jpeg::decode(
            bytes,
            jpeg_shrink,
            limits.max_decoder_alloc(),
            jpeg::MAX_SCANS,
        )
        .map_err(|e| decode_error(format, e))?;
        return jpeg_image(d);
    }
    let img = reader(bytes, format, limits)
        .decode()
        .map_err(|e| decode_error(format, e))?;
    Ok(normalise(img))
}

/// Bring any decoded image to RGB8 or RGBA8, the two layouts the ops handle.
pub fn normalise(img: DynamicImage) -> DynamicImage {
    match img {
        DynamicImage::ImageRgb8(_) | DynamicImage::ImageRgba8(_) => img,
        other if other.color().has_alpha() => DynamicImage::ImageRgba8(other.into_rgba8()),
        other => DynamicImage::ImageRgb8(other.into_rgb8()),
    }
}
