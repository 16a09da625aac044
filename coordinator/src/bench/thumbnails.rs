//! `pixmesh bench` (suite `thumbnails`): pixmesh against libvips' `vipsthumbnail` and ImageMagick
//! on the same photos, in one run, each tool using every core.
//!
//! The task is the classic one: a JPEG thumbnail at quality 80 that fits in a
//! `size` x `size` box, for every photo in a directory, read from and written
//! to files. Each tool gets one untimed warm-up pass (page cache), then
//! `rounds` timed passes in rotating order; the median wall time counts.
//!
//! How each tool uses the cores:
//! - pixmesh: one process, a worker thread per core (as `pixmesh run`).
//! - vipsthumbnail: one process per core, each given a share of the photos
//!   balanced by file size (libvips also threads inside each process).
//! - ImageMagick: one `convert` per photo, a core's worth running at a time,
//!   with `-define jpeg:size=` so it may shrink on load too.
//!
//! Every output is decoded afterwards and must fit the box, so a tool that
//! silently failed cannot look fast.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use pixmesh_agent::pipeline::{Limits, Pipeline};
use pixmesh_protocol::{Fit, JobSpec, OutputFormat, OutputSpec, Step};
use serde::Serialize;

use super::median;

use super::BenchArgs;
use crate::local;

/// One tool's figures.
#[derive(Debug, Clone, Serialize)]
pub struct ToolResult {
    /// Tool name.
    pub tool: String,
    /// Median wall seconds per pass.
    pub median_seconds: f64,
    /// Every timed pass, seconds.
    pub passes: Vec<f64>,
    /// Images per second at the median.
    pub images_per_second: f64,
    /// Input megapixels per second at the median.
    pub megapixels_per_second: f64,
}

/// The whole benchmark.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// Photos used.
    pub corpus: PathBuf,
    /// Number of photos.
    pub images: usize,
    /// Total input megapixels.
    pub megapixels: f64,
    /// Cores each tool used.
    pub jobs: usize,
    /// Per tool.
    pub tools: Vec<ToolResult>,
    /// pixmesh throughput divided by each baseline's, e.g. `vipsthumbnail: 1.8`.
    pub ratios: Vec<(String, f64)>,
}

/// Find a native executable (not a wrapper script) on PATH.
fn find_native(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    for name in names {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            if let Ok(head) = std::fs::read(&candidate).map(|b| b.get(..4).map(<[u8]>::to_vec))
                && head.as_deref() == Some(b"\x7fELF")
            {
                return Some(candidate);
            }
        }
    }
    None
}

/// Split files over `n` groups, largest first onto the lightest group.
fn balance(files: &[(PathBuf, u64)], n: usize) -> Vec<Vec<PathBuf>> {
    let mut sorted = files.to_vec();
    sorted.sort_by_key(|f| std::cmp::Reverse(f.1));
    let mut groups: Vec<(u64, Vec<PathBuf>)> = vec![(0, Vec::new()); n.max(1)];
    for (f, size) in sorted {
        if let Some(g) = groups.iter_mut().min_by_key(|g| g.0) {
            g.0 += size;
            g.1.push(f);
        }
    }
    groups
        .into_iter()
        .map(|g| g.1)
        .filter(|g| !g.is_empty())
        .collect()
}

/// A tool under test: runs one full pass into an output directory.
type Pass<'a> = Box<dyn Fn(&Path) -> Result<()> + 'a>;

fn run_children(mut children: Vec<std::process::Child>, what: &str) -> Result<()> {
    let mut failed = None;
    for c in children.iter_mut() {
        let status = c.wait().with_context(|| format!("waiting for {what}"))?;
        if !status.success() {
            failed = Some(status);
        }
    }
    if let Some(status) = failed {
        bail!("{what} failed: {status}");
    }
    Ok(())
}

/// Check a pass's outputs: one decodable JPEG per input, fitting the box.
fn verify(outdir: &Path, expected: usize, size: u32) -> Result<()> {
    let mut n = 0;
    for entry in std::fs::read_dir(outdir)? {
        let path = entry?.path();
        let img = image::ImageReader::open(&path)?
            .with_guessed_format()?
            .into_dimensions()
            .with_context(|| format!("bad output {}", path.display()))?;
        ensure!(
            img.0.max(img.1) == size,
            "{} is {}x{}, not fitted to {size}",
            path.display(),
            img.0,
            img.1
        );
        n += 1;
    }
    ensure!(
        n == expected,
        "{} outputs in {}, expected {expected}",
        n,
        outdir.display()
    );
    Ok(())
}

/// Run the thumbnail suite.
pub fn run(args: BenchArgs) -> Result<ExitCode> {
    let corpus = args
        .corpus
        .clone()
        .or_else(super::default_corpus)
        .context("no photos to benchmark: give --corpus DIR or set PIXMESH_CORPUS")?;
    let found = local::discover(std::slice::from_ref(&corpus))?;
    ensure!(!found.is_empty(), "no images in {}", corpus.display());
    let files: Vec<(PathBuf, u64)> = found
        .iter()
        .map(|(f, _)| Ok((f.clone(), std::fs::metadata(f)?.len())))
        .collect::<Result<_>>()?;
    let jobs = args.jobs.unwrap_or_else(local::default_threads).max(1);
    let size = args.size;
    let quality = args.quality;

    let spec = JobSpec {
        steps: vec![Step::Resize {
            width: Some(size),
            height: Some(size),
            fit: Fit::Inside,
            background: None,
        }],
        output: OutputSpec {
            format: OutputFormat::Jpeg,
            quality: Some(quality),
            ..OutputSpec::default()
        },
    };
    let pipeline = Pipeline::new(spec, Limits::default())?;
    let mut megapixels = 0.0;
    for (f, _) in &files {
        let probe = pixmesh_agent::pipeline::probe(&std::fs::read(f)?, &Limits::default())
            .with_context(|| format!("{} is not a usable photo", f.display()))?;
        megapixels += f64::from(probe.width) * f64::from(probe.height) / 1e6;
    }

    let mut tools: Vec<(String, Pass<'_>)> = Vec::new();
    let pipeline_ref = &pipeline;
    let found_ref = &found;
    tools.push((
        "pixmesh".into(),
        Box::new(move |out: &Path| {
            let planned = local::plan_outputs(found_ref, out, "jpg");
            let (results, _) = local::process_all(pipeline_ref, &planned, jobs, |_| {})?;
            if let Some(bad) = results.iter().find(|r| !r.ok) {
                bail!("pixmesh failed on {}: {:?}", bad.input.display(), bad.error);
            }
            Ok(())
        }),
    ));
    if !args.pixmesh_only {
        let vips = find_native(&["vipsthumbnail"]).context(
            "vipsthumbnail not found (Debian: apt-get install libvips-tools), or use --pixmesh-only",
        )?;
        let magick = find_native(&["magick", "convert"]).context(
            "ImageMagick not found (Debian: apt-get install imagemagick), or use --pixmesh-only",
        )?;
        let groups = balance(&files, jobs);
        tools.push((
            "vipsthumbnail".into(),
            Box::new(move |out: &Path| {
                let pattern = format!("{}/%s.jpg[Q={quality},strip]", out.display());
                let children = groups
                    .iter()
                    .map(|g| {
                        Command::new(&vips)
                            .arg("-s")
                            .arg(size.to_string())
                            .arg("-o")
                            .arg(&pattern)
                            .args(g)
                            .stdout(Stdio::null())
                            .spawn()
                    })
                    .collect::<std::io::Result<Vec<_>>>()
                    .context("cannot start vipsthumbnail")?;
                run_children(children, "vipsthumbnail")
            }),
        ));
        let files_ref = &files;
        tools.push((
            "imagemagick".into(),
            Box::new(move |out: &Path| {
                let mut queue = files_ref.iter().enumerate();
                let mut running: Vec<std::process::Child> = Vec::new();
                loop {
                    while running.len() < jobs {
                        let Some((i, (f, _))) = queue.next() else {
                            break;
                        };
                        let child = Command::new(&magick)
                            .arg("-define")
                            .arg(format!("jpeg:size={}x{}", size * 2, size * 2))
                            .arg(f)
                            .arg("-thumbnail")
                            .arg(format!("{size}x{size}"))
                            .arg("-quality")
                            .arg(quality.to_string())
                            .arg("-strip")
                            .arg(out.join(format!("{i}.jpg")))
                            .spawn()
                            .context("cannot start ImageMagick")?;
                        running.push(child);
                    }
                    if running.is_empty() {
                        return Ok(());
                    }
                    let first = running.remove(0);
                    run_children(vec![first], "ImageMagick")?;
                }
            }),
        ));
    }

    let scratch = tempfile::tempdir().context("cannot create a scratch directory")?;
    let mut timings: Vec<Vec<f64>> = vec![Vec::new(); tools.len()];
    for round in 0..=args.rounds {
        for k in 0..tools.len() {
            // Rotate the order each round so no tool always runs first.
            let t = (k + round) % tools.len();
            let (name, pass) = &tools[t];
            let out = scratch.path().join(format!("{name}-{round}"));
            std::fs::create_dir_all(&out)?;
            let start = Instant::now();
            pass(&out).with_context(|| format!("{name} pass failed"))?;
            let elapsed: Duration = start.elapsed();
            verify(&out, files.len(), size).with_context(|| format!("{name} output is wrong"))?;
            std::fs::remove_dir_all(&out)?;
            if round > 0 {
                timings[t].push(elapsed.as_secs_f64());
            }
            if !args.json {
                let label = if round == 0 {
                    "warm-up".to_owned()
                } else {
                    format!("pass {round}")
                };
                eprintln!("  {name:<14} {label:<8} {:.3} s", elapsed.as_secs_f64());
            }
        }
    }

    let n = files.len() as f64;
    let results: Vec<ToolResult> = tools
        .iter()
        .zip(&timings)
        .map(|((name, _), passes)| {
            let m = median(passes);
            ToolResult {
                tool: name.clone(),
                median_seconds: m,
                passes: passes.clone(),
                images_per_second: n / m,
                megapixels_per_second: megapixels / m,
            }
        })
        .collect();
    let ours = results[0].images_per_second;
    let ratios: Vec<(String, f64)> = results[1..]
        .iter()
        .map(|r| (r.tool.clone(), ours / r.images_per_second))
        .collect();
    let report = BenchReport {
        corpus,
        images: files.len(),
        megapixels,
        jobs,
        tools: results,
        ratios,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{} photos, {:.1} megapixels, {size} px JPEG q{quality} thumbnails, {} cores each, median of {} passes",
            report.images, report.megapixels, report.jobs, args.rounds
        );
        for r in &report.tools {
            println!(
                "  {:<14} {:>7.3} s  {:>7.1} images/s  {:>7.1} Mpx/s",
                r.tool, r.median_seconds, r.images_per_second, r.megapixels_per_second
            );
        }
        for (tool, ratio) in &report.ratios {
            println!("  pixmesh / {tool}: {ratio:.2}x throughput");
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn balance_spreads_bytes() {
        let files: Vec<(PathBuf, u64)> = [10, 9, 2, 2, 2, 1]
            .iter()
            .enumerate()
            .map(|(i, s)| (PathBuf::from(i.to_string()), *s))
            .collect();
        let groups = balance(&files, 2);
        assert_eq!(groups.len(), 2);
        assert_eq!(groups.iter().map(Vec::len).sum::<usize>(), 6);
        assert_eq!(groups[0][0], PathBuf::from("0"));
        assert_eq!(groups[1][0], PathBuf::from("1"));
    }
}
