//! Types that every pixmesh component agrees on.
//!
//! A **job spec** says what to do to each image: an ordered list of
//! [`Step`]s (native ops such as `resize`, or a sandboxed `plugin`) and an
//! [`OutputSpec`] (format and quality). Specs arrive as JSON, TOML or the
//! compact one-line form used by the CLI's `--steps`; all three produce the
//! same [`JobSpec`], and [`JobSpec::validate`] rejects bad parameters with an
//! error that names the step, the field and the problem.
//!
//! This crate does no I/O and knows nothing of images or sockets.
//!
//! # Layout
//! - [`spec`]: the job spec types, parsing from JSON/TOML, validation.
//! - [`compact`]: the one-line `--steps` form, both directions.
//! - [`content`]: content ids (BLAKE3) for images, outputs and plugins.
//! - [`wire`]: the messages agents and the coordinator exchange over libp2p.

pub mod compact;
pub mod content;
pub mod spec;
pub mod wire;

pub use content::ContentId;
pub use spec::{
    Axis, Colour, Fit, JobSpec, Location, OutputFormat, OutputSpec, PluginRef, PluginStep,
    SpecError, Step,
};
