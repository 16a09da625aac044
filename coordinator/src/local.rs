//! `pixmesh run`: the whole pipeline on this machine.
//!
//! Inputs are gathered and named first (deterministically, before any work),
//! then processed in parallel by one worker thread per core. Each output is written to a
//! temporary file in the output directory and renamed into place, so an
//! interrupted run never leaves a truncated result under a final name.

use std::collections::HashSet;
use std::fs;
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use pixmesh_agent::pipeline::{Limits, Pipeline, PipelineError};
use serde::Serialize;

use crate::cli::{EXIT_OK, EXIT_SOME_FAILED, RunArgs};

/// Extensions looked for when walking a directory. Files named on the
/// command line are read whatever their name; the format is always sniffed.
pub const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "webp", "gif"];

/// One image to process and where its result goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// The input file.
    pub input: PathBuf,
    /// The output file.
    pub output: PathBuf,
}

/// What happened to one image.
#[derive(Debug, Clone, Serialize)]
pub struct ImageReport {
    /// Input path as given.
    pub input: PathBuf,
    /// Output path, when written.
    pub output: Option<PathBuf>,
    /// True when the output was written.
    pub ok: bool,
    /// Why it failed.
    pub error: Option<String>,
    /// Input format, when recognised.
    pub format: Option<&'static str>,
    /// Input size in pixels `[width, height]`.
    pub source_size: Option<[u32; 2]>,
    /// Output size in pixels `[width, height]`.
    pub output_size: Option<[u32; 2]>,
    /// Input bytes.
    pub bytes_in: u64,
    /// Output bytes.
    pub bytes_out: u64,
    /// Time spent on this image (read, process, write), in milliseconds.
    pub millis: f64,
}

impl ImageReport {
    fn empty(input: &Path) -> ImageReport {
        ImageReport {
            input: input.to_path_buf(),
            output: None,
            ok: false,
            error: None,
            format: None,
            source_size: None,
            output_size: None,
            bytes_in: 0,
            bytes_out: 0,
            millis: 0.0,
        }
    }
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// The spec, in the compact form.
    pub steps: String,
    /// Images attempted.
    pub images: usize,
    /// Images written.
    pub ok: usize,
    /// Images that failed.
    pub failed: usize,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// Input megapixels of the images that succeeded.
    pub megapixels: f64,
    /// `megapixels / seconds`.
    pub megapixels_per_second: f64,
    /// `ok / seconds`.
    pub images_per_second: f64,
    /// Per image, in input order.
    pub results: Vec<ImageReport>,
}

/// Gather inputs: files as given, directories walked recursively for image
/// extensions, in sorted order. Missing paths are an error.
pub fn discover(inputs: &[PathBuf]) -> Result<Vec<(PathBuf, PathBuf)>> {
    // (file, name relative to the output directory)
    let mut found = Vec::new();
    for input in inputs {
        let meta = fs::metadata(input)
            .with_context(|| format!("cannot read input {}", input.display()))?;
        if meta.is_dir() {
            let mut files = Vec::new();
            walk(input, &mut files)
                .with_context(|| format!("cannot list directory {}", input.display()))?;
            files.sort();
            for f in files {
                let rel = f.strip_prefix(input).unwrap_or(&f).to_path_buf();
                found.push((f, rel));
            }
        } else {
            let name = input
                .file_name()
                .map(PathBuf::from)
                .unwrap_or_else(|| input.clone());
            found.push((input.clone(), name));
        }
    }
    Ok(found)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        let kind = entry.file_type()?;
        if hidden {
            continue;
        }
        if kind.is_dir() {
            walk(&path, out)?;
        } else if kind.is_file() || kind.is_symlink() {
            let ext = path.extension().map(|e| e.to_string_lossy().to_lowercase());
            if ext.is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.as_str())) {
                out.push(path);
            }
        }
    }
    Ok(())
}

/// Name outputs: the input's relative name with the output extension. When
/// two inputs would get the same name (`a/x.jpg` and `b/x.jpg` given as
/// files, or `x.jpg` and `x.png`), later ones get `-2`, `-3`, … in input
/// order, so names depend only on the command line.
pub fn plan_outputs(found: &[(PathBuf, PathBuf)], outdir: &Path, extension: &str) -> Vec<Job> {
    let mut taken = HashSet::new();
    found
        .iter()
        .map(|(input, rel)| {
            let base = rel.with_extension(extension);
            let mut candidate = base.clone();
            let mut n = 1;
            while !taken.insert(candidate.clone()) {
                n += 1;
                let stem = base
                    .file_stem()
                    .map(|s| s.to_string_lossy())
                    .unwrap_or_default();
                candidate = base.with_file_name(format!("{stem}-{n}.{extension}"));
            }
            Job {
                input: input.clone(),
                output: outdir.join(candidate),
            }
        })
        .collect()
}

/// Read a file, refusing it before reading when it is over the byte limit.
fn read_limited(path: &Path, limits: &Limits) -> std::result::Result<Vec<u8>, String> {
    let file = fs::File::open(path).map_err(|e| format!("cannot open: {e}"))?;
    let size = file
        .metadata()
        .map_err(|e| format!("cannot stat: {e}"))?
        .len();
    if size > limits.max_input_bytes {
        return Err(PipelineError::InputTooLarge {
            size,
            limit: limits.max_input_bytes,
        }
        .to_string());
    }
    let mut bytes = Vec::with_capacity(size as usize);
    file.take(limits.max_input_bytes + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read: {e}"))?;
    Ok(bytes)
}

/// Write `bytes` to `path` through a temporary file and a rename.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.pixmesh-{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Process one job end to end.
pub fn process_one(pipeline: &Pipeline, job: &Job) -> ImageReport {
    let start = Instant::now();
    let mut report = ImageReport::empty(&job.input);
    let outcome = (|| -> std::result::Result<(), String> {
        let bytes = read_limited(&job.input, pipeline.limits())?;
        report.bytes_in = bytes.len() as u64;
        let out = pipeline.process(&bytes).map_err(|e| e.to_string())?;
        report.format = Some(out.source_format.name());
        report.source_size = Some([out.source_width, out.source_height]);
        report.output_size = Some([out.width, out.height]);
        write_atomically(&job.output, &out.bytes)
            .map_err(|e| format!("cannot write {}: {e}", job.output.display()))?;
        report.bytes_out = out.bytes.len() as u64;
        report.output = Some(job.output.clone());
        Ok(())
    })();
    match outcome {
        Ok(()) => report.ok = true,
        Err(e) => report.error = Some(e),
    }
    report.millis = start.elapsed().as_secs_f64() * 1e3;
    report
}

/// Run `jobs` on `threads` worker threads, calling `on_done` after each
/// image. Workers pull from one queue ordered largest file first, so a big
/// photo never starts last and leaves the other cores idle at the end.
/// Results come back in input order.
pub fn process_all(
    pipeline: &Pipeline,
    jobs: &[Job],
    threads: usize,
    on_done: impl Fn(&ImageReport) + Sync,
) -> Result<(Vec<ImageReport>, Duration)> {
    let start = Instant::now();
    let mut order: Vec<(u64, usize)> = jobs
        .iter()
        .enumerate()
        .map(|(i, j)| (fs::metadata(&j.input).map(|m| m.len()).unwrap_or(0), i))
        .collect();
    order.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let next = AtomicUsize::new(0);
    let slots: Vec<Mutex<Option<ImageReport>>> = jobs.iter().map(|_| Mutex::new(None)).collect();
    std::thread::scope(|scope| -> Result<()> {
        for t in 0..threads.clamp(1, jobs.len().max(1)) {
            std::thread::Builder::new()
                .name(format!("pixmesh-worker-{t}"))
                .spawn_scoped(scope, || {
                    while let Some(&(_, i)) = order.get(next.fetch_add(1, Ordering::Relaxed)) {
                        let r = process_one(pipeline, &jobs[i]);
                        on_done(&r);
                        if let Ok(mut slot) = slots[i].lock() {
                            *slot = Some(r);
                        }
                    }
                })
                .context("cannot start a worker thread")?;
        }
        Ok(())
    })?;
    let results = slots
        .into_iter()
        .zip(jobs)
        .map(|(slot, job)| {
            slot.into_inner()
                .ok()
                .flatten()
                .unwrap_or_else(|| ImageReport {
                    error: Some("worker thread died".into()),
                    ..ImageReport::empty(&job.input)
                })
        })
        .collect();
    Ok((results, start.elapsed()))
}

/// Summarise per-image results.
pub fn summarise(pipeline: &Pipeline, results: Vec<ImageReport>, elapsed: Duration) -> RunReport {
    let ok = results.iter().filter(|r| r.ok).count();
    let megapixels: f64 = results
        .iter()
        .filter(|r| r.ok)
        .filter_map(|r| r.source_size)
        .map(|[w, h]| f64::from(w) * f64::from(h) / 1e6)
        .sum();
    let seconds = elapsed.as_secs_f64().max(1e-9);
    RunReport {
        steps: pipeline.spec().to_compact(),
        images: results.len(),
        ok,
        failed: results.len() - ok,
        seconds,
        megapixels,
        megapixels_per_second: megapixels / seconds,
        images_per_second: ok as f64 / seconds,
        results,
    }
}

/// The number of worker threads to use by default: every core.
pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// `pixmesh run`.
pub fn run_command(args: RunArgs) -> Result<ExitCode> {
    let spec = args.spec.load()?;
    let limits = args.limits.limits();
    let has_plugins = spec
        .steps
        .iter()
        .any(|s| matches!(s, pixmesh_protocol::Step::Plugin(_)));
    let pipeline = if has_plugins {
        let registry =
            crate::registry::Registry::open(&crate::registry::home(args.home.home.as_deref()))?;
        let host = std::sync::Arc::new(pixmesh_agent::sandbox::PluginHost::new(
            registry.sandbox_config(args.sandbox.config()),
        )?);
        let plugins = registry.resolve(&spec, host)?;
        Pipeline::with_plugins(spec, limits, plugins)
    } else {
        Pipeline::new(spec, limits)
    }
    .context("cannot run this spec")?;
    let found = discover(&args.inputs)?;
    if found.is_empty() {
        bail!(
            "no images found in {} (directories are searched for .{})",
            args.inputs
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            IMAGE_EXTENSIONS.join(", .")
        );
    }
    fs::create_dir_all(&args.output)
        .with_context(|| format!("cannot create output directory {}", args.output.display()))?;
    let jobs = plan_outputs(
        &found,
        &args.output,
        pipeline.spec().output.format.extension(),
    );
    let threads = args.jobs.unwrap_or_else(default_threads).max(1);

    let bar = if args.quiet || args.json || !std::io::stderr().is_terminal() {
        ProgressBar::hidden()
    } else {
        let bar = ProgressBar::new(jobs.len() as u64);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} images, {msg} ({eta} left)",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    };
    let failures = AtomicU64::new(0);
    let (results, elapsed) = process_all(&pipeline, &jobs, threads, |r| {
        if let Some(e) = &r.error {
            failures.fetch_add(1, Ordering::Relaxed);
            if !args.json {
                bar.suspend(|| eprintln!("failed: {}: {e}", r.input.display()));
            }
        }
        bar.set_message(format!("{} failed", failures.load(Ordering::Relaxed)));
        bar.inc(1);
    })?;
    bar.finish_and_clear();
    let report = summarise(&pipeline, results, elapsed);

    if args.json {
        let mut out = std::io::stdout().lock();
        serde_json::to_writer_pretty(&mut out, &report).context("cannot write the report")?;
        writeln!(out)?;
    } else {
        eprintln!(
            "{} images: {} ok, {} failed in {:.2} s ({:.1} Mpx/s, {:.1} images/s, {} threads) -> {}",
            report.images,
            report.ok,
            report.failed,
            report.seconds,
            report.megapixels_per_second,
            report.images_per_second,
            threads,
            args.output.display()
        );
    }
    Ok(ExitCode::from(if report.failed == 0 {
        EXIT_OK
    } else {
        EXIT_SOME_FAILED
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_names_are_deterministic_and_unique() {
        let found = vec![
            (PathBuf::from("a/x.jpg"), PathBuf::from("x.jpg")),
            (PathBuf::from("b/x.jpg"), PathBuf::from("x.jpg")),
            (PathBuf::from("x.png"), PathBuf::from("x.png")),
            (PathBuf::from("d/sub/y.gif"), PathBuf::from("sub/y.gif")),
        ];
        let jobs = plan_outputs(&found, Path::new("out"), "webp");
        let names: Vec<_> = jobs.iter().map(|j| j.output.clone()).collect();
        assert_eq!(
            names,
            vec![
                PathBuf::from("out/x.webp"),
                PathBuf::from("out/x-2.webp"),
                PathBuf::from("out/x-3.webp"),
                PathBuf::from("out/sub/y.webp"),
            ]
        );
        assert_eq!(plan_outputs(&found, Path::new("out"), "webp"), jobs);
    }
}
