//! Bad specs are refused before any image is touched, naming the step and field.

use crate::helpers::*;

#[test]
fn bad_compact_spec_exits_2_naming_step_and_field() {
    let out = tempfile::tempdir().expect("tempdir");
    let o = run(pixmesh()
        .args(["run", "--steps", "orient | resize 0x600", "-o"])
        .arg(out.path())
        .arg(&photos()[0]));
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("step 2 (resize): width must be 1..=65535, got 0"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        std::fs::read_dir(out.path()).expect("outdir").count(),
        0,
        "nothing written"
    );
}

#[test]
fn bad_pipeline_files_name_the_step() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, text, words) in [
        (
            "a.json",
            r#"{"steps":[{"op":"orient"},{"op":"twirl"}]}"#,
            "step 2: unknown op `twirl`",
        ),
        (
            "b.json",
            r#"{"steps":[{"op":"blur","sigma":-1}]}"#,
            "step 1 (blur): sigma must be 0.3..=1000, got -1",
        ),
        (
            "c.toml",
            "[[steps]]\nop = \"rotate\"\ndegrees = 45\n",
            "step 1 (rotate): degrees must be 90, 180 or 270, got 45",
        ),
        (
            "d.json",
            r#"{"steps":[], "output":{"format":"gif"}}"#,
            "output: unknown variant `gif`",
        ),
        ("e.json", "{not json", "spec: invalid JSON"),
    ] {
        let spec = dir.path().join(name);
        std::fs::write(&spec, text).expect("write spec");
        let o = run(pixmesh()
            .args(["run", "--pipeline"])
            .arg(&spec)
            .arg("-o")
            .arg(dir.path().join("out"))
            .arg(&photos()[0]));
        assert_eq!(o.status.code(), Some(2), "{name}");
        assert!(stderr(&o).contains(words), "{name}: {}", stderr(&o));
    }
}

#[test]
fn spec_source_is_required_and_exclusive() {
    let o = run(pixmesh().args(["run", "-o", "x", "y.jpg"]));
    assert_eq!(o.status.code(), Some(2));
    let o = run(pixmesh().args([
        "run",
        "--steps",
        "orient",
        "--pipeline",
        "p.json",
        "-o",
        "x",
        "y.jpg",
    ]));
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("cannot be used with"), "{}", stderr(&o));
}

#[test]
fn missing_input_and_empty_directory_are_clear() {
    let dir = tempfile::tempdir().expect("tempdir");
    let o = run(pixmesh()
        .args(["run", "--steps", "orient", "-o"])
        .arg(dir.path().join("out"))
        .arg(dir.path().join("nope")));
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("cannot read input"), "{}", stderr(&o));
    let o = run(pixmesh()
        .args(["run", "--steps", "orient", "-o"])
        .arg(dir.path().join("out"))
        .arg(dir.path()));
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("no images found"), "{}", stderr(&o));
}

#[test]
fn steps_this_build_cannot_run_are_refused_before_any_work() {
    let out = tempfile::tempdir().expect("tempdir");
    for (steps, words) in [
        (
            "resize 10 | avif q=50",
            "output: this build of pixmesh has no AVIF encoder",
        ),
        (
            "plugin sepia strength=0.8",
            "step 1 (plugin): no plugin named `sepia`",
        ),
    ] {
        let home = tempfile::tempdir().expect("empty home");
        let o = run(pixmesh()
            .args(["run", "--steps", steps, "--home"])
            .arg(home.path())
            .arg("-o")
            .arg(out.path())
            .arg(&photos()[0]));
        assert_eq!(o.status.code(), Some(2), "{steps}");
        assert!(stderr(&o).contains(words), "{steps}: {}", stderr(&o));
    }
    assert_eq!(std::fs::read_dir(out.path()).expect("outdir").count(), 0);
}
