//! `pixmesh bench --suite plugins`: what the sandbox costs.
//!
//! 1. **Call overhead**: instantiate a fresh instance (pooling allocator,
//!    `InstancePre`), copy a 1x1 frame in, call `invert`, check and copy the
//!    result out — the whole per-image cost of a plugin step with no pixels
//!    to speak of. Median and p99 over `--calls` calls, after a warm-up.
//! 2. **Compute**: the `sepia` plugin on a 12-megapixel frame (4000x3000),
//!    through the full host path (instance, copies in and out, output
//!    checks), against the same sepia compiled natively into this binary and
//!    run in place. Median of `--rounds`; the ratio is wasm time / native
//!    time. Both outputs are compared, so a plugin that skipped work could
//!    not look fast.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use pixmesh_agent::sandbox::{PluginHost, RgbaFrame};
use serde::Serialize;

use super::{BenchArgs, median, percentile};

/// The same sepia as `plugins/sepia`, compiled natively: the baseline.
pub fn sepia_native(pixels: &mut [u8], strength: f32) {
    for px in pixels.chunks_exact_mut(4) {
        let (r, g, b) = (f32::from(px[0]), f32::from(px[1]), f32::from(px[2]));
        let sr = 0.393 * r + 0.769 * g + 0.189 * b;
        let sg = 0.349 * r + 0.686 * g + 0.168 * b;
        let sb = 0.272 * r + 0.534 * g + 0.131 * b;
        px[0] = (r + (sr - r) * strength).min(255.0) as u8;
        px[1] = (g + (sg - g) * strength).min(255.0) as u8;
        px[2] = (b + (sb - b) * strength).min(255.0) as u8;
    }
}

/// A deterministic 4000x3000 test frame with varied content.
fn test_frame(width: u32, height: u32) -> RgbaFrame {
    let mut pixels = Vec::with_capacity((width * height * 4) as usize);
    let mut x: u32 = 0x9E37_79B9;
    for y in 0..height {
        for col in 0..width {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            pixels.extend_from_slice(&[
                (col * 255 / width) as u8,
                (y * 255 / height) as u8,
                (x >> 24) as u8,
                255,
            ]);
        }
    }
    RgbaFrame {
        width,
        height,
        pixels,
    }
}

/// The figures.
#[derive(Debug, Serialize)]
pub struct PluginBench {
    /// Timed 1x1 calls.
    pub calls: usize,
    /// Median microseconds per 1x1 call (instantiate + call + checks).
    pub overhead_median_us: f64,
    /// 99th percentile microseconds per 1x1 call.
    pub overhead_p99_us: f64,
    /// Frame size for the compute comparison.
    pub frame: [u32; 2],
    /// Median milliseconds, native sepia.
    pub native_ms: f64,
    /// Median milliseconds, sepia plugin through the host.
    pub wasm_ms: f64,
    /// `wasm_ms / native_ms`.
    pub wasm_over_native: f64,
    /// Largest per-channel difference between the two outputs.
    pub max_channel_difference: u8,
}

/// Run the plugin suite.
pub fn run(args: BenchArgs) -> Result<ExitCode> {
    let read = |name: &str| {
        let path = args.plugins.join(format!("{name}.wasm"));
        std::fs::read(&path).with_context(|| {
            format!(
                "cannot read {} (build plugins with plugins/build.sh)",
                path.display()
            )
        })
    };
    let host = PluginHost::new(args.sandbox.config())?;
    let invert = host.load(&read("invert")?)?;
    let sepia = host.load(&read("sepia")?)?;
    let none = BTreeMap::new();

    let one = RgbaFrame {
        width: 1,
        height: 1,
        pixels: vec![1, 2, 3, 4],
    };
    for _ in 0..200 {
        host.run(&invert, one.clone(), &none, 1)?;
    }
    let mut overhead = Vec::with_capacity(args.calls);
    for _ in 0..args.calls.max(1) {
        let t = Instant::now();
        let out = host.run(&invert, one.clone(), &none, 1)?;
        overhead.push(t.elapsed().as_secs_f64() * 1e6);
        ensure!(
            out.pixels == [254, 253, 252, 4],
            "invert returned {:?}",
            out.pixels
        );
    }

    let (w, h) = (4000, 3000);
    let frame = test_frame(w, h);
    let params: BTreeMap<String, String> = [("strength".to_owned(), "1".to_owned())].into();
    let (mut native, mut wasm) = (Vec::new(), Vec::new());
    let (mut native_out, mut wasm_out) = (Vec::new(), Vec::new());
    for round in 0..=args.rounds.max(1) {
        let mut pixels = frame.pixels.clone();
        let t = Instant::now();
        sepia_native(&mut pixels, 1.0);
        let native_s = t.elapsed().as_secs_f64();
        let input = frame.clone();
        let t = Instant::now();
        let out = host.run(&sepia, input, &params, u64::from(w * h))?;
        let wasm_s = t.elapsed().as_secs_f64();
        if round > 0 {
            native.push(native_s * 1e3);
            wasm.push(wasm_s * 1e3);
        }
        native_out = pixels;
        wasm_out = out.pixels;
    }
    ensure!(
        native_out.len() == wasm_out.len(),
        "sepia outputs differ in size"
    );
    let max_diff = native_out
        .iter()
        .zip(&wasm_out)
        .map(|(a, b)| a.abs_diff(*b))
        .max()
        .unwrap_or(0);
    ensure!(
        max_diff <= 1,
        "wasm and native sepia disagree by up to {max_diff} levels"
    );

    let report = PluginBench {
        calls: overhead.len(),
        overhead_median_us: median(&overhead),
        overhead_p99_us: percentile(&overhead, 99.0),
        frame: [w, h],
        native_ms: median(&native),
        wasm_ms: median(&wasm),
        wasm_over_native: median(&wasm) / median(&native),
        max_channel_difference: max_diff,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "plugin call overhead (1x1 frame, fresh instance): median {:.1} µs, p99 {:.1} µs over {} calls",
            report.overhead_median_us, report.overhead_p99_us, report.calls
        );
        println!(
            "sepia on {w}x{h}: native {:.1} ms, wasm plugin {:.1} ms (median of {}): wasm/native {:.2}x",
            report.native_ms, report.wasm_ms, args.rounds, report.wasm_over_native
        );
    }
    Ok(ExitCode::SUCCESS)
}
