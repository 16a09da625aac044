//! sobel: edge detection. Output is grey: bright where the luma changes
//! sharply, black where it is flat. Border pixels use clamped neighbours;
//! alpha is kept.
//!
//! Params: `gain` 0.1..=10 (default 1): scales the edge magnitude.
//! Build: `plugins/build.sh` (produces `sobel.wasm`).

use pixmesh_plugin_sdk::{export_plugin, Error, Frame, Params};

/// Sobel gradient magnitude of the Rec. 709 luma.
pub fn sobel(frame: Frame, params: &Params) -> Result<Frame, Error> {
    let gain = params.f32_in("gain", 1.0, 0.1, 10.0)?;
    let (w, h) = (frame.width() as usize, frame.height() as usize);
    let src = frame.pixels();
    let luma: Vec<f32> = src
        .chunks_exact(4)
        .map(|p| 0.2126 * p[0] as f32 + 0.7152 * p[1] as f32 + 0.0722 * p[2] as f32)
        .collect();
    let at = |x: isize, y: isize| -> f32 {
        let cx = x.max(0).min(w as isize - 1) as usize;
        let cy = y.max(0).min(h as isize - 1) as usize;
        luma[cy * w + cx]
    };
    let mut out = Frame::new(frame.width(), frame.height())?;
    let dst = out.pixels_mut();
    for y in 0..h as isize {
        for x in 0..w as isize {
            let gx = at(x + 1, y - 1) + 2.0 * at(x + 1, y) + at(x + 1, y + 1)
                - at(x - 1, y - 1) - 2.0 * at(x - 1, y) - at(x - 1, y + 1);
            let gy = at(x - 1, y + 1) + 2.0 * at(x, y + 1) + at(x + 1, y + 1)
                - at(x - 1, y - 1) - 2.0 * at(x, y - 1) - at(x + 1, y - 1);
            let v = ((gx * gx + gy * gy).sqrt() * gain).min(255.0) as u8;
            let i = (y as usize * w + x as usize) * 4;
            dst[i] = v;
            dst[i + 1] = v;
            dst[i + 2] = v;
            dst[i + 3] = src[i + 3];
        }
    }
    Ok(out)
}

export_plugin!(sobel);
