//! The compact one-line spec used by `pixmesh run --steps` and `pixmesh submit --steps`.
//!
//! Steps are separated by `|`. Each step is an op followed by positional
//! arguments and `key=value` arguments, separated by spaces. The last item
//! may name the output format instead of an op.
//!
//! ```text
//! orient | resize 800x600 fit=cover | sharpen 0.8 | webp q=80
//! resize 256 | jpeg q=80
//! crop 640x480+10+20 | rotate 90 | flip horizontal | grayscale | png
//! orient | plugin sepia strength=0.8 | webp lossless
//! ```
//!
//! | item | positional form | keys |
//! |---|---|---|
//! | `orient`, `grayscale` | – | – |
//! | `resize` | `WxH`, `W`, `Wx`, `xH` | `width`, `height`, `fit`, `bg` |
//! | `crop` | `WxH+X+Y` | `x`, `y`, `width`, `height` |
//! | `rotate` | `90`, `180`, `270` | `degrees` |
//! | `flip` | `horizontal`/`h`, `vertical`/`v` | `axis` |
//! | `blur`, `sharpen` | sigma | `sigma` |
//! | `plugin` | name or 64-hex hash | any other key is a plugin param |
//! | `jpeg`/`jpg`, `png`, `webp`, `avif` | `lossless` (webp), `keep-metadata` (jpeg) | `q`/`quality`, `bg` (jpeg) |
//!
//! Values cannot contain spaces or `|`; use a JSON or TOML spec for those.
//! [`JobSpec::to_compact`] prints a spec in this form, and parsing that text
//! gives the same spec back.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};

use crate::spec::{
    Axis, Colour, Fit, JobSpec, OutputFormat, OutputSpec, PluginRef, PluginStep, SpecError, Step,
    is_plugin_hash,
};

/// One `|`-separated item, split into words.
struct Item<'a> {
    index: usize,
    name: &'a str,
    positional: Vec<&'a str>,
    keys: Vec<(&'a str, &'a str)>,
}

impl<'a> Item<'a> {
    fn err(&self, msg: impl Into<String>) -> SpecError {
        SpecError::step(self.index, Some(self.name), msg)
    }

    fn no_args(&self) -> Result<(), SpecError> {
        match (self.positional.first(), self.keys.first()) {
            (None, None) => Ok(()),
            (Some(p), _) => Err(self.err(format!("takes no arguments, got {p:?}"))),
            (None, Some((k, v))) => Err(self.err(format!("takes no arguments, got {k}={v}"))),
        }
    }

    fn at_most_positional(&self, n: usize) -> Result<(), SpecError> {
        match self.positional.get(n) {
            None => Ok(()),
            Some(extra) => Err(self.err(format!("unexpected argument {extra:?}"))),
        }
    }

    fn unknown_key(&self, key: &str, known: &str) -> SpecError {
        self.err(format!("unknown key {key:?} (known: {known})"))
    }
}

fn num<T: std::str::FromStr>(item: &Item<'_>, field: &str, text: &str) -> Result<T, SpecError> {
    text.parse()
        .map_err(|_| item.err(format!("{field} must be a number, got {text:?}")))
}

/// Parse `WxH`, `W`, `Wx` or `xH`.
fn parse_size(item: &Item<'_>, text: &str) -> Result<(Option<u32>, Option<u32>), SpecError> {
    let opt = |field: &str, s: &str| -> Result<Option<u32>, SpecError> {
        if s.is_empty() {
            Ok(None)
        } else {
            num(item, field, s).map(Some)
        }
    };
    match text.split_once('x') {
        Some((w, h)) => Ok((opt("width", w)?, opt("height", h)?)),
        None => Ok((Some(num(item, "width", text)?), None)),
    }
}

impl JobSpec {
    /// Parse and validate the compact one-line form (see the module docs).
    pub fn from_compact(line: &str) -> Result<JobSpec, SpecError> {
        let mut steps = Vec::new();
        let mut output: Option<OutputSpec> = None;
        for (i, raw) in line.split('|').enumerate() {
            let index = i + 1;
            let mut words = raw.split_whitespace();
            let Some(name) = words.next() else {
                return Err(SpecError::step(
                    index,
                    None,
                    "empty step (two `|` in a row?)",
                ));
            };
            let (mut positional, mut keys) = (Vec::new(), Vec::new());
            for w in words {
                match w.split_once('=') {
                    Some((k, v)) => keys.push((k, v)),
                    None => positional.push(w),
                }
            }
            let item = Item {
                index,
                name,
                positional,
                keys,
            };
            if let Some(format) = output_format(name) {
                if output.is_some() {
                    return Err(item.err("output format given twice"));
                }
                output = Some(parse_output(&item, format)?);
                continue;
            }
            if output.is_some() {
                return Err(item.err("the output format must be the last item"));
            }
            steps.push(parse_step(&item)?);
        }
        let spec = JobSpec {
            steps,
            output: output.unwrap_or_default(),
        };
        spec.validate()?;
        Ok(spec)
    }

    /// Print this spec in the compact form.
    pub fn to_compact(&self) -> String {
        let mut items: Vec<String> = self.steps.iter().map(|s| s.to_string()).collect();
        items.push(self.output.to_string());
        items.join(" | ")
    }
}

fn output_format(name: &str) -> Option<OutputFormat> {
    match name {
        "jpeg" | "jpg" => Some(OutputFormat::Jpeg),
        "png" => Some(OutputFormat::Png),
        "webp" => Some(OutputFormat::Webp),
        "avif" => Some(OutputFormat::Avif),
        _ => None,
    }
}

fn parse_output(item: &Item<'_>, format: OutputFormat) -> Result<OutputSpec, SpecError> {
    let mut out = OutputSpec {
        format,
        ..OutputSpec::default()
    };
    let err = |msg: String| SpecError::output(format!("{} {msg}", item.name));
    for p in &item.positional {
        match *p {
            "lossless" => out.lossless = true,
            "keep-metadata" => out.keep_metadata = true,
            other => {
                return Err(err(format!(
                    "unexpected argument {other:?} (known: lossless, keep-metadata)"
                )));
            }
        }
    }
    for (k, v) in &item.keys {
        match *k {
            "q" | "quality" => {
                out.quality = Some(
                    v.parse()
                        .map_err(|_| err(format!("quality must be 1..=100, got {v:?}")))?,
                );
            }
            "bg" | "background" => out.background = Some(v.parse().map_err(err)?),
            other => return Err(err(format!("unknown key {other:?} (known: q, bg)"))),
        }
    }
    Ok(out)
}

fn parse_step(item: &Item<'_>) -> Result<Step, SpecError> {
    let first = item.positional.first().copied();
    match item.name {
        "orient" => item.no_args().map(|_| Step::Orient),
        "grayscale" | "greyscale" => item.no_args().map(|_| Step::Grayscale),
        "resize" => {
            item.at_most_positional(1)?;
            let (mut width, mut height) = match first {
                Some(size) => parse_size(item, size)?,
                None => (None, None),
            };
            let (mut fit, mut background) = (Fit::Inside, None);
            for (k, v) in &item.keys {
                match *k {
                    "width" | "w" => width = Some(num(item, "width", v)?),
                    "height" | "h" => height = Some(num(item, "height", v)?),
                    "fit" => {
                        fit = match *v {
                            "cover" => Fit::Cover,
                            "contain" => Fit::Contain,
                            "fill" => Fit::Fill,
                            "inside" => Fit::Inside,
                            "outside" => Fit::Outside,
                            other => {
                                return Err(item.err(format!(
                                    "fit must be cover, contain, fill, inside or outside, got {other:?}"
                                )));
                            }
                        }
                    }
                    "bg" | "background" => {
                        background = Some(v.parse::<Colour>().map_err(|e| item.err(e))?)
                    }
                    other => return Err(item.unknown_key(other, "width, height, fit, bg")),
                }
            }
            Ok(Step::Resize {
                width,
                height,
                fit,
                background,
            })
        }
        "crop" => {
            item.at_most_positional(1)?;
            let (mut x, mut y, mut width, mut height) = (0, 0, None, None);
            if let Some(geometry) = first {
                // WxH+X+Y, as ImageMagick writes it.
                let bad = || item.err(format!("crop geometry must be WxH+X+Y, got {geometry:?}"));
                let mut parts = geometry.split('+');
                let size = parts.next().ok_or_else(bad)?;
                let (w, h) = size.split_once('x').ok_or_else(bad)?;
                width = Some(num(item, "width", w)?);
                height = Some(num(item, "height", h)?);
                x = parts
                    .next()
                    .map(|s| num(item, "x", s))
                    .transpose()?
                    .unwrap_or(0);
                y = parts
                    .next()
                    .map(|s| num(item, "y", s))
                    .transpose()?
                    .unwrap_or(0);
                if parts.next().is_some() {
                    return Err(bad());
                }
            }
            for (k, v) in &item.keys {
                match *k {
                    "x" => x = num(item, "x", v)?,
                    "y" => y = num(item, "y", v)?,
                    "width" | "w" => width = Some(num(item, "width", v)?),
                    "height" | "h" => height = Some(num(item, "height", v)?),
                    other => return Err(item.unknown_key(other, "x, y, width, height")),
                }
            }
            let (Some(width), Some(height)) = (width, height) else {
                return Err(item.err("give the region as WxH+X+Y or width= and height="));
            };
            Ok(Step::Crop {
                x,
                y,
                width,
                height,
            })
        }
        "rotate" => {
            item.at_most_positional(1)?;
            let mut degrees = first.map(|d| num(item, "degrees", d)).transpose()?;
            for (k, v) in &item.keys {
                match *k {
                    "degrees" => degrees = Some(num(item, "degrees", v)?),
                    other => return Err(item.unknown_key(other, "degrees")),
                }
            }
            let degrees = degrees.ok_or_else(|| item.err("give degrees: 90, 180 or 270"))?;
            Ok(Step::Rotate { degrees })
        }
        "flip" => {
            item.at_most_positional(1)?;
            let mut axis = first;
            for (k, v) in &item.keys {
                match *k {
                    "axis" => axis = Some(v),
                    other => return Err(item.unknown_key(other, "axis")),
                }
            }
            let axis = match axis {
                Some("horizontal" | "h") => Axis::Horizontal,
                Some("vertical" | "v") => Axis::Vertical,
                Some(other) => {
                    return Err(item.err(format!(
                        "axis must be horizontal or vertical, got {other:?}"
                    )));
                }
                None => return Err(item.err("give the axis: horizontal or vertical")),
            };
            Ok(Step::Flip { axis })
        }
        "blur" | "sharpen" => {
            item.at_most_positional(1)?;
            let mut sigma = first.map(|s| num(item, "sigma", s)).transpose()?;
            for (k, v) in &item.keys {
                match *k {
                    "sigma" => sigma = Some(num(item, "sigma", v)?),
                    other => return Err(item.unknown_key(other, "sigma")),
                }
            }
            let sigma = sigma.ok_or_else(|| item.err("give sigma, e.g. `blur 1.5`"))?;
            Ok(if item.name == "blur" {
                Step::Blur { sigma }
            } else {
                Step::Sharpen { sigma }
            })
        }
        "plugin" => {
            item.at_most_positional(1)?;
            let target = first.ok_or_else(|| item.err("give the plugin's name or hash"))?;
            let plugin = if is_plugin_hash(target) {
                PluginRef::Hash(target.to_owned())
            } else {
                PluginRef::Name(target.to_owned())
            };
            let params: BTreeMap<String, String> = item
                .keys
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            Ok(Step::Plugin(PluginStep { plugin, params }))
        }
        other => Err(SpecError::step(
            item.index,
            None,
            format!(
                "unknown op `{other}`, expected one of {} or an output format (jpeg, png, webp, avif)",
                crate::spec::OPS.join(", ")
            ),
        )),
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.op())?;
        match self {
            Step::Orient | Step::Grayscale => Ok(()),
            Step::Resize {
                width,
                height,
                fit,
                background,
            } => {
                f.write_char(' ')?;
                if let Some(w) = width {
                    write!(f, "{w}")?;
                }
                f.write_char('x')?;
                if let Some(h) = height {
                    write!(f, "{h}")?;
                }
                if *fit != Fit::Inside {
                    write!(f, " fit={}", fit.as_str())?;
                }
                if let Some(bg) = background {
                    write!(f, " bg={bg}")?;
                }
                Ok(())
            }
            Step::Crop {
                x,
                y,
                width,
                height,
            } => write!(f, " {width}x{height}+{x}+{y}"),
            Step::Rotate { degrees } => write!(f, " {degrees}"),
            Step::Flip {
                axis: Axis::Horizontal,
            } => f.write_str(" horizontal"),
            Step::Flip {
                axis: Axis::Vertical,
            } => f.write_str(" vertical"),
            Step::Blur { sigma } | Step::Sharpen { sigma } => write!(f, " {sigma}"),
            Step::Plugin(p) => {
                write!(f, " {}", p.plugin)?;
                for (k, v) in &p.params {
                    write!(f, " {k}={v}")?;
                }
                Ok(())
            }
        }
    }
}

impl fmt::Display for OutputSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.format.as_str())?;
        if let Some(q) = self.quality {
            write!(f, " q={q}")?;
        }
        if self.lossless {
            f.write_str(" lossless")?;
        }
        if let Some(bg) = self.background {
            write!(f, " bg={bg}")?;
        }
        if self.keep_metadata {
            f.write_str(" keep-metadata")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> JobSpec {
        match JobSpec::from_compact(line) {
            Ok(s) => s,
            Err(e) => panic!("{line:?} should parse: {e}"),
        }
    }

    fn err(line: &str) -> String {
        match JobSpec::from_compact(line) {
            Ok(s) => panic!("{line:?} should fail, got {s:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn readme_example() {
        let spec = parse("orient | resize 800x600 fit=cover | sharpen 0.8 | webp q=80");
        assert_eq!(
            spec.steps,
            vec![
                Step::Orient,
                Step::Resize {
                    width: Some(800),
                    height: Some(600),
                    fit: Fit::Cover,
                    background: None
                },
                Step::Sharpen { sigma: 0.8 },
            ]
        );
        assert_eq!(spec.output.format, OutputFormat::Webp);
        assert_eq!(spec.output.quality, Some(80));
    }

    #[test]
    fn sizes_and_geometry() {
        let s =
            parse("resize 256 | resize x100 | resize 50x | crop 10x20+3+4 | crop width=5 height=6");
        assert_eq!(
            s.steps[0],
            Step::Resize {
                width: Some(256),
                height: None,
                fit: Fit::Inside,
                background: None
            }
        );
        assert_eq!(
            s.steps[1],
            Step::Resize {
                width: None,
                height: Some(100),
                fit: Fit::Inside,
                background: None
            }
        );
        assert_eq!(
            s.steps[2],
            Step::Resize {
                width: Some(50),
                height: None,
                fit: Fit::Inside,
                background: None
            }
        );
        assert_eq!(
            s.steps[3],
            Step::Crop {
                x: 3,
                y: 4,
                width: 10,
                height: 20
            }
        );
        assert_eq!(
            s.steps[4],
            Step::Crop {
                x: 0,
                y: 0,
                width: 5,
                height: 6
            }
        );
        assert_eq!(s.output, OutputSpec::default());
    }

    #[test]
    fn plugin_name_hash_and_params() {
        let hash = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let s = parse(&format!("plugin sepia strength=0.8 | plugin {hash} | png"));
        let Step::Plugin(p) = &s.steps[0] else {
            panic!("{:?}", s.steps[0])
        };
        assert_eq!(p.plugin, PluginRef::Name("sepia".into()));
        assert_eq!(p.params.get("strength").map(String::as_str), Some("0.8"));
        let Step::Plugin(p) = &s.steps[1] else {
            panic!("{:?}", s.steps[1])
        };
        assert_eq!(p.plugin, PluginRef::Hash(hash.into()));
    }

    #[test]
    fn compact_round_trips_through_display() {
        for line in [
            "orient | resize 800x600 fit=cover | sharpen 0.8 | webp q=80",
            "resize 10x fit=contain bg=#ff0000 | crop 5x5+1+2 | rotate 270 | flip vertical | jpeg q=90 bg=#000000 keep-metadata",
            "blur 2.5 | grayscale | plugin pad width=3 colour=#fff | webp lossless",
            "png",
        ] {
            let spec = parse(line);
            assert_eq!(parse(&spec.to_compact()), spec, "{line}");
        }
    }

    #[test]
    fn errors_name_the_step() {
        assert_eq!(
            err("orient | resize 0x10"),
            "step 2 (resize): width must be 1..=65535, got 0"
        );
        assert_eq!(
            err("resize 10x10 fit=squash").split(':').next(),
            Some("step 1 (resize)")
        );
        assert!(err("orient | blurr 2").starts_with("step 2: unknown op `blurr`"));
        assert!(err("orient || png").starts_with("step 2: empty step"));
        assert!(err("png | orient").contains("must be the last item"));
        assert!(err("rotate 45").starts_with("step 1 (rotate): degrees must be 90, 180 or 270"));
        assert!(err("crop 10+10").contains("WxH+X+Y"));
        assert!(err("flip sideways").contains("horizontal or vertical"));
        assert!(err("orient 3").contains("takes no arguments"));
        assert!(err("webp q=101").starts_with("output: quality must be 1..=100"));
        assert!(err("jpeg lossless").starts_with("output: lossless applies to webp only"));
        assert!(err("resize 10 colour=red").contains("unknown key \"colour\""));
    }
}
