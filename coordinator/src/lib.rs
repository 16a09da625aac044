//! The `pixmesh` CLI and the coordinator daemon.
//!
//! # Layout
//! - [`cli`]: argument definitions and dispatch; converts raw arguments into
//!   validated settings once.
//! - [`local`]: `pixmesh run`, the whole pipeline on this machine: input
//!   discovery, deterministic output names, parallel processing, the report.
//! - [`registry`]: the local plugin registry (`pixmesh plugin ...`).
//! - [`scheduler`]: task placement, leases and fencing as pure logic.
//! - [`mesh`]: the coordinator's libp2p side: enrolment, control requests,
//!   blobs for agents, dispatch of assignments.
//! - [`client`]: the CLI commands that talk to a coordinator (`submit`,
//!   `status`, `results`, `nodes`, `token`, `plugin deploy`, ...).
//! - [`daemon`]: `pixmesh coordinator`, serving [`api`] over [`service`].
//! - [`service`]: store + blobs + scheduler kept consistent; durable submit, recovery.
//! - [`api`]: the HTTP API (axum, JSON, bearer token).
//! - [`store`]: jobs, tasks, nodes and plugins in SQLite (WAL, migrations).
//! - [`blobs`]: the content-addressed blob store (BLAKE3, durable writes).
//! - [`bench`]: `pixmesh bench`, pixmesh against vipsthumbnail and
//!   ImageMagick on the same photos in one run.

pub mod api;
pub mod bench;
pub mod blobs;
pub mod cli;
pub mod client;
pub mod daemon;
pub mod local;
pub mod mesh;
pub mod metrics;
pub mod registry;
pub mod scheduler;
pub mod service;
pub mod store;
pub mod testnet;
