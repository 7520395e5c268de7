//! The audit log: every admin action, who made it, and how it ended (`GET /v1/audit`).

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// One admin call as the queen recorded it, after it answered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditEntry {
    /// Increases by one with every entry the store appends.
    pub seq: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// The name of the token the call carried (from the queen's config), `anonymous` when
    /// its scope had no token, or the node a node token names.
    pub who: String,
    pub method: String,
    /// Path and query, as called; bodies are not kept (they may hold secrets).
    pub path: String,
    /// The HTTP status the queen answered with.
    pub status: u16,
    /// `ok`, or the error code of the answer.
    pub outcome: String,
    /// Which queen answered.
    pub queen: String,
}

/// `GET /v1/audit`: the newest entries, oldest first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditLog {
    pub entries: Vec<AuditEntry>,
}
