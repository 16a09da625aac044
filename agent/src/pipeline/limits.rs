//! Bounds on what one image may cost, checked before the expensive work.

/// Per-image resource limits. Both are checked from the file header, before
/// any pixel is decoded, so a decompression bomb fails fast with bounded memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest input file accepted, in bytes.
    pub max_input_bytes: u64,
    /// Largest `width * height` accepted, for inputs and for every
    /// intermediate image the steps produce.
    pub max_pixels: u64,
}

impl Limits {
    /// 256 MiB of input.
    pub const DEFAULT_MAX_INPUT_BYTES: u64 = 256 * 1024 * 1024;
    /// 100 megapixels.
    pub const DEFAULT_MAX_PIXELS: u64 = 100_000_000;

    /// The most bytes a decoder may allocate: 16-bit RGBA at the pixel limit
    /// plus room for the decoder's own tables.
    pub fn max_decoder_alloc(&self) -> u64 {
        self.max_pixels
            .saturating_mul(8)
            .saturating_add(64 * 1024 * 1024)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_input_bytes: Self::DEFAULT_MAX_INPUT_BYTES,
            max_pixels: Self::DEFAULT_MAX_PIXELS,
        }
    }
}
