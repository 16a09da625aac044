//! The plugin host: hostile modules (written in WebAssembly text here) are
//! stopped or refused and the host carries on; the example plugins, built
//! from `plugins/` by `plugins/build.sh`, do what they say, pixel by pixel.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use pixmesh_agent::sandbox::{PluginError, PluginHost, PluginMetrics, RgbaFrame, SandboxConfig};

use crate::helpers::*;

fn wasm(name: &str) -> Vec<u8> {
    std::fs::read(dist().join(format!("{name}.wasm"))).expect("built plugin")
}

const TIMEOUT: Duration = Duration::from_millis(300);
const MEMORY: usize = 64 << 20;

fn host() -> PluginHost {
    host_counting(PluginMetrics::default())
}

fn host_counting(metrics: PluginMetrics) -> PluginHost {
    PluginHost::new(SandboxConfig {
        max_memory_bytes: MEMORY,
        timeout: TIMEOUT,
        max_instances: 4,
        cache_dir: None,
        keep_resident_bytes: 0,
        metrics,
    })
    .expect("host")
}

fn frame(w: u32, h: u32, rgba: [u8; 4]) -> RgbaFrame {
    RgbaFrame {
        width: w,
        height: h,
        pixels: rgba.repeat((w * h) as usize),
    }
}

fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A module with the ABI's exports; `body` is pixmesh_transform's body, run
/// only when the frame is wider than 1 pixel if `sneaky` (so it passes the
/// dry run), always otherwise. `extra` adds fields (imports, data, funcs).
fn wat(body: &str, sneaky: bool, version: i32, extra: &str) -> String {
    let identity = "(i64.or (i64.shl (i64.extend_i32_u (local.get $fp)) (i64.const 32)) (i64.extend_i32_u (local.get $fl)))";
    let transform = if sneaky {
        format!(
            "(if (result i64) (i32.gt_u (i32.load (i32.add (local.get $fp) (i32.const 4))) (i32.const 1)) (then {body}) (else {identity}))"
        )
    } else {
        body.to_owned()
    };
    format!(
        r#"(module
          {extra}
          (memory (export "memory") 1)
          (global $heap (mut i32) (i32.const 1024))
          (func (export "pixmesh_abi_version") (result i32) (i32.const {version}))
          (func (export "pixmesh_alloc") (param $len i32) (result i32) (local $p i32)
            (local.set $p (global.get $heap))
            (if (i32.gt_u (i32.add (local.get $p) (local.get $len)) (i32.mul (memory.size) (i32.const 65536)))
              (then (drop (memory.grow (i32.add (i32.div_u (local.get $len) (i32.const 65536)) (i32.const 1))))))
            (global.set $heap (i32.add (local.get $p) (local.get $len)))
            (local.get $p))
          (func (export "pixmesh_transform") (param $fp i32) (param $fl i32) (param $pp i32) (param $pl i32) (result i64)
            {transform}))"#
    )
}

const LOOP: &str = "(loop $l (br $l)) (i64.const 0)";
const GROW: &str =
    "(loop $l (br_if $l (i32.ne (memory.grow (i32.const 16)) (i32.const -1)))) (i64.const 0)";
const TRAP: &str = "unreachable";
const OOB: &str = "(i64.const 0x7fff000000000010)";
const SHORT: &str = "(i64.or (i64.shl (i64.extend_i32_u (local.get $fp)) (i64.const 32)) (i64.extend_i32_u (i32.sub (local.get $fl) (i32.const 4))))";
const HUGE: &str = "(i32.store (i32.add (local.get $fp) (i32.const 4)) (i32.const 100000)) (i32.store (i32.add (local.get $fp) (i32.const 8)) (i32.const 100000)) (i64.or (i64.shl (i64.extend_i32_u (local.get $fp)) (i64.const 32)) (i64.extend_i32_u (local.get $fl)))";

/// After any failure, the same host must still run a good plugin correctly.
fn still_healthy(host: &PluginHost) {
    let invert = host.load(&wasm("invert")).expect("invert loads");
    let out = host
        .run(
            &invert,
            frame(8, 8, [10, 20, 30, 40]),
            &BTreeMap::new(),
            1 << 20,
        )
        .expect("runs");
    assert_eq!(&out.pixels[..4], &[245, 235, 225, 40]);
}

#[test]
fn hostile_plugins_are_stopped_and_the_host_carries_on() {
    let metrics = PluginMetrics::default();
    let host = host_counting(metrics.clone());
    let mut hashes = BTreeMap::new();
    let big = frame(64, 64, [1, 2, 3, 255]);
    let none = BTreeMap::new();
    type Expect = fn(&PluginError) -> bool;
    let cases: [(&str, &str, Expect); 6] = [
        ("infinite loop", LOOP, |e| {
            matches!(e, PluginError::Timeout(_))
        }),
        ("memory.grow bomb", GROW, |e| {
            matches!(e, PluginError::MemoryLimit(_))
        }),
        (
            "trap",
            TRAP,
            |e| matches!(e, PluginError::Trap(m) if m.contains("unreachable")),
        ),
        (
            "output out of bounds",
            OOB,
            |e| matches!(e, PluginError::BadOutput(m) if m.contains("outside")),
        ),
        (
            "length disagrees with header",
            SHORT,
            |e| matches!(e, PluginError::BadOutput(m) if m.contains("does not match")),
        ),
        (
            "claims 100000x100000",
            HUGE,
            |e| matches!(e, PluginError::BadOutput(m) if m.contains("100000x100000 is over the limit")),
        ),
    ];
    for (what, body, expected) in cases {
        // Hostile from the first call: refused when added (the dry run).
        let refused = host
            .load(wat(body, false, 1, "").as_bytes())
            .expect_err(what);
        assert!(
            matches!(&refused, PluginError::Invalid(m) if m.contains("dry run")),
            "{what}: {refused}"
        );
        // Hostile only on real images: passes the dry run, fails the task.
        let plugin = host
            .load(wat(body, true, 1, "").as_bytes())
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        hashes.insert(what, plugin.hash().to_owned());
        let start = Instant::now();
        let err = host
            .run(&plugin, big.clone(), &none, 1 << 20)
            .expect_err(what);
        let took = start.elapsed();
        assert!(expected(&err), "{what}: unexpected error {err:?}");
        if what == "infinite loop" {
            assert!(
                took < TIMEOUT + Duration::from_secs(1),
                "stopped in {took:?}"
            );
            eprintln!("infinite loop stopped after {took:?} (deadline {TIMEOUT:?})");
        }
        still_healthy(&host);
    }
    // Counted by plugin for /metrics: each of these ran twice (the dry run
    // at load, then the image), and failed once.
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
    for (what, kind) in [
        ("infinite loop", "timeouts"),
        ("memory.grow bomb", "traps"),
        ("trap", "traps"),
    ] {
        let hash = &hashes[what];
        for line in [
            format!("pixmesh_plugin_{kind}_total{{plugin=\"{hash}\"}} 1"),
            format!("pixmesh_plugin_instantiations_total{{plugin=\"{hash}\"}} 2"),
        ] {
            assert!(text.contains(&line), "{what}: no `{line}` in\n{text}");
        }
    }
    let loop_hash = &hashes["infinite loop"];
    assert!(
        !text.contains(&format!(
            "pixmesh_plugin_traps_total{{plugin=\"{loop_hash}\"}}"
        )),
        "a timeout is not a trap"
    );
}

#[test]
fn modules_with_the_wrong_interface_are_refused_naming_the_problem() {
    let host = host();
    let identity = "(i64.or (i64.shl (i64.extend_i32_u (local.get $fp)) (i64.const 32)) (i64.extend_i32_u (local.get $fl)))";
    let wasi = wat(
        identity,
        false,
        1,
        r#"(import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))"#,
    );
    let e = host.load(wasi.as_bytes()).expect_err("wasi");
    assert!(
        e.to_string()
            .contains("imports `wasi_snapshot_preview1.fd_write`"),
        "{e}"
    );

    let v2 = wat(identity, false, 2, "");
    let e = host.load(v2.as_bytes()).expect_err("abi 2");
    assert!(
        e.to_string().contains("pixmesh_abi_version() returned 2"),
        "{e}"
    );

    let missing = r#"(module (memory (export "memory") 1)
        (func (export "pixmesh_abi_version") (result i32) (i32.const 1))
        (func (export "pixmesh_alloc") (param i32) (result i32) (i32.const 0)))"#;
    let e = host.load(missing.as_bytes()).expect_err("missing export");
    assert!(
        e.to_string().contains("missing export `pixmesh_transform`"),
        "{e}"
    );

    let wrong = r#"(module (memory (export "memory") 1)
        (func (export "pixmesh_abi_version") (result i32) (i32.const 1))
        (func (export "pixmesh_alloc") (param i64) (result i32) (i32.const 0))
        (func (export "pixmesh_transform") (param i32 i32 i32 i32) (result i64) (i64.const 0)))"#;
    let e = host.load(wrong.as_bytes()).expect_err("wrong signature");
    assert!(
        e.to_string()
            .contains("export `pixmesh_alloc` has type (i64) -> (i32)"),
        "{e}"
    );

    let e = host.load(b"\0asm garbage").expect_err("garbage");
    assert!(
        e.to_string().contains("not a valid WebAssembly module"),
        "{e}"
    );
    still_healthy(&host);
}

#[test]
fn a_plugin_error_message_reaches_the_user() {
    let host = host();
    let module = wat(
        "(i64.const -1)",
        false,
        1,
        r#"(data (i32.const 16) "strength must be 0..=1, got 7")
           (func (export "pixmesh_error") (result i64) (i64.or (i64.shl (i64.const 16) (i64.const 32)) (i64.const 29)))"#,
    );
    // A clean error in the dry run is not a broken plugin: it is added.
    let plugin = host.load(module.as_bytes()).expect("loads");
    let e = host
        .run(&plugin, frame(4, 4, [0; 4]), &BTreeMap::new(), 1 << 20)
        .expect_err("fails");
    assert_eq!(
        e,
        PluginError::Failed("strength must be 0..=1, got 7".into())
    );
    // The same through the SDK: a bad param value is named.
    let sepia = host.load(&wasm("sepia")).expect("sepia");
    let e = host
        .run(
            &sepia,
            frame(2, 2, [9; 4]),
            &params(&[("strength", "7")]),
            1 << 20,
        )
        .expect_err("bad param");
    assert_eq!(
        e,
        PluginError::Failed("param strength: must be 0..=1, got 7".into())
    );
    still_healthy(&host);
}

#[test]
fn example_plugins_have_the_documented_pixel_effects() {
    let host = host();
    let run = |name: &str, f: &RgbaFrame, p: &[(&str, &str)]| {
        let plugin = host
            .load(&wasm(name))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        host.run(&plugin, f.clone(), &params(p), 1 << 24)
            .unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    let px = |f: &RgbaFrame, x: u32, y: u32| -> [u8; 4] {
        let i = ((y * f.width + x) * 4) as usize;
        [
            f.pixels[i],
            f.pixels[i + 1],
            f.pixels[i + 2],
            f.pixels[i + 3],
        ]
    };

    assert_eq!(
        px(&run("invert", &frame(3, 3, [10, 20, 30, 40]), &[]), 1, 1),
        [245, 235, 225, 40]
    );

    let grey = frame(4, 4, [100, 100, 100, 200]);
    assert_eq!(px(&run("sepia", &grey, &[]), 0, 0), [135, 120, 93, 200]);
    assert_eq!(
        px(&run("sepia", &grey, &[("strength", "0")]), 0, 0),
        [100, 100, 100, 200]
    );

    let flat = run("sobel", &frame(8, 8, [50, 60, 70, 255]), &[]);
    assert!(
        flat.pixels.chunks(4).all(|p| p[..3] == [0, 0, 0]),
        "flat image has no edges"
    );
    let mut edge = frame(8, 8, [0, 0, 0, 255]);
    for y in 0..8 {
        for x in 4..8 {
            let i = (y * 8 + x) * 4;
            edge.pixels[i..i + 3].copy_from_slice(&[255, 255, 255]);
        }
    }
    let e = run("sobel", &edge, &[]);
    assert_eq!(px(&e, 4, 4)[0], 255, "edge is bright");
    assert_eq!(px(&e, 0, 4)[0], 0, "far from the edge is black");

    let mut checker = frame(4, 4, [0, 0, 0, 255]);
    for i in (0..16).filter(|i| (i % 4 + i / 4) % 2 == 0) {
        checker.pixels[i * 4..i * 4 + 3].copy_from_slice(&[200, 100, 50]);
    }
    let p = run("pixelate", &checker, &[("size", "2")]);
    assert!(
        p.pixels.chunks(4).all(|q| q == [100, 50, 25, 255]),
        "{:?}",
        &p.pixels[..8]
    );

    let v = run(
        "vignette",
        &frame(101, 101, [200, 200, 200, 255]),
        &[("strength", "1")],
    );
    assert_eq!(px(&v, 50, 50), [200, 200, 200, 255], "centre untouched");
    assert_eq!(px(&v, 0, 0)[0], 0, "corner black at strength 1");

    let b = run(
        "border",
        &frame(4, 2, [1, 2, 3, 255]),
        &[("width", "3"), ("colour", "#ff0000")],
    );
    assert_eq!((b.width, b.height), (10, 8));
    assert_eq!(px(&b, 0, 0), [255, 0, 0, 255]);
    assert_eq!(px(&b, 3, 3), [1, 2, 3, 255]);
    assert_eq!(px(&b, 6, 4), [1, 2, 3, 255]);
    assert_eq!(px(&b, 7, 4), [255, 0, 0, 255]);
}

#[test]
fn plugins_run_through_pixmesh_run_on_corpus_photos() {
    let home = tempfile::tempdir().expect("home");
    for name in ["sepia", "invert", "sobel", "pixelate", "vignette", "border"] {
        let o = run(pixmesh()
            .arg("plugin")
            .arg("add")
            .arg(dist().join(format!("{name}.wasm")))
            .arg("--home")
            .arg(home.path()));
        assert!(o.status.success(), "add {name}: {}", stderr(&o));
    }
    let o = run(pixmesh()
        .args(["plugin", "list", "--json", "--home"])
        .arg(home.path()));
    let list: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json list");
    assert_eq!(list.as_array().map(Vec::len), Some(6));

    let out = tempfile::tempdir().expect("out");
    let photos: Vec<_> = photos().into_iter().take(3).collect();
    let o = run(pixmesh()
        .args(["run", "--json", "--steps", "orient | resize 300 | plugin sepia | plugin vignette strength=0.3 | plugin border width=5 colour=#000 | png", "--home"])
        .arg(home.path())
        .arg("-o")
        .arg(out.path())
        .args(&photos));
    assert!(o.status.success(), "{}", stderr(&o));
    let r = report(&o);
    for res in r["results"].as_array().expect("results") {
        let img = open(std::path::Path::new(
            res["output"].as_str().expect("output"),
        ))
        .to_rgba8();
        let (w, h) = img.dimensions();
        assert_eq!(w, 310, "300 + 2 * 5 border");
        assert_eq!(img.get_pixel(0, 0).0, [0, 0, 0, 255], "border");
        let c = img.get_pixel(w / 2, h / 2).0;
        assert!(c[0] >= c[1] && c[1] >= c[2], "sepia tones: {c:?}");
    }
    // Removing a plugin makes specs that use it fail before any work.
    let o = run(pixmesh()
        .args(["plugin", "remove", "border", "--home"])
        .arg(home.path()));
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(pixmesh()
        .args(["run", "--steps", "plugin border", "--home"])
        .arg(home.path())
        .arg("-o")
        .arg(out.path())
        .arg(&photos[0]));
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("no plugin named `border`"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn compiled_code_is_cached_by_hash_and_a_bad_cache_entry_is_recompiled() {
    let cache = tempfile::tempdir().expect("cache");
    let config = SandboxConfig {
        max_memory_bytes: MEMORY,
        timeout: TIMEOUT,
        max_instances: 2,
        cache_dir: Some(cache.path().to_path_buf()),
        keep_resident_bytes: 0,
        ..SandboxConfig::default()
    };
    let bytes = wasm("invert");
    let hash = blake3_hex(&bytes);
    let plugin = PluginHost::new(config.clone())
        .expect("host")
        .load(&bytes)
        .expect("load");
    assert_eq!(plugin.hash(), hash);
    let entries: Vec<_> = std::fs::read_dir(cache.path())
        .expect("cache dir")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    let name = entries[0]
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    assert!(
        name.starts_with(&format!("{hash}-")) && name.ends_with(".cwasm"),
        "{name}"
    );

    // A damaged cache entry is never trusted: the module is compiled again.
    std::fs::write(&entries[0], b"not compiled code").expect("damage");
    let host = PluginHost::new(config).expect("host");
    let plugin = host.load(&bytes).expect("recompiles");
    let out = host
        .run(
            &plugin,
            frame(2, 2, [0, 0, 0, 255]),
            &BTreeMap::new(),
            1 << 20,
        )
        .expect("runs");
    assert_eq!(&out.pixels[..4], &[255, 255, 255, 255]);
    assert_ne!(
        std::fs::read(&entries[0]).expect("rewritten"),
        b"not compiled code"
    );
}

fn blake3_hex(bytes: &[u8]) -> String {
    // The host's hash, recomputed through the CLI's view: `plugin add` prints it.
    let home = tempfile::tempdir().expect("home");
    let file = home.path().join("p.wasm");
    std::fs::write(&file, bytes).expect("write");
    let o = run(pixmesh()
        .args(["plugin", "add", "--home"])
        .arg(home.path())
        .arg(&file));
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    text.split(['(', ','])
        .nth(1)
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("no hash in {text:?} {}", stderr(&o)))
}

#[test]
fn instances_are_bounded() {
    // One slot: two runaway calls from two threads must take turns, so the
    // pair takes at least two deadlines.
    let host = PluginHost::new(SandboxConfig {
        max_memory_bytes: MEMORY,
        timeout: TIMEOUT,
        max_instances: 1,
        cache_dir: None,
        keep_resident_bytes: 0,
        ..SandboxConfig::default()
    })
    .expect("host");
    let plugin = host
        .load(wat(LOOP, true, 1, "").as_bytes())
        .expect("passes the dry run");
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                let e = host.run(&plugin, frame(4, 4, [0; 4]), &BTreeMap::new(), 1 << 20);
                assert!(matches!(e, Err(PluginError::Timeout(_))), "{e:?}");
            });
        }
    });
    assert!(
        start.elapsed() >= TIMEOUT * 2,
        "ran together in {:?}",
        start.elapsed()
    );
    still_healthy(&host);
}

#[test]
fn every_example_plugin_runs_through_pixmesh_run_with_exact_effects() {
    let home = tempfile::tempdir().expect("home");
    let mut hashes = BTreeMap::new();
    for name in ["sepia", "invert", "sobel", "pixelate", "vignette", "border"] {
        let o = run(pixmesh()
            .args(["plugin", "add", "--home"])
            .arg(home.path())
            .arg(dist().join(format!("{name}.wasm"))));
        assert!(o.status.success(), "{}", stderr(&o));
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        let hash = text
            .split(['(', ','])
            .nth(1)
            .expect("hash printed")
            .to_owned();
        hashes.insert(name, hash);
    }
    let photo = photos().into_iter().next().expect("a photo");
    let render = |steps: &str| {
        let out = tempfile::tempdir().expect("out");
        let o = run(pixmesh()
            .args(["run", "-q", "--steps", steps, "--home"])
            .arg(home.path())
            .arg("-o")
            .arg(out.path())
            .arg(&photo));
        assert!(o.status.success(), "{steps}: {}", stderr(&o));
        let name = format!("{}.png", photo.file_stem().expect("stem").to_string_lossy());
        open(&out.path().join(name)).to_rgba8()
    };
    let plain = render("orient | resize 200 | png");
    let (w, h) = plain.dimensions();

    let inverted = render("orient | resize 200 | plugin invert | png");
    assert!(plain.pixels().zip(inverted.pixels()).all(|(a, b)| {
        a[0] == 255 - b[0] && a[1] == 255 - b[1] && a[2] == 255 - b[2] && a[3] == b[3]
    }));
    // By hash instead of name: the same bytes.
    let by_hash = render(&format!(
        "orient | resize 200 | plugin {} | png",
        hashes["invert"]
    ));
    assert_eq!(by_hash, inverted);

    assert_eq!(
        render("orient | resize 200 | plugin sepia strength=0 | png"),
        plain
    );
    let sepia = render("orient | resize 200 | plugin sepia | png");
    assert!(
        sepia.pixels().all(|p| p[0] >= p[1] && p[1] >= p[2]),
        "sepia orders R >= G >= B"
    );

    let edges = render("orient | resize 200 | plugin sobel | png");
    assert!(
        edges.pixels().all(|p| p[0] == p[1] && p[1] == p[2]),
        "sobel output is grey"
    );
    assert!(edges.pixels().any(|p| p[0] > 100), "a photo has edges");

    let blocks = render("orient | resize 200 | plugin pixelate size=10 | png");
    assert_eq!(
        blocks.get_pixel(0, 0),
        blocks.get_pixel(9, 9),
        "one block, one colour"
    );

    let vignetted = render("orient | resize 200 | plugin vignette strength=1 | png");
    assert_eq!(
        vignetted.get_pixel(w / 2, h / 2),
        plain.get_pixel(w / 2, h / 2),
        "centre untouched"
    );
    assert_eq!(
        &vignetted.get_pixel(0, 0).0[..3],
        &[0, 0, 0],
        "corner black"
    );

    let framed = render("orient | resize 200 | plugin border width=7 colour=#00ff00 | png");
    assert_eq!(framed.dimensions(), (w + 14, h + 14));
    assert_eq!(framed.get_pixel(3, 3).0, [0, 255, 0, 255]);
    assert_eq!(
        framed.get_pixel(7 + w / 2, 7 + h / 2),
        plain.get_pixel(w / 2, h / 2)
    );
}

#[test]
fn the_wat_example_in_the_abi_docs_is_a_working_plugin() {
    let doc = std::fs::read_to_string(root().join("docs/plugin-abi.md")).expect("docs");
    let start = doc.find("```wat\n").expect("a wat block") + "```wat\n".len();
    let end = start + doc[start..].find("```").expect("block end");
    let host = host();
    let plugin = host
        .load(&doc.as_bytes()[start..end])
        .expect("the documented example loads");
    let input = frame(3, 2, [7, 8, 9, 10]);
    let out = host
        .run(&plugin, input.clone(), &params(&[("k", "v")]), 1 << 20)
        .expect("runs");
    assert_eq!(out, input, "identity");
}
