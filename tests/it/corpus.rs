//! The whole corpus through `pixmesh run`: plausible outputs, deterministic names and bytes.

use std::collections::BTreeSet;

use crate::helpers::*;

#[test]
fn whole_corpus_gives_plausible_outputs() {
    let out = tempfile::tempdir().expect("tempdir");
    let photos_dir = corpus().join("photos");
    let mut cmd = pixmesh();
    cmd.args([
        "run",
        "--json",
        "--steps",
        "orient | resize 320x320 | webp q=75",
        "-o",
    ])
    .arg(out.path())
    .arg(&photos_dir);
    if corpus().join("graphics").is_dir() {
        cmd.arg(corpus().join("graphics"));
    }
    let o = run(&mut cmd);
    assert!(o.status.success(), "exit {:?}: {}", o.status, stderr(&o));
    let r = report(&o);
    let inputs: Vec<_> = photos().into_iter().chain(graphics()).collect();
    assert!(inputs.len() >= 3, "corpus too small: {inputs:?}");
    assert_eq!(r["images"], inputs.len());
    assert_eq!(r["ok"], inputs.len());
    assert_eq!(r["failed"], 0);
    for res in r["results"].as_array().expect("results") {
        let src = &res["source_size"];
        let (sw, sh) = (src[0].as_f64().expect("w"), src[1].as_f64().expect("h"));
        let path = std::path::PathBuf::from(res["output"].as_str().expect("output path"));
        assert_eq!(path.extension().and_then(|e| e.to_str()), Some("webp"));
        let img = open(&path);
        let (w, h) = dims(&img);
        assert_eq!(
            w.max(h),
            320,
            "{} fits the box exactly on its long side",
            path.display()
        );
        let aspect = (f64::from(w) / f64::from(h)) / (sw / sh);
        assert!(
            (aspect - 1.0).abs() < 0.01,
            "{} keeps its aspect: {w}x{h} from {sw}x{sh}",
            path.display()
        );
        assert!(luma_stddev(&img) > 5.0, "{} is not blank", path.display());
    }
    // Names are the inputs' names with the new extension.
    let names: BTreeSet<String> = std::fs::read_dir(out.path())
        .expect("outdir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    let expected: BTreeSet<String> = inputs
        .iter()
        .map(|p| format!("{}.webp", p.file_stem().expect("stem").to_string_lossy()))
        .collect();
    assert_eq!(names, expected);
}

#[test]
fn runs_are_byte_identical() {
    let photo = largest_photo();
    let mut outputs = Vec::new();
    for _ in 0..2 {
        let out = tempfile::tempdir().expect("tempdir");
        let o = run(pixmesh()
            .args([
                "run",
                "-q",
                "--steps",
                "orient | resize 400x300 fit=cover | sharpen 0.8 | jpeg q=85",
                "-o",
            ])
            .arg(out.path())
            .arg(&photo));
        assert!(o.status.success(), "{}", stderr(&o));
        let name = format!("{}.jpg", photo.file_stem().expect("stem").to_string_lossy());
        outputs.push(std::fs::read(out.path().join(name)).expect("output written"));
    }
    assert_eq!(outputs[0], outputs[1]);
    let img = image::load_from_memory(&outputs[0]).expect("jpeg");
    assert_eq!(dims(&img), (400, 300));
}

#[test]
fn every_fit_mode_gives_the_documented_size_on_a_photo() {
    let photo = largest_photo();
    let src = open(&photo);
    let (sw, sh) = dims(&src);
    let (bw, bh) = (300u32, 300u32);
    let scale_in = (f64::from(bw) / f64::from(sw)).min(f64::from(bh) / f64::from(sh));
    let scale_out = (f64::from(bw) / f64::from(sw)).max(f64::from(bh) / f64::from(sh));
    let round = |v: f64| v.round() as u32;
    let cases = [
        ("cover", (bw, bh)),
        ("contain", (bw, bh)),
        ("fill", (bw, bh)),
        (
            "inside",
            (
                round(f64::from(sw) * scale_in),
                round(f64::from(sh) * scale_in),
            ),
        ),
        (
            "outside",
            (
                round(f64::from(sw) * scale_out),
                round(f64::from(sh) * scale_out),
            ),
        ),
    ];
    for (fit, want) in cases {
        let out = tempfile::tempdir().expect("tempdir");
        let steps = format!("resize {bw}x{bh} fit={fit} | png");
        let o = run(pixmesh()
            .args(["run", "-q", "--steps", &steps, "-o"])
            .arg(out.path())
            .arg(&photo));
        assert!(o.status.success(), "{fit}: {}", stderr(&o));
        let name = format!("{}.png", photo.file_stem().expect("stem").to_string_lossy());
        assert_eq!(dims(&open(&out.path().join(name))), want, "fit={fit}");
    }
}

#[test]
fn alpha_survives_png_and_webp_and_jpeg_flattens_it() {
    let Some(graphic) = graphics().into_iter().next() else {
        eprintln!("skipped: no graphics with alpha in {}", corpus().display());
        return;
    };
    let has_transparency = |img: &image::DynamicImage| img.to_rgba8().pixels().any(|p| p[3] < 255);
    assert!(
        has_transparency(&open(&graphic)),
        "the test graphic has alpha"
    );
    for (steps, ext, keeps) in [
        ("resize 200 | png", "png", true),
        ("resize 200 | webp lossless", "webp", true),
        ("resize 200 | webp q=90", "webp", true),
        ("resize 200 | jpeg", "jpg", false),
    ] {
        let out = tempfile::tempdir().expect("tempdir");
        let o = run(pixmesh()
            .args(["run", "-q", "--steps", steps, "-o"])
            .arg(out.path())
            .arg(&graphic));
        assert!(o.status.success(), "{steps}: {}", stderr(&o));
        let name = format!(
            "{}.{ext}",
            graphic.file_stem().expect("stem").to_string_lossy()
        );
        let img = open(&out.path().join(name));
        assert_eq!(img.color().has_alpha(), keeps, "{steps}");
        assert_eq!(has_transparency(&img), keeps, "{steps}");
    }
}
