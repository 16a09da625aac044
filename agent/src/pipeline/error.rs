//! Why one image failed. Every variant says enough to act on without logs.

/// A per-image failure. The run carries on with the other images.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PipelineError {
    /// The input has no bytes.
    #[error("empty file")]
    Empty,
    /// The input is larger than the byte limit.
    #[error("file is {size} bytes, over the limit of {limit} bytes")]
    InputTooLarge {
        /// Input size.
        size: u64,
        /// The limit in force.
        limit: u64,
    },
    /// Not an image format pixmesh decodes.
    #[error("unsupported format: {0}")]
    Unsupported(String),
    /// The header claims more pixels than allowed (a decompression bomb, or
    /// just too big); nothing was decoded.
    #[error("{width}x{height} is {pixels} pixels, over the limit of {limit}")]
    TooManyPixels {
        /// Claimed width.
        width: u32,
        /// Claimed height.
        height: u32,
        /// `width * height`.
        pixels: u64,
        /// The limit in force.
        limit: u64,
    },
    /// The decoder refused the data.
    #[error("corrupt {format}: {message}")]
    Decode {
        /// The sniffed format.
        format: &'static str,
        /// The decoder's reason.
        message: String,
    },
    /// A step could not be applied to this image (e.g. a crop outside it).
    #[error("step {index} ({op}): {message}")]
    Step {
        /// 1-based step number.
        index: usize,
        /// The op.
        op: &'static str,
        /// What went wrong.
        message: String,
    },
    /// The encoder refused the result.
    #[error("encoding {format} failed: {message}")]
    Encode {
        /// Output format.
        format: &'static str,
        /// The encoder's reason.
        message: String,
    },
}
