//! invert: photographic negative (255 - value for R, G and B; alpha kept).
//!
//! Params: none.
//! Build: `plugins/build.sh` (produces `invert.wasm`).

use pixmesh_plugin_sdk::{export_plugin, Error, Frame, Params};

/// Invert every colour channel.
pub fn invert(mut frame: Frame, _params: &Params) -> Result<Frame, Error> {
    for px in frame.pixels_mut().chunks_exact_mut(4) {
        px[0] = 255 - px[0];
        px[1] = 255 - px[1];
        px[2] = 255 - px[2];
    }
    Ok(frame)
}

export_plugin!(invert);
