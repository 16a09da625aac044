//! Resize geometry: what size a `resize` step produces, with sharp's `fit`
//! meanings. Pure arithmetic, no pixels, so it can be used to plan
//! shrink-on-load before decoding and unit-tested exhaustively.

use pixmesh_protocol::Fit;

/// The plan for one resize of a `src` image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ResizePlan {
    /// The region of the source to sample, `(left, top, width, height)` in
    /// source pixels. The whole image except for `cover`, which samples the
    /// centred region with the box's aspect ratio.
    pub source: (f64, f64, f64, f64),
    /// Size the sampled region is scaled to.
    pub scaled: (u32, u32),
    /// Final size: `scaled`, or the box for `contain` (padded).
    pub output: (u32, u32),
}

fn round_dim(v: f64) -> u32 {
    // Dimensions are at most 65535 * 65535 / 1: well inside u32 after clamping.
    v.round().clamp(1.0, f64::from(u32::MAX)) as u32
}

/// Plan a resize of a `src` image to `width` x `height` under `fit`.
pub fn plan(src: (u32, u32), width: Option<u32>, height: Option<u32>, fit: Fit) -> ResizePlan {
    let (sw, sh) = (f64::from(src.0.max(1)), f64::from(src.1.max(1)));
    let whole = (0.0, 0.0, sw, sh);
    let simple = |scaled: (u32, u32)| ResizePlan {
        source: whole,
        scaled,
        output: scaled,
    };
    let (w, h) = match (width, height) {
        (Some(w), Some(h)) => (w, h),
        (Some(w), None) => return simple((w, round_dim(sh * f64::from(w) / sw))),
        (None, Some(h)) => return simple((round_dim(sw * f64::from(h) / sh), h)),
        (None, None) => return simple(src),
    };
    let (bw, bh) = (f64::from(w), f64::from(h));
    let (rx, ry) = (bw / sw, bh / sh);
    // Keep the aspect ratio; the limiting side lands exactly on the box.
    let scale_to = |r: f64| -> (u32, u32) {
        if r == rx {
            (w, round_dim(sh * r))
        } else {
            (round_dim(sw * r), h)
        }
    };
    match fit {
        Fit::Fill => simple((w, h)),
        Fit::Inside => simple(scale_to(rx.min(ry))),
        Fit::Outside => simple(scale_to(rx.max(ry))),
        Fit::Contain => ResizePlan {
            source: whole,
            scaled: scale_to(rx.min(ry)),
            output: (w, h),
        },
        Fit::Cover => {
            // Sample the centred part of the source that has the box's aspect.
            let r = rx.max(ry);
            let (cw, ch) = ((bw / r).min(sw), (bh / r).min(sh));
            let source = ((sw - cw) / 2.0, (sh - ch) / 2.0, cw, ch);
            ResizePlan {
                source,
                scaled: (w, h),
                output: (w, h),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Fit; 5] = [
        Fit::Cover,
        Fit::Contain,
        Fit::Fill,
        Fit::Inside,
        Fit::Outside,
    ];

    #[test]
    fn every_fit_gives_the_documented_size() {
        // 400x200 source into a 100x100 box.
        let out = |fit| plan((400, 200), Some(100), Some(100), fit).output;
        assert_eq!(out(Fit::Cover), (100, 100));
        assert_eq!(out(Fit::Contain), (100, 100));
        assert_eq!(out(Fit::Fill), (100, 100));
        assert_eq!(out(Fit::Inside), (100, 50));
        assert_eq!(out(Fit::Outside), (200, 100));
        // contain scales like inside, then pads.
        assert_eq!(
            plan((400, 200), Some(100), Some(100), Fit::Contain).scaled,
            (100, 50)
        );
        // cover samples the centred 200x200.
        assert_eq!(
            plan((400, 200), Some(100), Some(100), Fit::Cover).source,
            (100.0, 0.0, 200.0, 200.0)
        );
    }

    #[test]
    fn one_dimension_keeps_aspect_for_every_fit() {
        for fit in ALL {
            assert_eq!(plan((5640, 3172), Some(256), None, fit).output, (256, 144));
            assert_eq!(plan((5640, 3172), None, Some(144), fit).output, (256, 144));
        }
    }

    #[test]
    fn enlarging_and_tiny_sizes() {
        assert_eq!(
            plan((10, 5), Some(100), Some(100), Fit::Inside).output,
            (100, 50)
        );
        assert_eq!(plan((1000, 1), Some(10), None, Fit::Inside).output, (10, 1));
        assert_eq!(
            plan((1, 1000), Some(10), Some(10), Fit::Outside).output,
            (10, 10000)
        );
    }
}
