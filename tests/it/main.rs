//! Integration tests: the real `pixmesh` binary on real photographs.
//!
//! One binary, one module per area. Photos come from `../shared/corpus`
//! (or `$PIXMESH_CORPUS`), falling back to the samples shipped in `samples/`
//! on machines without the shared corpus.

mod helpers;

mod api;
mod bad_inputs;
mod corpus;
mod engine;
mod mesh;
mod observability;
mod plugins;
mod spec_errors;
mod testnet;
