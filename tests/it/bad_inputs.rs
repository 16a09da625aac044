//! Bad inputs fail alone, with a clear reason, while good images in the same run succeed.

use std::collections::HashMap;
use std::path::PathBuf;

use crate::helpers::*;

fn write(dir: &std::path::Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).expect("write test input");
    p
}

#[test]
fn each_bad_input_fails_alone_with_its_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = tempfile::tempdir().expect("tempdir");
    let photos = photos();
    let good: Vec<PathBuf> = photos.iter().take(2).cloned().collect();
    let jpeg = std::fs::read(&photos[0]).expect("read photo");
    // Cases: file, the words its error must contain.
    let cases: Vec<(PathBuf, &str)> = vec![
        (write(dir.path(), "empty.jpg", b""), "empty file"),
        (
            write(dir.path(), "truncated.jpg", &jpeg[..jpeg.len() / 3]),
            "Premature end of JPEG file",
        ),
        (
            write(dir.path(), "random.jpg", &noise(50_000, 7)),
            "not a recognised image",
        ),
        (
            write(dir.path(), "bomb.png", &png_claiming(100_000, 100_000)),
            "10000000000 pixels, over the limit",
        ),
        (
            write(dir.path(), "old.bmp", b"BM\0\0\0\0\0\0\0\0\0\0\0\0"),
            "unsupported format: BMP",
        ),
        (
            write(dir.path(), "scan.tif", b"II*\0\x08\0\0\0\0\0"),
            "unsupported format: TIF",
        ),
        (
            write(
                dir.path(),
                "notes.png",
                b"these are my notes, not a picture",
            ),
            "not a recognised image",
        ),
    ];
    let mut cmd = pixmesh();
    cmd.args([
        "run",
        "--json",
        "--steps",
        "orient | resize 128 | jpeg",
        "-o",
    ])
    .arg(out.path());
    cmd.args(&good);
    for (p, _) in &cases {
        cmd.arg(p);
    }
    let o = run(&mut cmd);
    assert_eq!(
        o.status.code(),
        Some(1),
        "some failed -> exit 1; stderr: {}",
        stderr(&o)
    );
    let r = report(&o);
    assert_eq!(r["ok"], good.len());
    assert_eq!(r["failed"], cases.len());
    let by_input: HashMap<String, &serde_json::Value> = r["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|v| (v["input"].as_str().expect("input").to_owned(), v))
        .collect();
    for g in &good {
        let res = by_input[&g.display().to_string()];
        assert_eq!(res["ok"], true, "{res}");
        let img = open(std::path::Path::new(
            res["output"].as_str().expect("output"),
        ));
        assert_eq!(dims(&img).0.max(dims(&img).1), 128);
    }
    for (p, words) in &cases {
        let res = by_input[&p.display().to_string()];
        assert_eq!(res["ok"], false, "{res}");
        let err = res["error"].as_str().expect("error text");
        assert!(
            err.contains(words),
            "{}: error {err:?} should contain {words:?}",
            p.display()
        );
        assert!(res["output"].is_null());
    }
    // No half-written or temporary files are left behind.
    let left: Vec<_> = std::fs::read_dir(out.path())
        .expect("outdir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(left.len(), good.len(), "{left:?}");
}

#[test]
fn text_mode_prints_one_line_per_failure_and_a_summary() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = tempfile::tempdir().expect("tempdir");
    let bad = write(dir.path(), "broken.jpg", b"\xff\xd8\xff garbage");
    let o = run(pixmesh()
        .args(["run", "--steps", "resize 64 | png", "-o"])
        .arg(out.path())
        .arg(&photos()[0])
        .arg(&bad));
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    let failed: Vec<&str> = err.lines().filter(|l| l.starts_with("failed: ")).collect();
    assert_eq!(failed.len(), 1, "{err}");
    assert!(failed[0].contains("broken.jpg: corrupt jpeg"), "{err}");
    assert!(err.contains("2 images: 1 ok, 1 failed"), "{err}");
}

#[test]
fn pixel_limit_is_configurable_and_checked_before_decoding() {
    let out = tempfile::tempdir().expect("tempdir");
    let big = largest_photo();
    let o = run(pixmesh()
        .args([
            "run",
            "--json",
            "--max-pixels",
            "1000000",
            "--steps",
            "resize 64",
            "-o",
        ])
        .arg(out.path())
        .arg(&big));
    assert_eq!(o.status.code(), Some(1));
    let r = report(&o);
    let err = r["results"][0]["error"].as_str().expect("error");
    assert!(err.contains("over the limit of 1000000"), "{err}");
    // Refused from the header: no pixels decoded, so it is quick even for a
    // big photo; the figure below is recorded, not asserted.
    eprintln!("refused in {} ms", r["results"][0]["millis"]);

    let o = run(pixmesh()
        .args([
            "run",
            "--json",
            "--max-input-bytes",
            "1000",
            "--steps",
            "resize 64",
            "-o",
        ])
        .arg(out.path())
        .arg(&big));
    let r = report(&o);
    let err = r["results"][0]["error"].as_str().expect("error");
    assert!(err.contains("over the limit of 1000 bytes"), "{err}");
}

#[test]
fn a_step_that_cannot_apply_fails_that_image_only() {
    let out = tempfile::tempdir().expect("tempdir");
    let photos = photos();
    // A crop bigger than every photo but one the spec itself allows.
    let o = run(pixmesh()
        .args(["run", "--json", "--steps", "crop 60000x10+0+0 | png", "-o"])
        .arg(out.path())
        .arg(&photos[0]));
    assert_eq!(o.status.code(), Some(1));
    let r = report(&o);
    let err = r["results"][0]["error"].as_str().expect("error");
    assert!(
        err.starts_with("step 1 (crop): region 60000x10+0+0 is not inside the"),
        "{err}"
    );
}
