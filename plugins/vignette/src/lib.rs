//! vignette: darken towards the corners, like an old lens.
//!
//! Params: `strength` 0..=1 (default 0.5): how dark the corners get (1 =
//! black); `radius` 0.1..=2 (default 0.75): where darkening starts, as a
//! fraction of the centre-to-corner distance. The centre is untouched;
//! alpha is kept.
//! Build: `plugins/build.sh` (produces `vignette.wasm`).

use pixmesh_plugin_sdk::{export_plugin, Error, Frame, Params};

/// Smooth radial darkening.
pub fn vignette(mut frame: Frame, params: &Params) -> Result<Frame, Error> {
    let strength = params.f32_in("strength", 0.5, 0.0, 1.0)?;
    let radius = params.f32_in("radius", 0.75, 0.1, 2.0)?;
    let (w, h) = (frame.width() as usize, frame.height() as usize);
    let (cx, cy) = ((w as f32 - 1.0) / 2.0, (h as f32 - 1.0) / 2.0);
    let max_d = (cx * cx + cy * cy).sqrt().max(1.0);
    let px = frame.pixels_mut();
    for y in 0..h {
        for x in 0..w {
            let (dx, dy) = (x as f32 - cx, y as f32 - cy);
            let d = (dx * dx + dy * dy).sqrt() / max_d;
            let t = ((d - radius) / (1.0 - radius).max(0.01)).max(0.0).min(1.0);
            let factor = 1.0 - strength * t * t * (3.0 - 2.0 * t);
            let i = (y * w + x) * 4;
            for c in 0..3 {
                px[i + c] = (px[i + c] as f32 * factor) as u8;
            }
        }
    }
    Ok(frame)
}

export_plugin!(vignette);
