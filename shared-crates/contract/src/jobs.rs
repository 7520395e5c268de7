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

/// The header that names one job across retries: a client that sends a job again with the
/// same key (after a lost answer, a queen's failover) gets the first run's answer instead
/// of a second run, as long as the worker that ran it is alive.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// How long an idempotency key is honoured: the queen keeps a keyed job's route and the
/// worker its outcome this long. Retries come within seconds (a failover takes about a
/// lease TTL); ten minutes covers a client that backs off for a long time.
pub const IDEMPOTENCY_WINDOW: std::time::Duration = std::time::Duration::from_secs(600);
/// Longest idempotency key accepted.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 128;

/// Checks an idempotency key: 1 to [`MAX_IDEMPOTENCY_KEY_LEN`] ASCII letters, digits and
/// `-_.:` (it becomes part of a store key).
pub fn check_idempotency_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_LEN {
        return Err(format!("an idempotency key has 1 to {MAX_IDEMPOTENCY_KEY_LEN} characters"));
    }
    if let Some(bad) = key.chars().find(|c| !(c.is_ascii_alphanumeric() || "-_.:".contains(*c))) {
        return Err(format!("an idempotency key has only ASCII letters, digits and -_.: (not {bad:?})"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotency_keys_are_short_and_plain() {
        assert!(check_idempotency_key("chaos-1-42").is_ok());
        assert!(check_idempotency_key("a.b:c_d").is_ok());
        assert!(check_idempotency_key("").is_err());
        assert!(check_idempotency_key(&"k".repeat(MAX_IDEMPOTENCY_KEY_LEN + 1)).is_err());
        assert!(check_idempotency_key("a/b").is_err());
        assert!(check_idempotency_key("a b").is_err());
        assert!(check_idempotency_key("é").is_err());
    }
}
