//! What the leader shows of the cluster to people and to Prometheus, on the `[metrics] listen`
//! address.
//!
//! ```text
//! metrics.rs    `/metrics` (OpenMetrics) and the small HTTP listener that serves all of it
//! dashboard/    the read-only page (`/`) and its data (`/api/cluster`)
//! ```

pub mod dashboard;
pub mod metrics;
