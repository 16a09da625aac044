//! sepia: tone the image brown like an old photograph.
//!
//! Params: `strength` 0..=1 (default 1): 0 leaves the image as it is, 1 is
//! full sepia. Alpha is kept.
//! Build: `plugins/build.sh` (produces `sepia.wasm`). With SIMD128 (enabled
//! in `plugins/.cargo/config.toml`) four pixels are toned per step; the
//! arithmetic is the scalar version's, in the same order, so both give
//! identical bytes.

use pixmesh_plugin_sdk::{export_plugin, Error, Frame, Params};

/// Sepia-tone one RGBA pixel: the classic matrix, mixed in by `s`.
#[inline]
fn tone(px: &mut [u8], s: f32) {
    let (r, g, b) = (px[0] as f32, px[1] as f32, px[2] as f32);
    let sr = 0.393 * r + 0.769 * g + 0.189 * b;
    let sg = 0.349 * r + 0.686 * g + 0.168 * b;
    let sb = 0.272 * r + 0.534 * g + 0.131 * b;
    px[0] = (r + (sr - r) * s).min(255.0) as u8;
    px[1] = (g + (sg - g) * s).min(255.0) as u8;
    px[2] = (b + (sb - b) * s).min(255.0) as u8;
}

/// Tone every pixel; alpha untouched.
pub fn sepia(mut frame: Frame, params: &Params) -> Result<Frame, Error> {
    let s = params.f32_in("strength", 1.0, 0.0, 1.0)?;
    let pixels = frame.pixels_mut();
    let done = simd::tone_blocks(pixels, s);
    for px in pixels[done..].chunks_exact_mut(4) {
        tone(px, s);
    }
    Ok(frame)
}

#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod simd {
    use core::arch::wasm32::*;

    /// Tone whole 16-byte blocks (4 pixels); returns the bytes done.
    pub fn tone_blocks(px: &mut [u8], s: f32) -> usize {
        let z = u8x16_splat(0);
        let (sv, max) = (f32x4_splat(s), f32x4_splat(255.0));
        // One channel of 4 RGBA pixels into four i32 lanes.
        fn channel<const C: usize>(v: v128, z: v128) -> v128 {
            let c = i8x16_shuffle::<0, 16, 16, 16, 4, 16, 16, 16, 8, 16, 16, 16, 12, 16, 16, 16>;
            let shifted = match C {
                0 => v,
                1 => u32x4_shr(v, 8),
                _ => u32x4_shr(v, 16),
            };
            f32x4_convert_i32x4(c(shifted, z))
        }
        let mix = |c: v128, toned: v128| {
            i32x4_trunc_sat_f32x4(f32x4_min(f32x4_add(c, f32x4_mul(f32x4_sub(toned, c), sv)), max))
        };
        let dot = |r: v128, g: v128, b: v128, k: [f32; 3]| {
            f32x4_add(
                f32x4_add(f32x4_mul(f32x4_splat(k[0]), r), f32x4_mul(f32x4_splat(k[1]), g)),
                f32x4_mul(f32x4_splat(k[2]), b),
            )
        };
        let mut blocks = px.chunks_exact_mut(16);
        let mut done = 0;
        for block in &mut blocks {
            // SAFETY: `block` is exactly 16 bytes; unaligned v128 access is allowed.
            let v = unsafe { v128_load(block.as_ptr() as *const v128) };
            let (r, g, b) = (channel::<0>(v, z), channel::<1>(v, z), channel::<2>(v, z));
            let nr = mix(r, dot(r, g, b, [0.393, 0.769, 0.189]));
            let ng = mix(g, dot(r, g, b, [0.349, 0.686, 0.168]));
            let nb = mix(b, dot(r, g, b, [0.272, 0.534, 0.131]));
            let alpha = v128_and(v, u32x4_splat(0xFF00_0000));
            let out = v128_or(v128_or(nr, i32x4_shl(ng, 8)), v128_or(i32x4_shl(nb, 16), alpha));
            // SAFETY: as above.
            unsafe { v128_store(block.as_mut_ptr() as *mut v128, out) };
            done += 16;
        }
        done
    }
}

#[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
mod simd {
    /// Without SIMD128 everything goes through the scalar loop.
    pub fn tone_blocks(_px: &mut [u8], _s: f32) -> usize {
        0
    }
}

export_plugin!(sepia);
