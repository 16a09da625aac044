//! border: add a solid border around the image, making it larger.
//!
//! Params: `width` 0..=1024 (default 10), the border thickness in pixels on
//! every side; `colour` `#rgb`, `#rrggbb` or `#rrggbbaa` (default `#ffffff`).
//! The output is (width + 2*border) x (height + 2*border).
//! Build: `plugins/build.sh` (produces `border.wasm`).

use pixmesh_plugin_sdk::{export_plugin, Error, Frame, Params};

/// Pad with a coloured frame.
pub fn border(frame: Frame, params: &Params) -> Result<Frame, Error> {
    let b = params.u32_in("width", 10, 0, 1024)?;
    let colour = params.colour("colour", [255, 255, 255, 255])?;
    let (w, h) = (frame.width(), frame.height());
    let mut out = Frame::new(w + 2 * b, h + 2 * b)?;
    for p in out.pixels_mut().chunks_exact_mut(4) {
        p.copy_from_slice(&colour);
    }
    let (ow, src) = ((w + 2 * b) as usize, frame.pixels());
    let row = w as usize * 4;
    let dst = out.pixels_mut();
    for y in 0..h as usize {
        let d = ((y + b as usize) * ow + b as usize) * 4;
        dst[d..d + row].copy_from_slice(&src[y * row..(y + 1) * row]);
    }
    Ok(out)
}

export_plugin!(border);
