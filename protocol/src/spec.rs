//! The job spec: which steps to run on every image, and how to write the result.
//!
//! The serde shape is the public contract of DESIGN.md:
//!
//! ```json
//! {
//!   "steps": [
//!     {"op": "orient"},
//!     {"op": "resize", "width": 800, "height": 600, "fit": "cover"},
//!     {"op": "plugin", "name": "sepia", "params": {"strength": "0.8"}}
//!   ],
//!   "output": {"format": "webp", "quality": 80}
//! }
//! ```
//!
//! Parsing ([`JobSpec::from_json`], [`JobSpec::from_toml`]) reads every step on
//! its own so that a shape error names the step, and then runs
//! [`JobSpec::validate`], which checks every range. Steps are numbered from 1
//! in messages, as a person counts them.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// The most steps one spec may hold.
pub const MAX_STEPS: usize = 64;
/// The largest width or height a step may name.
pub const MAX_DIMENSION: u32 = 65_535;

/// A whole job spec: steps applied in order, then the output encoding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// Operations applied to every image, in order.
    pub steps: Vec<Step>,
    /// How results are encoded.
    #[serde(default)]
    pub output: OutputSpec,
}

/// One pipeline step. The JSON form is internally tagged by `op`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
#[non_exhaustive]
pub enum Step {
    /// Apply the EXIF orientation, so that the pixels stand upright.
    Orient,
    /// Scale the image. Either dimension may be omitted to keep the aspect ratio.
    Resize {
        /// Target width in pixels.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        width: Option<u32>,
        /// Target height in pixels.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        height: Option<u32>,
        /// How the image fits the box when both dimensions are given.
        #[serde(default, skip_serializing_if = "Fit::is_default")]
        fit: Fit,
        /// Padding colour for `fit: contain` (default opaque black, as sharp).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        background: Option<Colour>,
    },
    /// Cut out a rectangle; it must lie inside the image.
    Crop {
        /// Left edge.
        x: u32,
        /// Top edge.
        y: u32,
        /// Width of the region.
        width: u32,
        /// Height of the region.
        height: u32,
    },
    /// Rotate clockwise by a multiple of 90 degrees.
    Rotate {
        /// 90, 180 or 270.
        degrees: u32,
    },
    /// Mirror the image.
    Flip {
        /// Which way to mirror.
        axis: Axis,
    },
    /// Gaussian blur.
    Blur {
        /// Standard deviation in pixels, 0.3..=1000.
        sigma: f32,
    },
    /// Unsharp-mask sharpening.
    Sharpen {
        /// Standard deviation of the mask's blur in pixels, 0.01..=10.
        sigma: f32,
    },
    /// Convert to grey (R = G = B, alpha kept).
    Grayscale,
    /// Run a sandboxed WebAssembly plugin.
    Plugin(PluginStep),
}

/// How a resize fits a `width` x `height` box; the meanings are sharp's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fit {
    /// Keep the aspect ratio, cover the box, crop the overflow (centred).
    Cover,
    /// Keep the aspect ratio, fit inside the box, pad to exactly the box.
    Contain,
    /// Ignore the aspect ratio, stretch to exactly the box.
    Fill,
    /// Keep the aspect ratio, as large as possible but no larger than the box.
    #[default]
    Inside,
    /// Keep the aspect ratio, as small as possible but no smaller than the box.
    Outside,
}

impl Fit {
    fn is_default(&self) -> bool {
        *self == Fit::Inside
    }

    /// The name used in specs.
    pub fn as_str(self) -> &'static str {
        match self {
            Fit::Cover => "cover",
            Fit::Contain => "contain",
            Fit::Fill => "fill",
            Fit::Inside => "inside",
            Fit::Outside => "outside",
        }
    }
}

/// Mirror axis for [`Step::Flip`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Axis {
    /// Left and right swap.
    Horizontal,
    /// Top and bottom swap.
    Vertical,
}

/// A plugin step: which plugin, and its parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawPluginStep", into = "RawPluginStep")]
pub struct PluginStep {
    /// The plugin, by registered name or by content hash.
    pub plugin: PluginRef,
    /// Parameters handed to the plugin as `key=value` lines.
    pub params: BTreeMap<String, String>,
}

/// How a plugin step names its plugin.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PluginRef {
    /// A name from the plugin registry.
    Name(String),
    /// The BLAKE3 hash of the module's bytes, 64 lowercase hex digits.
    Hash(String),
}

impl fmt::Display for PluginRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PluginRef::Name(n) => f.write_str(n),
            PluginRef::Hash(h) => f.write_str(h),
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPluginStep {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    hash: Option<String>,
    #[serde(default, deserialize_with = "de_params")]
    params: BTreeMap<String, String>,
}

impl TryFrom<RawPluginStep> for PluginStep {
    type Error = String;

    fn try_from(raw: RawPluginStep) -> Result<Self, String> {
        let plugin = match (raw.name, raw.hash) {
            (Some(name), None) => PluginRef::Name(name),
            (None, Some(hash)) => PluginRef::Hash(hash),
            (Some(_), Some(_)) => return Err("give `name` or `hash`, not both".into()),
            (None, None) => return Err("missing `name` or `hash` of the plugin".into()),
        };
        Ok(PluginStep {
            plugin,
            params: raw.params,
        })
    }
}

impl From<PluginStep> for RawPluginStep {
    fn from(step: PluginStep) -> Self {
        let (name, hash) = match step.plugin {
            PluginRef::Name(n) => (Some(n), None),
            PluginRef::Hash(h) => (None, Some(h)),
        };
        RawPluginStep {
            name,
            hash,
            params: step.params,
        }
    }
}

/// Plugin params are strings on the wire; accept numbers and booleans too and
/// keep their text, since people write `{"strength": 0.8}`.
fn de_params<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Value {
        S(String),
        I(i64),
        F(f64),
        B(bool),
    }
    let map = BTreeMap::<String, Value>::deserialize(d)?;
    Ok(map
        .into_iter()
        .map(|(k, v)| {
            let v = match v {
                Value::S(s) => s,
                Value::I(i) => i.to_string(),
                Value::F(f) => f.to_string(),
                Value::B(b) => b.to_string(),
            };
            (k, v)
        })
        .collect())
}

/// An sRGB colour with alpha, written `#rgb`, `#rrggbb` or `#rrggbbaa`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Colour(pub [u8; 4]);

impl Colour {
    /// Opaque white, the default background JPEG output flattens alpha onto.
    pub const WHITE: Colour = Colour([255, 255, 255, 255]);
    /// Opaque black, the default padding of `fit: contain` (as in sharp).
    pub const BLACK: Colour = Colour([0, 0, 0, 255]);
}

impl TryFrom<String> for Colour {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl std::str::FromStr for Colour {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("colour must be #rgb, #rrggbb or #rrggbbaa, got {s:?}");
        let hex = s.strip_prefix('#').ok_or_else(bad)?;
        if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        let nibble = |i: usize| u8::from_str_radix(&hex[i..=i], 16).map_err(|_| bad());
        let byte = |i: usize| u8::from_str_radix(&hex[i..i + 2], 16).map_err(|_| bad());
        match hex.len() {
            3 => Ok(Colour([
                nibble(0)? * 17,
                nibble(1)? * 17,
                nibble(2)? * 17,
                255,
            ])),
            6 => Ok(Colour([byte(0)?, byte(2)?, byte(4)?, 255])),
            8 => Ok(Colour([byte(0)?, byte(2)?, byte(4)?, byte(6)?])),
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for Colour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [r, g, b, a] = self.0;
        if a == 255 {
            write!(f, "#{r:02x}{g:02x}{b:02x}")
        } else {
            write!(f, "#{r:02x}{g:02x}{b:02x}{a:02x}")
        }
    }
}

impl From<Colour> for String {
    fn from(c: Colour) -> String {
        c.to_string()
    }
}

/// Output encoding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    /// Container and codec.
    #[serde(default)]
    pub format: OutputFormat,
    /// Lossy quality 1..=100 (JPEG, lossy WebP, AVIF). Default 80.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality: Option<u8>,
    /// WebP only: encode losslessly.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub lossless: bool,
    /// JPEG only: the colour transparent pixels are flattened onto (default white).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub background: Option<Colour>,
    /// Keep the input's ICC profile and EXIF block (JPEG output only).
    /// Metadata is stripped by default.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keep_metadata: bool,
}

impl Default for OutputSpec {
    fn default() -> Self {
        OutputSpec {
            format: OutputFormat::Jpeg,
            quality: None,
            lossless: false,
            background: None,
            keep_metadata: false,
        }
    }
}

impl OutputSpec {
    /// Quality used when none is given.
    pub const DEFAULT_QUALITY: u8 = 80;

    /// The effective lossy quality.
    pub fn quality(&self) -> u8 {
        self.quality.unwrap_or(Self::DEFAULT_QUALITY)
    }

    /// The effective JPEG background.
    pub fn background(&self) -> Colour {
        self.background.unwrap_or(Colour::WHITE)
    }
}

/// Output container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    /// Baseline JPEG; alpha is flattened onto the background.
    #[default]
    Jpeg,
    /// PNG, lossless, alpha kept.
    Png,
    /// WebP, lossy or lossless, alpha kept.
    Webp,
    /// AVIF, where the build includes an encoder.
    Avif,
}

impl OutputFormat {
    /// The spec name, which is also the file extension.
    pub fn as_str(self) -> &'static str {
        match self {
            OutputFormat::Jpeg => "jpeg",
            OutputFormat::Png => "png",
            OutputFormat::Webp => "webp",
            OutputFormat::Avif => "avif",
        }
    }

    /// The file extension for outputs.
    pub fn extension(self) -> &'static str {
        match self {
            OutputFormat::Jpeg => "jpg",
            other => other.as_str(),
        }
    }
}

/// Where in a spec an error was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// The spec as a whole (its syntax or top-level shape).
    Spec,
    /// A step, numbered from 1, with its op when known.
    Step {
        /// 1-based position in `steps`.
        index: usize,
        /// The step's op, when it could be read.
        op: Option<String>,
    },
    /// The `output` section.
    Output,
}

/// A spec that cannot run, with where and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{location}: {message}")]
pub struct SpecError {
    /// Where the problem is.
    pub location: Location,
    /// What is wrong, naming the field.
    pub message: String,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Spec => f.write_str("spec"),
            Location::Step {
                index,
                op: Some(op),
            } => write!(f, "step {index} ({op})"),
            Location::Step { index, op: None } => write!(f, "step {index}"),
            Location::Output => f.write_str("output"),
        }
    }
}

impl SpecError {
    pub(crate) fn spec(message: impl Into<String>) -> Self {
        SpecError {
            location: Location::Spec,
            message: message.into(),
        }
    }

    pub(crate) fn step(index: usize, op: Option<&str>, message: impl Into<String>) -> Self {
        SpecError {
            location: Location::Step {
                index,
                op: op.map(str::to_owned),
            },
            message: message.into(),
        }
    }

    pub(crate) fn output(message: impl Into<String>) -> Self {
        SpecError {
            location: Location::Output,
            message: message.into(),
        }
    }
}

/// The spec with each step still untyped, so errors can name the step.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpec {
    steps: Vec<serde_json::Value>,
    #[serde(default)]
    output: Option<serde_json::Value>,
}

impl JobSpec {
    /// Parse and validate a JSON spec.
    pub fn from_json(text: &str) -> Result<JobSpec, SpecError> {
        let raw: RawSpec = serde_json::from_str(text)
            .map_err(|e| SpecError::spec(format!("invalid JSON: {e}")))?;
        Self::from_raw(raw)
    }

    /// Parse and validate a TOML spec (`[[steps]]` tables and an `[output]` table).
    pub fn from_toml(text: &str) -> Result<JobSpec, SpecError> {
        let raw: RawSpec = toml::from_str(text)
            .map_err(|e| SpecError::spec(format!("invalid TOML: {}", e.message())))?;
        Self::from_raw(raw)
    }

    /// Parse and validate a spec whose format is told by a file name: `.toml`
    /// is TOML, anything else JSON.
    pub fn from_file_text(file_name: &str, text: &str) -> Result<JobSpec, SpecError> {
        if file_name.ends_with(".toml") {
            Self::from_toml(text)
        } else {
            Self::from_json(text)
        }
    }

    fn from_raw(raw: RawSpec) -> Result<JobSpec, SpecError> {
        if raw.steps.len() > MAX_STEPS {
            return Err(SpecError::spec(format!(
                "at most {MAX_STEPS} steps are allowed, got {}",
                raw.steps.len()
            )));
        }
        let mut steps = Vec::with_capacity(raw.steps.len());
        for (i, value) in raw.steps.into_iter().enumerate() {
            let op = value.get("op").and_then(|v| v.as_str()).map(str::to_owned);
            let step = serde_json::from_value::<Step>(value).map_err(|e| {
                let msg = e.to_string().replace("unknown variant", "unknown op");
                SpecError::step(i + 1, op.as_deref().filter(|o| is_known_op(o)), msg)
            })?;
            steps.push(step);
        }
        let output = match raw.output {
            None => OutputSpec::default(),
            Some(v) => serde_json::from_value(v).map_err(|e| SpecError::output(e.to_string()))?,
        };
        let spec = JobSpec { steps, output };
        spec.validate()?;
        Ok(spec)
    }

    /// Serialise as pretty JSON (the canonical stored form).
    pub fn to_json(&self) -> String {
        // A JobSpec holds only strings, numbers and maps with string keys:
        // serialisation to JSON cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Check every parameter's range. Errors name the step, field and value.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.steps.len() > MAX_STEPS {
            return Err(SpecError::spec(format!(
                "at most {MAX_STEPS} steps are allowed, got {}",
                self.steps.len()
            )));
        }
        for (i, step) in self.steps.iter().enumerate() {
            step.validate()
                .map_err(|msg| SpecError::step(i + 1, Some(step.op()), msg))?;
        }
        self.output.validate().map_err(SpecError::output)
    }
}

/// All ops, in the order the docs list them.
pub const OPS: &[&str] = &[
    "orient",
    "resize",
    "crop",
    "rotate",
    "flip",
    "blur",
    "sharpen",
    "grayscale",
    "plugin",
];

fn is_known_op(op: &str) -> bool {
    OPS.contains(&op)
}

fn check_dim(field: &str, v: u32) -> Result<(), String> {
    if (1..=MAX_DIMENSION).contains(&v) {
        Ok(())
    } else {
        Err(format!("{field} must be 1..={MAX_DIMENSION}, got {v}"))
    }
}

fn check_range(field: &str, v: f32, lo: f32, hi: f32) -> Result<(), String> {
    if v.is_finite() && (lo..=hi).contains(&v) {
        Ok(())
    } else {
        Err(format!("{field} must be {lo}..={hi}, got {v}"))
    }
}

/// Plugin names: what a registry would accept as a file-ish identifier.
pub fn is_valid_plugin_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !is_plugin_hash(name)
}

/// True for 64 lowercase hex digits, the form of a BLAKE3 content hash.
pub fn is_plugin_hash(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl Step {
    /// The op name as written in specs.
    pub fn op(&self) -> &'static str {
        match self {
            Step::Orient => "orient",
            Step::Resize { .. } => "resize",
            Step::Crop { .. } => "crop",
            Step::Rotate { .. } => "rotate",
            Step::Flip { .. } => "flip",
            Step::Blur { .. } => "blur",
            Step::Sharpen { .. } => "sharpen",
            Step::Grayscale => "grayscale",
            Step::Plugin(_) => "plugin",
        }
    }

    /// Check this step's parameters; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            Step::Orient | Step::Grayscale | Step::Flip { .. } => Ok(()),
            Step::Resize {
                width,
                height,
                fit,
                background,
            } => {
                if width.is_none() && height.is_none() {
                    return Err("give width, height or both".into());
                }
                if let Some(w) = width {
                    check_dim("width", *w)?;
                }
                if let Some(h) = height {
                    check_dim("height", *h)?;
                }
                if background.is_some() && *fit != Fit::Contain {
                    return Err(format!(
                        "background only applies to fit=contain, not fit={}",
                        fit.as_str()
                    ));
                }
                Ok(())
            }
            Step::Crop {
                x,
                y,
                width,
                height,
            } => {
                check_dim("width", *width)?;
                check_dim("height", *height)?;
                if *x > MAX_DIMENSION {
                    return Err(format!("x must be 0..={MAX_DIMENSION}, got {x}"));
                }
                if *y > MAX_DIMENSION {
                    return Err(format!("y must be 0..={MAX_DIMENSION}, got {y}"));
                }
                Ok(())
            }
            Step::Rotate { degrees } => match degrees {
                90 | 180 | 270 => Ok(()),
                d => Err(format!("degrees must be 90, 180 or 270, got {d}")),
            },
            Step::Blur { sigma } => check_range("sigma", *sigma, 0.3, 1000.0),
            Step::Sharpen { sigma } => check_range("sigma", *sigma, 0.01, 10.0),
            Step::Plugin(p) => p.validate(),
        }
    }
}

impl PluginStep {
    fn validate(&self) -> Result<(), String> {
        match &self.plugin {
            PluginRef::Name(n) if !is_valid_plugin_name(n) => {
                return Err(format!(
                    "name must be 1-64 characters of A-Z a-z 0-9 . _ - (and not a hash), got {n:?}"
                ));
            }
            PluginRef::Hash(h) if !is_plugin_hash(h) => {
                return Err(format!(
                    "hash must be 64 lowercase hex digits (BLAKE3), got {h:?}"
                ));
            }
            _ => {}
        }
        if self.params.len() > 64 {
            return Err(format!(
                "at most 64 params are allowed, got {}",
                self.params.len()
            ));
        }
        for (k, v) in &self.params {
            let key_ok = !k.is_empty()
                && k.len() <= 64
                && k.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
            if !key_ok {
                return Err(format!(
                    "param name must be 1-64 of A-Z a-z 0-9 . _ -, got {k:?}"
                ));
            }
            if v.contains('\n') || v.len() > 4096 {
                return Err(format!(
                    "param {k}: value must be one line of at most 4096 bytes"
                ));
            }
        }
        Ok(())
    }
}

impl OutputSpec {
    fn validate(&self) -> Result<(), String> {
        let format = self.format.as_str();
        if let Some(q) = self.quality {
            if !(1..=100).contains(&q) {
                return Err(format!("quality must be 1..=100, got {q}"));
            }
            if self.format == OutputFormat::Png {
                return Err("quality does not apply to png, which is always lossless".into());
            }
            if self.lossless {
                return Err("quality does not apply to lossless webp".into());
            }
        }
        if self.lossless && self.format != OutputFormat::Webp {
            return Err(format!("lossless applies to webp only, not {format}"));
        }
        if self.background.is_some() && self.format != OutputFormat::Jpeg {
            return Err(format!(
                "background applies to jpeg only (alpha is kept in {format}), not {format}"
            ));
        }
        if self.keep_metadata && self.format != OutputFormat::Jpeg {
            return Err(format!(
                "keep_metadata is supported for jpeg output only, not {format}"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        match JobSpec::from_json(text) {
            Ok(spec) => panic!("expected an error, got {spec:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn design_example_parses() {
        let spec = JobSpec::from_json(
            r#"{"steps":[{"op":"orient"},
                {"op":"resize","width":800,"height":600,"fit":"cover"},
                {"op":"plugin","name":"sepia","params":{"strength":"0.8"}}],
               "output":{"format":"webp","quality":80}}"#,
        )
        .expect("design example");
        assert_eq!(spec.steps.len(), 3);
        assert_eq!(
            spec.steps[1],
            Step::Resize {
                width: Some(800),
                height: Some(600),
                fit: Fit::Cover,
                background: None
            }
        );
        let Step::Plugin(p) = &spec.steps[2] else {
            panic!("not a plugin: {:?}", spec.steps[2])
        };
        assert_eq!(p.plugin, PluginRef::Name("sepia".into()));
        assert_eq!(p.params["strength"], "0.8");
        assert_eq!(spec.output.format, OutputFormat::Webp);
        assert_eq!(spec.output.quality(), 80);
    }

    #[test]
    fn json_round_trips() {
        let text = r##"{"steps":[{"op":"resize","width":10,"fit":"contain","background":"#ff000080"},
            {"op":"crop","x":1,"y":2,"width":3,"height":4},{"op":"flip","axis":"vertical"},
            {"op":"plugin","hash":"ab12000000000000000000000000000000000000000000000000000000000000"}],
            "output":{"format":"png"}}"##;
        let spec = JobSpec::from_json(text).expect("parses");
        let again = JobSpec::from_json(&spec.to_json()).expect("re-parses");
        assert_eq!(spec, again);
    }

    #[test]
    fn toml_parses_to_the_same_spec() {
        let toml = r#"
            [[steps]]
            op = "resize"
            width = 800
            fit = "cover"
            height = 600

            [[steps]]
            op = "plugin"
            name = "sepia"
            params = { strength = 0.8 }

            [output]
            format = "webp"
            quality = 70
        "#;
        let spec = JobSpec::from_toml(toml).expect("toml");
        let json = JobSpec::from_json(
            r#"{"steps":[{"op":"resize","width":800,"height":600,"fit":"cover"},
                {"op":"plugin","name":"sepia","params":{"strength":"0.8"}}],
               "output":{"format":"webp","quality":70}}"#,
        )
        .expect("json");
        assert_eq!(spec, json);
    }

    #[test]
    fn range_errors_name_step_field_and_value() {
        assert_eq!(
            err(r#"{"steps":[{"op":"orient"},{"op":"resize","width":0}]}"#),
            "step 2 (resize): width must be 1..=65535, got 0"
        );
        assert_eq!(
            err(r#"{"steps":[{"op":"rotate","degrees":45}]}"#),
            "step 1 (rotate): degrees must be 90, 180 or 270, got 45"
        );
        assert_eq!(
            err(r#"{"steps":[{"op":"blur","sigma":0.1}]}"#),
            "step 1 (blur): sigma must be 0.3..=1000, got 0.1"
        );
        assert_eq!(
            err(r#"{"steps":[{"op":"resize"}]}"#),
            "step 1 (resize): give width, height or both"
        );
        assert_eq!(
            err(r#"{"steps":[],"output":{"format":"jpeg","quality":0}}"#),
            "output: quality must be 1..=100, got 0"
        );
        assert_eq!(
            err(r#"{"steps":[],"output":{"format":"png","lossless":true}}"#),
            "output: lossless applies to webp only, not png"
        );
    }

    #[test]
    fn shape_errors_name_the_step() {
        let e = err(r#"{"steps":[{"op":"orient"},{"op":"blurr","sigma":1}]}"#);
        assert!(e.starts_with("step 2: unknown op `blurr`"), "{e}");
        let e = err(r#"{"steps":[{"op":"resize","width":"big"}]}"#);
        assert!(e.starts_with("step 1 (resize): invalid type"), "{e}");
        let e = err(r#"{"steps":[{"op":"resize","width":5,"colour":1}]}"#);
        assert!(e.contains("unknown field `colour`"), "{e}");
        let e = err(r#"{"steps":[{"op":"plugin"}]}"#);
        assert!(
            e.starts_with("step 1 (plugin): missing `name` or `hash`"),
            "{e}"
        );
        let e = err(r#"{"steps":[{"op":"plugin","name":"a","hash":"b"}]}"#);
        assert!(e.contains("not both"), "{e}");
        let e = err(r#"{"steps":[{"op":"plugin","hash":"xyz"}]}"#);
        assert!(e.starts_with("step 1 (plugin): hash must be 64"), "{e}");
        let e = err(r#"{"stepz":[]}"#);
        assert!(e.starts_with("spec: invalid JSON"), "{e}");
        let e = err(r#"{"steps":[{"op":"plugin","name":"x","params":{"a b":"1"}}]}"#);
        assert!(e.contains("param name"), "{e}");
    }

    #[test]
    fn colours_parse_and_print() {
        assert_eq!("#fff".parse::<Colour>(), Ok(Colour::WHITE));
        assert_eq!("#102030".parse::<Colour>(), Ok(Colour([16, 32, 48, 255])));
        assert_eq!("#10203040".parse::<Colour>(), Ok(Colour([16, 32, 48, 64])));
        assert!("102030".parse::<Colour>().is_err());
        assert!("#12345".parse::<Colour>().is_err());
        assert!("#gggggg".parse::<Colour>().is_err());
        assert_eq!(Colour([16, 32, 48, 64]).to_string(), "#10203040");
    }
}
