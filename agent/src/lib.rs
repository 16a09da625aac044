//! The pixmesh agent: what runs on each device.
//!
//! It holds the image **pipeline engine**, which turns the bytes of one image
//! and a [`JobSpec`](pixmesh_protocol::JobSpec) into the bytes of the
//! result, and the **agent daemon** (`pixmesh-agent run`) that runs the same
//! engine for tasks from the mesh. The CLI's `pixmesh run` uses the engine
//! directly, so a job gives byte-identical results wherever it runs.
//!
//! # Layout
//! - [`pipeline`]: decode (with limits checked from the header), the ops,
//!   encode. One [`Pipeline`](pipeline::Pipeline) per job spec, shared by
//!   threads.
//! - [`sandbox`]: the WebAssembly plugin host (wasmtime), ABI v1.
//! - [`daemon`]: the agent: enrolment, heartbeats, tasks, shutdown.
//! - [`config`]: its settings (flags, environment, TOML file).
//! - [`cli`]: the `pixmesh-agent` command line.

pub mod cli;
pub mod config;
pub mod daemon;
pub mod pipeline;
pub mod sandbox;
