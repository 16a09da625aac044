//! The pixmesh agent: what runs on each device.
//!
//! Today this crate holds the image **pipeline engine**: it turns the bytes of
//! one image and a [`JobSpec`](pixmesh_protocol::JobSpec) into the bytes of
//! the result. The CLI's `pixmesh run` uses it directly; the mesh agent will
//! run the same engine for tasks it receives, so a job gives byte-identical
//! results wherever it runs.
//!
//! # Layout
//! - [`pipeline`]: decode (with limits checked from the header), the ops,
//!   encode. One [`Pipeline`](pipeline::Pipeline) per job spec, shared by
//!   threads.
//! - [`sandbox`]: the WebAssembly plugin host (wasmtime), ABI v1.

pub mod pipeline;
pub mod sandbox;
