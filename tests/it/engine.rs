//! Engine behaviour through the CLI and the library: EXIF orientation,
//! metadata, format sniffing, and the shrink-on-load fast paths.

use image::{DynamicImage, GenericImageView, Rgb, RgbImage};
use pixmesh_agent::pipeline::{self, Limits, Pipeline, jpeg};
use pixmesh_protocol::JobSpec;

use crate::helpers::*;

/// 40x20: left half red, right half blue.
fn two_halves() -> Vec<u8> {
    let img = RgbImage::from_fn(40, 20, |x, _| {
        if x < 20 {
            Rgb([255, 0, 0])
        } else {
            Rgb([0, 0, 255])
        }
    });
    img.into_raw()
}

/// `two_halves` stored as a JPEG whose EXIF says orientation 6.
fn orientation_6_jpeg(dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    let bytes = jpeg::encode(
        &two_halves(),
        40,
        20,
        95,
        None,
        Some(&exif_with_orientation(6)),
    )
    .expect("encode test jpeg");
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("write");
    path
}

fn is_red(p: [u8; 4]) -> bool {
    p[0] > 200 && p[2] < 60
}

fn is_blue(p: [u8; 4]) -> bool {
    p[2] > 200 && p[0] < 60
}

fn run_one(steps: &str, input: &std::path::Path, ext: &str) -> std::path::PathBuf {
    let out = tempfile::tempdir().expect("tempdir").keep();
    let o = run(pixmesh()
        .args(["run", "-q", "--steps", steps, "-o"])
        .arg(&out)
        .arg(input));
    assert!(o.status.success(), "{steps}: {}", stderr(&o));
    out.join(format!(
        "{}.{ext}",
        input.file_stem().expect("stem").to_string_lossy()
    ))
}

#[test]
fn exif_orientation_6_is_applied_by_orient() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = orientation_6_jpeg(dir.path(), "rotated.jpg");

    // Orientation 6: the stored image must be turned 90 degrees clockwise.
    let upright = open(&run_one("orient | png", &input, "png"));
    assert_eq!(upright.dimensions(), (20, 40));
    assert!(
        is_red(upright.get_pixel(10, 5).0),
        "left half goes to the top"
    );
    assert!(
        is_blue(upright.get_pixel(10, 35).0),
        "right half goes to the bottom"
    );

    // Without `orient` the stored pixels are left as they are.
    let raw = open(&run_one("png", &input, "png"));
    assert_eq!(raw.dimensions(), (40, 20));
    assert!(is_red(raw.get_pixel(5, 10).0));

    // Shrink-on-load planning follows the orientation too.
    let small = open(&run_one("orient | resize 10 | png", &input, "png"));
    assert_eq!(small.dimensions(), (10, 20));
}

#[test]
fn metadata_is_stripped_unless_kept_and_kept_orientation_is_reset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = orientation_6_jpeg(dir.path(), "meta.jpg");

    let stripped = std::fs::read(run_one("orient | jpeg", &input, "jpg")).expect("read");
    assert_eq!(jpeg::read_header(&stripped).expect("header").exif, None);

    let kept = std::fs::read(run_one("orient | jpeg keep-metadata", &input, "jpg")).expect("read");
    let exif = jpeg::read_header(&kept)
        .expect("header")
        .exif
        .expect("exif kept");
    assert_eq!(
        image::metadata::Orientation::from_exif_chunk(&exif),
        Some(image::metadata::Orientation::NoTransforms),
        "pixels are upright, so the kept tag must say so"
    );
}

#[test]
fn formats_are_sniffed_from_bytes_not_names() {
    let dir = tempfile::tempdir().expect("tempdir");
    let img = DynamicImage::ImageRgb8(RgbImage::from_fn(30, 20, |x, y| {
        Rgb([x as u8 * 8, y as u8 * 12, 90])
    }));
    // A PNG named .jpg, a GIF and a WebP.
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .expect("png");
    let mut gif = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut gif), image::ImageFormat::Gif)
        .expect("gif");
    let mut webp = Vec::new();
    DynamicImage::ImageRgba8(img.to_rgba8())
        .write_to(
            &mut std::io::Cursor::new(&mut webp),
            image::ImageFormat::WebP,
        )
        .expect("webp");
    let files = [
        ("really-png.jpg", png, "png"),
        ("anim.gif", gif, "gif"),
        ("pic.webp", webp, "webp"),
    ];
    let out = tempfile::tempdir().expect("tempdir");
    let mut cmd = pixmesh();
    cmd.args(["run", "--json", "--steps", "rotate 90 | png", "-o"])
        .arg(out.path());
    for (name, bytes, _) in &files {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).expect("write");
        cmd.arg(p);
    }
    let o = run(&mut cmd);
    assert!(o.status.success(), "{}", stderr(&o));
    let r = report(&o);
    for (i, (_, _, format)) in files.iter().enumerate() {
        let res = &r["results"][i];
        assert_eq!(res["format"], *format, "{res}");
        assert_eq!(res["output_size"], serde_json::json!([20, 30]), "{res}");
    }
}

#[test]
fn dc_only_decode_of_progressive_jpeg_matches_full_decode() {
    // The largest shared-corpus photo is progressive; find any progressive photo.
    let Some((path, bytes)) = photos()
        .into_iter()
        .map(|p| {
            let b = std::fs::read(&p).expect("read");
            (p, b)
        })
        .find(|(_, b)| jpeg::read_header(b).map(|h| h.progressive).unwrap_or(false))
    else {
        eprintln!("skipped: no progressive JPEG in {}", corpus().display());
        return;
    };
    let fast = jpeg::decode(&bytes, 8, 1 << 30, jpeg::MAX_SCANS).expect("1/8 decode");
    assert!(fast.dc_only, "{} takes the DC-only path", path.display());
    // Reference: full decode, then the mean of each 8x8 block, which is what
    // the DC coefficient is.
    let full = jpeg::decode(&bytes, 1, 1 << 30, jpeg::MAX_SCANS).expect("full decode");
    assert!(!full.dc_only);
    let (fw, fh) = (full.width as usize, full.height as usize);
    assert_eq!(
        (fast.width as usize, fast.height as usize),
        (fw.div_ceil(8), fh.div_ceil(8))
    );
    let mut total = 0.0;
    let mut count = 0.0;
    for by in 0..fh / 8 {
        for bx in 0..fw / 8 {
            for c in 0..3 {
                let mut sum = 0u32;
                for y in 0..8 {
                    for x in 0..8 {
                        sum += u32::from(full.rgb[((by * 8 + y) * fw + bx * 8 + x) * 3 + c]);
                    }
                }
                let mean = f64::from(sum) / 64.0;
                let got = f64::from(fast.rgb[(by * fast.width as usize + bx) * 3 + c]);
                total += (got - mean).abs();
                count += 1.0;
            }
        }
    }
    let mae = total / count;
    eprintln!(
        "{}: DC-only vs full-decode block means: mean abs diff {mae:.3} levels",
        path.display()
    );
    assert!(
        mae < 2.0,
        "DC-only decode differs by {mae:.3} levels on average"
    );
}

#[test]
fn shrink_on_load_is_used_and_never_changes_the_output_size() {
    let photo = largest_photo();
    let bytes = std::fs::read(&photo).expect("read");
    let probe = pipeline::probe(&bytes, &Limits::default()).expect("probe");
    let p = Pipeline::new(
        JobSpec::from_compact("orient | resize 256x256 | png").expect("spec"),
        Limits::default(),
    )
    .expect("pipeline");
    let out = p.process(&bytes).expect("process");
    let long = probe.width.max(probe.height);
    if long >= 256 * 4 {
        assert!(out.shrink > 1, "a {long}px photo to 256px shrinks on load");
    }
    let scale = 256.0 / f64::from(long);
    let want = (
        (f64::from(probe.width) * scale).round() as u32,
        (f64::from(probe.height) * scale).round() as u32,
    );
    assert_eq!((out.width, out.height), want);
    // A step before the resize turns shrink-on-load off.
    let p = Pipeline::new(
        JobSpec::from_compact("grayscale | resize 256x256 | png").expect("spec"),
        Limits::default(),
    )
    .expect("pipeline");
    assert_eq!(p.process(&bytes).expect("process").shrink, 1);
}

#[test]
fn libjpeg_memory_and_scan_counts_are_capped() {
    // A progressive photo needs its whole coefficient buffer in memory:
    // with a small cap libjpeg refuses instead of allocating.
    let progressive = photos()
        .into_iter()
        .map(|p| std::fs::read(p).expect("read"))
        .find(|b| {
            jpeg::read_header(b)
                .map(|h| h.progressive && h.width * h.height > 1_000_000)
                .unwrap_or(false)
        });
    match progressive {
        Some(bytes) => {
            let e =
                jpeg::decode(&bytes, 1, 4 << 20, jpeg::MAX_SCANS).expect_err("over the memory cap");
            assert!(e.0.contains("Backing store not supported"), "{e}");
            assert!(jpeg::decode(&bytes, 1, 1 << 30, jpeg::MAX_SCANS).is_ok());
        }
        None => eprintln!(
            "skipped the memory cap: no large progressive JPEG in {}",
            corpus().display()
        ),
    }
    // A valid file with 88 scans: refused under a cap of 50, fine under the default.
    let many = std::fs::read(root().join("tests/fixtures/many-scans.jpg")).expect("fixture");
    let e = jpeg::decode(&many, 1, 1 << 30, 50).expect_err("over the scan cap");
    assert_eq!(
        e.0,
        "more than 50 progressive scans (refused as a decoding bomb)"
    );
    let ok = jpeg::decode(&many, 1, 1 << 30, jpeg::MAX_SCANS).expect("88 scans is fine");
    assert_eq!((ok.width, ok.height), (16, 16));
}

/// Feed `bytes` to `process_chunks` in pieces of `size`.
fn process_in_chunks(
    pipeline: &Pipeline,
    bytes: &[u8],
    size: usize,
) -> Result<pipeline::Processed, pipeline::PipelineError> {
    let mut pieces = bytes.chunks(size).map(<[u8]>::to_vec);
    pipeline.process_chunks(&mut || pieces.next())
}

#[test]
fn decoding_while_the_bytes_arrive_gives_the_same_output() {
    // Agents decode an input while it is still arriving. Every photo, through
    // the DC-only path (1/8), a DCT shrink, and a full decode, must come out
    // byte for byte as `process` on the whole buffer makes it, whatever the
    // chunk size (one byte splits every marker and length field).
    let photos = photos();
    let progressive = photos
        .iter()
        .filter(|p| {
            let b = std::fs::read(p).expect("read");
            jpeg::read_header(&b)
                .map(|h| h.progressive)
                .unwrap_or(false)
        })
        .count();
    assert!(progressive > 0, "the corpus has progressive JPEGs");
    for steps in [
        "orient | resize 256x256 fit=inside | jpeg q=80",
        "resize 1200x1200 fit=inside | webp q=80",
        "orient | grayscale | png",
    ] {
        let pipeline = Pipeline::new(
            JobSpec::from_compact(steps).expect("spec"),
            Limits::default(),
        )
        .expect("pipeline");
        for path in &photos {
            let bytes = std::fs::read(path).expect("read");
            let whole = pipeline.process(&bytes).expect("process");
            let sizes: &[usize] = if bytes.len() < 300_000 {
                &[1, 4096, 1 << 20]
            } else {
                &[65_536]
            };
            for &size in sizes {
                let streamed = process_in_chunks(&pipeline, &bytes, size).unwrap_or_else(|e| {
                    panic!("{} in {size}-byte chunks, `{steps}`: {e}", path.display())
                });
                assert_eq!(
                    (streamed.width, streamed.height, streamed.shrink),
                    (whole.width, whole.height, whole.shrink),
                    "{} `{steps}`",
                    path.display()
                );
                assert!(
                    streamed.bytes == whole.bytes,
                    "{} in {size}-byte chunks, `{steps}`: output differs",
                    path.display()
                );
            }
        }
    }
    // Not a JPEG: gathered, then processed as a whole.
    let mut png = Vec::new();
    DynamicImage::ImageRgb8(RgbImage::from_raw(40, 20, two_halves()).expect("40x20"))
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .expect("encode png");
    let pipeline = Pipeline::new(
        JobSpec::from_compact("png").expect("spec"),
        Limits::default(),
    )
    .expect("pipeline");
    let whole = pipeline.process(&png).expect("png");
    let streamed = process_in_chunks(&pipeline, &png, 7).expect("png in chunks");
    assert_eq!(streamed.bytes, whole.bytes);
}

#[test]
fn a_stream_that_ends_early_or_carries_too_many_pixels_fails_cleanly() {
    // A baseline JPEG: every byte of it is needed (the DC-only path may
    // stop reading a progressive one before its end).
    let bytes = photos()
        .into_iter()
        .map(|p| std::fs::read(p).expect("read"))
        .find(|b| jpeg::read_header(b).is_ok_and(|h| !h.progressive))
        .expect("a baseline JPEG");
    let pipeline = Pipeline::new(
        JobSpec::from_compact("resize 64x64 | jpeg").expect("spec"),
        Limits::default(),
    )
    .expect("pipeline");
    for cut in [1, 10, 200, bytes.len() / 2, bytes.len() - 2] {
        let e = process_in_chunks(&pipeline, &bytes[..cut], 1000)
            .expect_err("a truncated stream must fail");
        assert!(
            matches!(
                e,
                pipeline::PipelineError::Decode { .. }
                    | pipeline::PipelineError::Unsupported(_)
                    | pipeline::PipelineError::Empty
            ),
            "cut at {cut}: {e}"
        );
    }
    assert!(matches!(
        process_in_chunks(&pipeline, &[], 1000),
        Err(pipeline::PipelineError::Empty)
    ));
    // The pixel limit is checked on the header, before any pixel is decoded.
    let tight = Limits {
        max_pixels: 1000,
        ..Limits::default()
    };
    let pipeline =
        Pipeline::new(JobSpec::from_compact("jpeg").expect("spec"), tight).expect("pipeline");
    let e = process_in_chunks(&pipeline, &bytes, 4096).expect_err("over the pixel limit");
    assert!(
        matches!(e, pipeline::PipelineError::TooManyPixels { .. }),
        "{e}"
    );
}
