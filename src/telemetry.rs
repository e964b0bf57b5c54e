//! Logs (text or JSON) and Prometheus metrics, served as plain text at `/metrics` on the
//! optional `telemetry.metrics_addr`.

mod endpoint;
mod metrics;
mod task_table;

pub use endpoint::{
    serve_metrics, MAX_METRICS_CONNECTIONS, MAX_METRICS_REQUEST_BYTES, MAX_METRICS_REQUEST_HEADERS,
    METRICS_CONNECTION_TIMEOUT,
};
pub use metrics::{AuditWrites, ConnectionStats, Metrics, CONTENT_TYPE};
pub use task_table::{TableFill, TaskTableStats};

use serde::Deserialize;

/// `telemetry.log_format`.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Starts logging. `RUST_LOG` overrides the default level (`info`).
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
