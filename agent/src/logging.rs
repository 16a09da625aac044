//! Log setup shared by `pixmesh` and `pixmesh-agent`: readable text by
//! default, JSON lines for machines (`--log-format json`), filtered by
//! `RUST_LOG` (e.g. `RUST_LOG=info,pixmesh_agent=debug`) over each
//! program's default. Spans carry job, task, attempt, peer and plugin, so
//! every line logged inside them says which work it belongs to.

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// One readable line per event, with its spans (stderr).
    #[default]
    Text,
    /// One JSON object per event with its fields and spans (stderr).
    Json,
}

/// Install the global subscriber: `RUST_LOG` if set, else `default_filter`.
pub fn init(default_filter: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .try_init(),
    };
}
