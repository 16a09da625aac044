//! The native ops. Each takes the working [`Frame`] and replaces its image.
//!
//! Resampling is `fast_image_resize` (SIMD Lanczos3, alpha-aware);
//! rotation, flips, crops and colour conversion come from `image`.

use fast_image_resize as fir;
use image::metadata::Orientation;
use image::{DynamicImage, GenericImageView, Rgba, RgbaImage, imageops};
use pixmesh_protocol::{Axis, Colour, Fit};

use super::geometry;

/// The image between steps, with what the steps still need to know.
#[derive(Debug)]
pub struct Frame {
    /// RGB8 or RGBA8 pixels.
    pub img: DynamicImage,
    /// The EXIF orientation not yet applied.
    pub orientation: Orientation,
    /// The size the image would have without shrink-on-load, in the current
    /// orientation, until the resize that the shrink was planned for runs.
    /// Resize geometry is computed from it, so shrinking on load never
    /// changes the output size.
    pub logical: Option<(u32, u32)>,
}

impl Frame {
    /// The size resize geometry is planned from.
    pub fn logical_size(&self) -> (u32, u32) {
        self.logical.unwrap_or_else(|| self.img.dimensions())
    }
}

/// True for the EXIF orientations that exchange width and height.
pub fn swaps_axes(o: Orientation) -> bool {
    matches!(
        o,
        Orientation::Rotate90
            | Orientation::Rotate270
            | Orientation::Rotate90FlipH
            | Orientation::Rotate270FlipH
    )
}

/// Apply the EXIF orientation.
pub fn orient(f: &mut Frame) {
    let o = std::mem::replace(&mut f.orientation, Orientation::NoTransforms);
    f.img.apply_orientation(o);
    if swaps_axes(o) {
        f.logical = f.logical.map(|(w, h)| (h, w));
    }
}

/// Rotate clockwise by 90, 180 or 270 degrees (validated by the spec).
pub fn rotate(f: &mut Frame, degrees: u32) {
    f.img = match degrees {
        90 => f.img.rotate90(),
        180 => f.img.rotate180(),
        _ => f.img.rotate270(),
    };
    if degrees != 180 {
        f.logical = f.logical.map(|(w, h)| (h, w));
    }
}

/// Mirror.
pub fn flip(f: &mut Frame, axis: Axis) {
    match axis {
        Axis::Horizontal => imageops::flip_horizontal_in_place(&mut f.img),
        Axis::Vertical => imageops::flip_vertical_in_place(&mut f.img),
    }
}

/// Cut out a region that must lie inside the image.
pub fn crop(f: &mut Frame, x: u32, y: u32, width: u32, height: u32) -> Result<(), String> {
    let (w, h) = f.img.dimensions();
    let inside = u64::from(x) + u64::from(width) <= u64::from(w)
        && u64::from(y) + u64::from(height) <= u64::from(h);
    if !inside {
        return Err(format!(
            "region {width}x{height}+{x}+{y} is not inside the {w}x{h} image"
        ));
    }
    f.img = f.img.crop_imm(x, y, width, height);
    f.logical = None;
    Ok(())
}

/// Gaussian blur, approximated by three box blurs (constant cost per pixel
/// whatever the sigma, so a huge sigma cannot stall an agent).
pub fn blur(f: &mut Frame, sigma: f32) {
    f.img = f.img.fast_blur(sigma);
}

/// Unsharp mask: add back the difference from a Gaussian blur of `sigma`.
pub fn sharpen(f: &mut Frame, sigma: f32) {
    f.img = f.img.unsharpen(sigma, 0);
}

/// Grey with R = G = B (Rec. 709 luma), alpha kept.
pub fn grayscale(f: &mut Frame) {
    f.img = match &f.img {
        DynamicImage::ImageRgba8(_) => DynamicImage::ImageRgba8(f.img.grayscale().into_rgba8()),
        _ => DynamicImage::ImageRgb8(f.img.grayscale().into_rgb8()),
    };
}

/// Resize per the spec's `fit`, planned from the frame's logical size.
pub fn resize(
    f: &mut Frame,
    width: Option<u32>,
    height: Option<u32>,
    fit: Fit,
    background: Option<Colour>,
    max_pixels: u64,
) -> Result<(), String> {
    let logical = f.logical_size();
    let plan = geometry::plan(logical, width, height, fit);
    for (w, h) in [plan.scaled, plan.output] {
        let pixels = u64::from(w) * u64::from(h);
        if pixels > max_pixels {
            return Err(format!(
                "result would be {w}x{h} = {pixels} pixels, over the limit of {max_pixels}"
            ));
        }
    }
    // Map the planned source region from logical to actual pixels.
    let (aw, ah) = f.img.dimensions();
    let (sx, sy) = (
        f64::from(aw) / f64::from(logical.0),
        f64::from(ah) / f64::from(logical.1),
    );
    let (left, top, cw, ch) = plan.source;
    let options = fir::ResizeOptions::new()
        .resize_alg(fir::ResizeAlg::Convolution(fir::FilterType::Lanczos3))
        .crop(left * sx, top * sy, cw * sx, ch * sy);
    let mut scaled = DynamicImage::new(plan.scaled.0, plan.scaled.1, f.img.color());
    fir::Resizer::new()
        .resize(&f.img, &mut scaled, &options)
        .map_err(|e| format!("resampling failed: {e}"))?;
    f.logical = None;
    f.img = if plan.output == plan.scaled {
        scaled
    } else {
        pad(scaled, plan.output, background.unwrap_or(Colour::BLACK))
    };
    Ok(())
}

/// Centre `img` on a `size` canvas of `bg`.
fn pad(img: DynamicImage, size: (u32, u32), bg: Colour) -> DynamicImage {
    let (w, h) = img.dimensions();
    let (x, y) = (i64::from((size.0 - w) / 2), i64::from((size.1 - h) / 2));
    if bg.0[3] == 255 && matches!(img, DynamicImage::ImageRgb8(_)) {
        let [r, g, b, _] = bg.0;
        let mut canvas = image::RgbImage::from_pixel(size.0, size.1, image::Rgb([r, g, b]));
        imageops::replace(&mut canvas, &img.into_rgb8(), x, y);
        DynamicImage::ImageRgb8(canvas)
    } else {
        let mut canvas = RgbaImage::from_pixel(size.0, size.1, Rgba(bg.0));
        imageops::replace(&mut canvas, &img.into_rgba8(), x, y);
        DynamicImage::ImageRgba8(canvas)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{Rgb, RgbImage};

    fn frame(img: DynamicImage) -> Frame {
        Frame {
            img,
            orientation: Orientation::NoTransforms,
            logical: None,
        }
    }

    /// 3x2 image with a distinct colour per pixel.
    fn marked() -> Frame {
        let mut img = RgbImage::new(3, 2);
        for (x, y, p) in img.enumerate_pixels_mut() {
            *p = Rgb([x as u8 * 10, y as u8 * 10, 200]);
        }
        frame(DynamicImage::ImageRgb8(img))
    }

    fn px(f: &Frame, x: u32, y: u32) -> [u8; 4] {
        f.img.get_pixel(x, y).0
    }

    #[test]
    fn rotate_90_maps_known_pixels() {
        let mut f = marked();
        rotate(&mut f, 90);
        assert_eq!(f.img.dimensions(), (2, 3));
        // Clockwise: the source's bottom-left (0,1) becomes the top-left.
        assert_eq!(px(&f, 0, 0), [0, 10, 200, 255]);
        // The source's top-right (2,0) becomes the bottom-right.
        assert_eq!(px(&f, 1, 2), [20, 0, 200, 255]);
        let mut g = marked();
        rotate(&mut g, 270);
        assert_eq!(px(&g, 0, 0), [20, 0, 200, 255]);
        let mut h = marked();
        rotate(&mut h, 180);
        assert_eq!(px(&h, 0, 0), [20, 10, 200, 255]);
    }

    #[test]
    fn flips_mirror() {
        let mut f = marked();
        flip(&mut f, Axis::Horizontal);
        assert_eq!(px(&f, 0, 0), [20, 0, 200, 255]);
        let mut f = marked();
        flip(&mut f, Axis::Vertical);
        assert_eq!(px(&f, 0, 0), [0, 10, 200, 255]);
    }

    #[test]
    fn crop_takes_the_right_region_and_refuses_outside() {
        let mut f = marked();
        crop(&mut f, 1, 1, 2, 1).expect("inside");
        assert_eq!(f.img.dimensions(), (2, 1));
        assert_eq!(px(&f, 0, 0), [10, 10, 200, 255]);
        assert_eq!(px(&f, 1, 0), [20, 10, 200, 255]);
        let mut f = marked();
        let e = crop(&mut f, 2, 0, 2, 1).expect_err("outside");
        assert!(e.contains("not inside the 3x2 image"), "{e}");
    }

    #[test]
    fn grayscale_gives_equal_channels_and_keeps_alpha() {
        let mut f = frame(DynamicImage::ImageRgba8(RgbaImage::from_pixel(
            2,
            2,
            Rgba([200, 50, 10, 77]),
        )));
        grayscale(&mut f);
        let [r, g, b, a] = px(&f, 1, 1);
        assert_eq!((r, a), (g, 77));
        assert_eq!(g, b);
        // Rec. 709: 0.2126*200 + 0.7152*50 + 0.0722*10 = 79.
        assert!((i32::from(r) - 79).abs() <= 1, "{r}");
    }

    #[test]
    fn blur_softens_an_edge_and_sharpen_steepens_it() {
        let edge = || {
            let img = RgbImage::from_fn(
                40,
                8,
                |x, _| if x < 20 { Rgb([0; 3]) } else { Rgb([255; 3]) },
            );
            frame(DynamicImage::ImageRgb8(img))
        };
        let mut b = edge();
        blur(&mut b, 3.0);
        let (l, r) = (px(&b, 19, 4)[0], px(&b, 20, 4)[0]);
        assert!(l > 20 && r < 235, "edge not softened: {l} {r}");
        assert_eq!(px(&b, 0, 4)[0], 0, "far from the edge stays black");
        // A soft ramp gets steeper (overshoot on both sides) when sharpened.
        let ramp = RgbImage::from_fn(
            40,
            8,
            |x, _| Rgb([(x.clamp(10, 30) - 10) as u8 * 12 + 8; 3]),
        );
        let mut s = frame(DynamicImage::ImageRgb8(ramp.clone()));
        sharpen(&mut s, 2.0);
        assert!(
            px(&s, 11, 4)[0] < ramp.get_pixel(11, 4)[0],
            "dark side darker"
        );
        assert!(
            px(&s, 29, 4)[0] > ramp.get_pixel(29, 4)[0],
            "light side lighter"
        );
    }

    #[test]
    fn resize_fits_and_contain_pads_with_background() {
        let src = || {
            frame(DynamicImage::ImageRgb8(RgbImage::from_pixel(
                40,
                20,
                Rgb([9, 99, 199]),
            )))
        };
        for (fit, size) in [
            (Fit::Cover, (10, 10)),
            (Fit::Contain, (10, 10)),
            (Fit::Fill, (10, 10)),
            (Fit::Inside, (10, 5)),
            (Fit::Outside, (20, 10)),
        ] {
            let mut f = src();
            resize(&mut f, Some(10), Some(10), fit, None, u64::MAX).expect("resize");
            assert_eq!(f.img.dimensions(), size, "{fit:?}");
        }
        let mut f = src();
        let red = Colour([255, 0, 0, 255]);
        resize(
            &mut f,
            Some(10),
            Some(10),
            Fit::Contain,
            Some(red),
            u64::MAX,
        )
        .expect("resize");
        assert_eq!(px(&f, 5, 0), [255, 0, 0, 255], "padding above");
        assert_eq!(px(&f, 5, 5), [9, 99, 199, 255], "image in the middle");
        let mut f = src();
        let e = resize(&mut f, Some(60000), Some(60000), Fit::Fill, None, 1_000_000)
            .expect_err("over the pixel limit");
        assert!(e.contains("over the limit"), "{e}");
    }

    #[test]
    fn resize_keeps_alpha() {
        let mut img = RgbaImage::from_pixel(20, 20, Rgba([10, 20, 30, 255]));
        for y in 0..20 {
            for x in 10..20 {
                img.put_pixel(x, y, Rgba([0, 0, 0, 0]));
            }
        }
        let mut f = frame(DynamicImage::ImageRgba8(img));
        resize(&mut f, Some(10), None, Fit::Inside, None, u64::MAX).expect("resize");
        assert_eq!(px(&f, 1, 5), [10, 20, 30, 255]);
        assert_eq!(px(&f, 8, 5)[3], 0, "transparent half stays transparent");
    }

    #[test]
    fn orient_applies_exif_rotation() {
        let mut f = marked();
        f.orientation = Orientation::Rotate90;
        f.logical = Some((30, 20));
        orient(&mut f);
        assert_eq!(f.img.dimensions(), (2, 3));
        assert_eq!(px(&f, 0, 0), [0, 10, 200, 255]);
        assert_eq!(f.logical, Some((20, 30)));
        assert_eq!(f.orientation, Orientation::NoTransforms);
    }
}
