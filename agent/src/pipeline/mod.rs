//! The image pipeline engine: bytes of one image + a job spec → bytes of the result.
//!
//! ```text
//! probe (sniff, header, limits) → decode (shrink-on-load) → steps → encode
//! ```
//!
//! A [`Pipeline`] is built once per job (it checks that this build can run
//! every step) and then shared by every worker thread; [`Pipeline::process`]
//! handles one image and never panics on bad input: every failure is a
//! [`PipelineError`] naming the problem.
//!
//! Shrink-on-load: when the steps begin with `resize` (after any `orient`),
//! JPEGs are decoded at 1/2, 1/4 or 1/8 scale, leaving at least a factor of
//! two for the Lanczos3 resampler, as libvips does. The resize is planned
//! from the full-size dimensions, so the output size never depends on it.

mod decode;
mod encode;
mod error;
pub mod geometry;
pub mod jpeg;
mod limits;
mod ops;

pub use decode::{Probe, SourceFormat, probe, sniff};
pub use error::PipelineError;
pub use limits::Limits;

use std::collections::HashMap;
use std::sync::Arc;

use image::metadata::Orientation;
use pixmesh_protocol::{JobSpec, Location, OutputFormat, PluginRef, SpecError, Step};

use crate::sandbox::{Plugin, PluginHost, RgbaFrame};
use ops::Frame;

/// The plugins a pipeline may call, resolved and validated, with the host
/// that runs them.
#[derive(Debug, Clone)]
pub struct PluginSet {
    host: Arc<PluginHost>,
    plugins: HashMap<PluginRef, Arc<Plugin>>,
}

impl PluginSet {
    /// A set running on `host`.
    pub fn new(host: Arc<PluginHost>) -> PluginSet {
        PluginSet {
            host,
            plugins: HashMap::new(),
        }
    }

    /// Make `plugin` available to steps that name it by `reference`.
    pub fn insert(&mut self, reference: PluginRef, plugin: Arc<Plugin>) {
        self.plugins.insert(reference, plugin);
    }
}

/// A validated job spec, ready to process images on any thread.
#[derive(Debug, Clone)]
pub struct Pipeline {
    spec: JobSpec,
    limits: Limits,
    plugins: Option<PluginSet>,
}

/// The result of processing one image.
#[derive(Debug)]
pub struct Processed {
    /// Encoded output.
    pub bytes: Vec<u8>,
    /// Output width.
    pub width: u32,
    /// Output height.
    pub height: u32,
    /// Input format.
    pub source_format: SourceFormat,
    /// Input width as stored.
    pub source_width: u32,
    /// Input height as stored.
    pub source_height: u32,
    /// The DCT shrink used when decoding (1 = full size).
    pub shrink: u8,
}

impl Pipeline {
    /// Check the spec and that this build can run all of it. Plugin steps
    /// need [`Pipeline::with_plugins`].
    pub fn new(spec: JobSpec, limits: Limits) -> Result<Pipeline, SpecError> {
        Self::build(spec, limits, None)
    }

    /// As [`Pipeline::new`], with plugins for the spec's plugin steps; every
    /// plugin step must name a plugin in `plugins`.
    pub fn with_plugins(
        spec: JobSpec,
        limits: Limits,
        plugins: PluginSet,
    ) -> Result<Pipeline, SpecError> {
        Self::build(spec, limits, Some(plugins))
    }

    fn build(
        spec: JobSpec,
        limits: Limits,
        plugins: Option<PluginSet>,
    ) -> Result<Pipeline, SpecError> {
        spec.validate()?;
        for (i, step) in spec.steps.iter().enumerate() {
            if let Step::Plugin(p) = step {
                let known = plugins
                    .as_ref()
                    .is_some_and(|set| set.plugins.contains_key(&p.plugin));
                if !known {
                    return Err(SpecError {
                        location: Location::Step {
                            index: i + 1,
                            op: Some("plugin".into()),
                        },
                        message: format!("plugin `{}` is not available", p.plugin),
                    });
                }
            }
        }
        if spec.output.format == OutputFormat::Avif {
            return Err(SpecError {
                location: Location::Output,
                message: "this build of pixmesh has no AVIF encoder; use webp or jpeg".into(),
            });
        }
        Ok(Pipeline {
            spec,
            limits,
            plugins,
        })
    }

    /// The spec this pipeline runs.
    pub fn spec(&self) -> &JobSpec {
        &self.spec
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Process one image.
    pub fn process(&self, bytes: &[u8]) -> Result<Processed, PipelineError> {
        let probe = decode::probe(bytes, &self.limits)?;
        let shrink = self.jpeg_shrink(&probe);
        let img = decode::decode(bytes, &probe, shrink, &self.limits)?;
        self.finish(probe, shrink, img)
    }

    /// As [`Pipeline::process`], for an image whose bytes arrive chunk by
    /// chunk from `next` (`None` ends them; `next` may block): a JPEG is
    /// decoded while the rest is still arriving, anything else is gathered
    /// first. The output is the same as `process` on all the bytes. The
    /// caller enforces the input's byte limit (the agent's blob fetch
    /// refuses a larger blob before reading it) and must not use the result
    /// unless the bytes were complete and verified.
    pub fn process_chunks(
        &self,
        next: &mut dyn FnMut() -> Option<Vec<u8>>,
    ) -> Result<Processed, PipelineError> {
        // Enough to sniff the format (its longest signature is 12 bytes).
        let mut head = Vec::new();
        while head.len() < 16 {
            match next() {
                Some(chunk) => head.extend_from_slice(&chunk),
                None => return self.process(&head),
            }
        }
        if decode::sniff(&head).ok() != Some(SourceFormat::Jpeg) {
            while let Some(chunk) = next() {
                head.extend_from_slice(&chunk);
            }
            return self.process(&head);
        }
        let mut first = Some(head);
        let mut feed = || first.take().or_else(&mut *next);
        // The header decides: refused (pixel limit), or the probe and shrink.
        let mut header_said = None;
        let decoded = jpeg::decode_chunks(
            &mut feed,
            self.limits.max_decoder_alloc(),
            jpeg::MAX_SCANS,
            &mut |header| {
                let probe = decode::jpeg_probe(header);
                let checked =
                    decode::check_pixels(probe.width, probe.height, &self.limits).map(|()| {
                        let shrink = self.jpeg_shrink(&probe);
                        (probe, shrink)
                    });
                let shrink = checked.as_ref().ok().map(|(_, shrink)| *shrink);
                header_said = Some(checked);
                shrink
            },
        )
        .map_err(decode::jpeg_error)?;
        let (probe, shrink) = header_said
            .ok_or_else(|| decode::jpeg_error(jpeg::JpegError("no header was read".into())))??;
        let decoded = decoded.ok_or_else(|| {
            decode::jpeg_error(jpeg::JpegError("decoder stopped after the header".into()))
        })?;
        self.finish(probe, shrink, decode::jpeg_image(decoded)?)
    }

    /// Run the steps on a decoded image and encode the result.
    fn finish(
        &self,
        probe: Probe,
        shrink: u8,
        img: image::DynamicImage,
    ) -> Result<Processed, PipelineError> {
        let logical = (shrink > 1).then_some((probe.width, probe.height));
        let mut frame = Frame {
            img,
            orientation: probe.orientation,
            logical,
        };
        let mut oriented = false;
        for (i, step) in self.spec.steps.iter().enumerate() {
            let fail = |message: String| PipelineError::Step {
                index: i + 1,
                op: step.op(),
                message,
            };
            match step {
                Step::Orient => {
                    oriented |= frame.orientation != Orientation::NoTransforms;
                    ops::orient(&mut frame);
                }
                Step::Resize {
                    width,
                    height,
                    fit,
                    background,
                } => {
                    ops::resize(
                        &mut frame,
                        *width,
                        *height,
                        *fit,
                        *background,
                        self.limits.max_pixels,
                    )
                    .map_err(fail)?;
                }
                Step::Crop {
                    x,
                    y,
                    width,
                    height,
                } => {
                    ops::crop(&mut frame, *x, *y, *width, *height).map_err(fail)?;
                }
                Step::Rotate { degrees } => ops::rotate(&mut frame, *degrees),
                Step::Flip { axis } => ops::flip(&mut frame, *axis),
                Step::Blur { sigma } => ops::blur(&mut frame, *sigma),
                Step::Sharpen { sigma } => ops::sharpen(&mut frame, *sigma),
                Step::Grayscale => ops::grayscale(&mut frame),
                Step::Plugin(p) => {
                    let set = self.plugins.as_ref();
                    let found = set.and_then(|s| s.plugins.get(&p.plugin).map(|pl| (s, pl)));
                    let Some((set, plugin)) = found else {
                        return Err(fail(format!("plugin `{}` is not available", p.plugin)));
                    };
                    run_plugin(
                        &mut frame,
                        &set.host,
                        plugin,
                        &p.params,
                        self.limits.max_pixels,
                    )
                    .map_err(|e| fail(e.to_string()))?;
                }
                _ => return Err(fail("this build cannot run this step".into())),
            }
        }
        let mut meta = encode::Metadata::default();
        if self.spec.output.keep_metadata {
            meta.icc = probe.icc;
            meta.exif = probe.exif.map(|mut exif| {
                if oriented {
                    // The pixels now stand upright; the tag must say so.
                    let _ = Orientation::remove_from_exif_chunk(&mut exif);
                }
                exif
            });
        }
        let bytes = encode::encode(&frame.img, &self.spec.output, &meta)?;
        Ok(Processed {
            bytes,
            width: frame.img.width(),
            height: frame.img.height(),
            source_format: probe.format,
            source_width: probe.width,
            source_height: probe.height,
            shrink,
        })
    }

    /// The DCT shrink to decode a JPEG at: only when the steps start with a
    /// resize (after any `orient`), and by how much that resize reduces.
    fn jpeg_shrink(&self, probe: &Probe) -> u8 {
        if probe.format != SourceFormat::Jpeg {
            return 1;
        }
        let mut dims = (probe.width, probe.height);
        for step in &self.spec.steps {
            match step {
                Step::Orient => {
                    if ops::swaps_axes(probe.orientation) {
                        dims = (dims.1, dims.0);
                    }
                }
                Step::Resize {
                    width, height, fit, ..
                } => {
                    let plan = geometry::plan(dims, *width, *height, *fit);
                    let (_, _, rw, rh) = plan.source;
                    let region = (rw.floor() as u32, rh.floor() as u32);
                    return jpeg::shrink_for(region, plan.scaled);
                }
                _ => return 1,
            }
        }
        1
    }
}

/// Hand the frame to a plugin as RGBA and take back what it returns.
fn run_plugin(
    frame: &mut Frame,
    host: &PluginHost,
    plugin: &Plugin,
    params: &std::collections::BTreeMap<String, String>,
    max_pixels: u64,
) -> Result<(), crate::sandbox::PluginError> {
    let was_opaque = matches!(frame.img, image::DynamicImage::ImageRgb8(_));
    let rgba = std::mem::replace(&mut frame.img, image::DynamicImage::new_rgb8(0, 0)).into_rgba8();
    let input = RgbaFrame {
        width: rgba.width(),
        height: rgba.height(),
        pixels: rgba.into_raw(),
    };
    // On failure the image fails as a whole, so the frame need not survive.
    let out = host.run(plugin, input, params, max_pixels)?;
    let img = image::RgbaImage::from_raw(out.width, out.height, out.pixels).ok_or_else(|| {
        crate::sandbox::PluginError::BadOutput("pixel buffer does not match its size".into())
    })?;
    let opaque = img.pixels().all(|p| p[3] == 255);
    frame.img = if was_opaque && opaque {
        image::DynamicImage::ImageRgb8(image::DynamicImage::ImageRgba8(img).into_rgb8())
    } else {
        image::DynamicImage::ImageRgba8(img)
    };
    frame.logical = None;
    Ok(())
}
