//! Jobs a worker runs.

use serde::{Deserialize, Serialize};

/// Longest sleep job accepted, so a job cannot hold a slot forever.
pub const MAX_SLEEP_MS: u64 = 600_000;
/// Most sha256 rounds accepted (about a second of one core).
pub const MAX_SHA256_ROUNDS: u32 = 5_000_000;

/// A unit of work, tagged by `kind`: `{"kind":"sleep","ms":200}` or
/// `{"kind":"sha256","input":"abc","rounds":1000}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum JobRequest {
    Sleep { ms: u64 },
    Sha256 { input: String, rounds: u32 },
}

impl JobRequest {
    /// Whether running it twice does no harm, so the queen may run it again when its
    /// worker died mid-way. Each kind must say; a kind with effects outside the worker
    /// must answer false.
    pub fn rerunnable(&self) -> bool {
        match self {
            JobRequest::Sleep { .. } | JobRequest::Sha256 { .. } => true,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobResponse {
    pub worker_id: String,
    pub kind: String,
    /// Hex digest for sha256 jobs; empty for sleep.
    pub output: String,
    pub duration_ms: u64,
}
