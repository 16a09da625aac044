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

/// Print a line for the operator, as `println!` does, except that a closed
/// stdout (the launcher went away) is not an error: a daemon must outlive
/// its terminal.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, $($arg)*);
        let _ = out.flush();
    }};
}

/// As [`say!`], on stderr.
#[macro_export]
macro_rules! say_err {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}

pub mod cli;
pub mod config;
pub mod daemon;
pub mod logging;
pub mod metrics;
pub mod pipeline;
pub mod sandbox;
