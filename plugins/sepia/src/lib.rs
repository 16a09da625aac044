//! sepia: tone the image brown like an old photograph.
//!
//! Params: `strength` 0..=1 (default 1): 0 leaves the image as it is, 1 is
//! full sepia. Alpha is kept.
//! Build: `plugins/build.sh` (produces `sepia.wasm`).

use pixmesh_plugin_sdk::{export_plugin, Error, Frame, Params};

/// The classic sepia matrix, applied per pixel and mixed by `strength`.
pub fn sepia(mut frame: Frame, params: &Params) -> Result<Frame, Error> {
    let s = params.f32_in("strength", 1.0, 0.0, 1.0)?;
    for px in frame.pixels_mut().chunks_exact_mut(4) {
        let (r, g, b) = (px[0] as f32, px[1] as f32, px[2] as f32);
        let sr = 0.393 * r + 0.769 * g + 0.189 * b;
        let sg = 0.349 * r + 0.686 * g + 0.168 * b;
        let sb = 0.272 * r + 0.534 * g + 0.131 * b;
        px[0] = (r + (sr - r) * s).min(255.0) as u8;
        px[1] = (g + (sg - g) * s).min(255.0) as u8;
        px[2] = (b + (sb - b) * s).min(255.0) as u8;
    }
    Ok(frame)
}

export_plugin!(sepia);
