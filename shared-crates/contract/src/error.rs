//! The one JSON error body every endpoint returns, and validation errors.

use serde::{Deserialize, Serialize};

/// Body of every non-2xx response: a stable machine-readable `code` and a human message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ApiErrorBody {
    /// Stable, snake_case; clients branch on this, never on `message`.
    pub code: String,
    /// Lowercase, no trailing period; safe to show to an operator.
    pub message: String,
}

/// A value that decoded but does not make sense.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ContractError {
    #[error("invalid id: {reason}")]
    InvalidId { reason: String },
    #[error("invalid field `{field}`: {reason}")]
    InvalidField { field: &'static str, reason: String },
}
