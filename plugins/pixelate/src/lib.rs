//! pixelate: replace each `size` x `size` block by its average colour.
//!
//! Params: `size` 1..=512 (default 8), the block side in pixels. Blocks at
//! the right and bottom edges may be smaller.
//! Build: `plugins/build.sh` (produces `pixelate.wasm`).

use pixmesh_plugin_sdk::{export_plugin, Error, Frame, Params};

/// Block-average mosaic.
pub fn pixelate(mut frame: Frame, params: &Params) -> Result<Frame, Error> {
    let size = params.u32_in("size", 8, 1, 512)? as usize;
    let (w, h) = (frame.width() as usize, frame.height() as usize);
    let px = frame.pixels_mut();
    for by in (0..h).step_by(size) {
        for bx in (0..w).step_by(size) {
            let (ex, ey) = ((bx + size).min(w), (by + size).min(h));
            let mut sum = [0u64; 4];
            for y in by..ey {
                for x in bx..ex {
                    let i = (y * w + x) * 4;
                    for c in 0..4 {
                        sum[c] += px[i + c] as u64;
                    }
                }
            }
            let n = ((ex - bx) * (ey - by)) as u64;
            let avg = [sum[0] / n, sum[1] / n, sum[2] / n, sum[3] / n];
            for y in by..ey {
                for x in bx..ex {
                    let i = (y * w + x) * 4;
                    for c in 0..4 {
                        px[i + c] = avg[c] as u8;
                    }
                }
            }
        }
    }
    Ok(frame)
}

export_plugin!(pixelate);
