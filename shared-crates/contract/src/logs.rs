//! Reading a replica's output: `GET /v1/replicas/{name}/logs` at the queen, which asks the
//! replica's hive (`GET /v1/logs/{name}` there) with the same query and passes its answer on.
//! The answer is the output's own bytes (`application/octet-stream`), oldest first.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    #[default]
    Stdout,
    Stderr,
}

/// What to read. Every field is optional in a query string.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::IntoParams), into_params(parameter_in = Query))]
#[serde(deny_unknown_fields)]
pub struct LogQuery {
    /// [default: stdout]
    #[serde(default)]
    pub stream: LogStream,
    /// The instance before the last restart of this replica.
    #[serde(default)]
    pub previous: bool,
    /// The last N lines only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tail: Option<usize>,
    /// Output written at or after this time only (RFC 3339).
    #[serde(default, with = "time::serde::rfc3339::option", skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", param(value_type = Option<String>))]
    pub since: Option<OffsetDateTime>,
    /// Output written in the last this many seconds only, by the hive's clock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_seconds: Option<u64>,
    /// Keep the answer open and send what is written next, until the client goes.
    #[serde(default)]
    pub follow: bool,
    /// Start each line with the time it was written (RFC 3339).
    #[serde(default)]
    pub timestamps: bool,
}

/// Most lines a `tail` may ask for: beyond it the byte cap answers anyway.
pub const MAX_TAIL: usize = 100_000;

impl LogQuery {
    /// The query as the queen passes it to the hive.
    pub fn to_query_string(&self) -> String {
        let mut parts = vec![format!("stream={}", if self.stream == LogStream::Stderr { "stderr" } else { "stdout" })];
        if self.previous {
            parts.push("previous=true".into());
        }
        if let Some(t) = self.tail {
            parts.push(format!("tail={t}"));
        }
        if let Some(s) = self.since.and_then(|s| s.format(&time::format_description::well_known::Rfc3339).ok()) {
            // `+` in an offset would read as a space.
            parts.push(format!("since={}", s.replace('+', "%2B")));
        }
        if let Some(s) = self.since_seconds {
            parts.push(format!("since_seconds={s}"));
        }
        if self.follow {
            parts.push("follow=true".into());
        }
        if self.timestamps {
            parts.push("timestamps=true".into());
        }
        parts.join("&")
    }

    pub fn validate(&self) -> Result<(), crate::ContractError> {
        if self.tail.is_some_and(|t| t > MAX_TAIL) {
            return Err(crate::ContractError::InvalidField { field: "tail", reason: format!("at most {MAX_TAIL}") });
        }
        if self.since.is_some() && self.since_seconds.is_some() {
            return Err(crate::ContractError::InvalidField {
                field: "since",
                reason: "since or since_seconds, not both".into(),
            });
        }
        Ok(())
    }
}
