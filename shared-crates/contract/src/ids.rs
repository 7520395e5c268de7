//! Identifier newtypes: a `NodeId` that exists is a valid one.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ContractError;

/// Longest id accepted; long enough for a FQDN-derived name, short enough to bound memory.
pub const MAX_ID_LEN: usize = 64;

/// Name of a hive or worker: 1..=64 characters of `[A-Za-z0-9._-]`.
///
/// Restricting the alphabet keeps ids safe to put in URLs, metric labels and file names
/// without escaping, and rules out look-alike unicode names.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NodeId(String);

/// Written by hand so the document carries the id rule as a pattern, which the derive
/// cannot express for a newtype.
#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for NodeId {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .pattern(Some(r"^[A-Za-z0-9._-]{1,64}$"))
            .min_length(Some(1))
            .max_length(Some(MAX_ID_LEN))
            .description(Some("Name of a hive, worker or deployment: 1..=64 characters of [A-Za-z0-9._-]."))
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for NodeId {}

impl NodeId {
    pub fn new(s: impl Into<String>) -> Result<Self, ContractError> {
        let s = s.into();
        if s.is_empty() {
            return Err(ContractError::InvalidId { reason: "id is empty".into() });
        }
        if s.len() > MAX_ID_LEN {
            return Err(ContractError::InvalidId {
                reason: format!("id is {} bytes long, at most {MAX_ID_LEN} allowed", s.len()),
            });
        }
        if let Some(c) = s.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
            return Err(ContractError::InvalidId {
                reason: format!("id contains {c:?}; only A-Z a-z 0-9 . _ - are allowed"),
            });
        }
        Ok(Self(s))
    }

    /// A valid id made from arbitrary text (a hostname, say): disallowed characters become
    /// `-`, and it is cut to the maximum length. Empty text gives `node`.
    pub fn sanitized(text: &str) -> Self {
        let mut s: String = text
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '-' })
            .take(MAX_ID_LEN)
            .collect();
        if s.is_empty() {
            s.push_str("node");
        }
        Self(s)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for NodeId {
    type Error = ContractError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl From<NodeId> for String {
    fn from(id: NodeId) -> Self {
        id.0
    }
}

impl std::str::FromStr for NodeId {
    type Err = ContractError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad`, so that `{:<20}` in tables lines up.
        f.pad(&self.0)
    }
}

impl AsRef<str> for NodeId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Incarnation of a process: a new value on every start, larger than the last one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(transparent)]
pub struct Epoch(pub u64);

impl Epoch {
    /// An epoch for a process starting now: microseconds since the Unix epoch, so that a
    /// restart on the same machine always gets a larger value without any local state.
    pub fn for_new_process() -> Self {
        let micros = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(1);
        Self(micros)
    }

    /// Refuses an epoch later than `now` (an epoch for a process starting then) by more
    /// than `skew`: a forged far-future epoch would make every real heartbeat of that node
    /// stale until the clock caught up.
    pub fn check_not_ahead_of(self, now: Epoch, skew: std::time::Duration) -> Result<(), crate::ContractError> {
        let limit = now.0.saturating_add(skew.as_micros() as u64);
        if self.0 > limit {
            return Err(crate::ContractError::InvalidField {
                field: "epoch",
                reason: format!(
                    "{} µs ahead of the queen's clock (at most {} s allowed); check the sender's clock",
                    self.0 - now.0,
                    skew.as_secs()
                ),
            });
        }
        Ok(())
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Position of a heartbeat within one epoch; strictly increasing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(transparent)]
pub struct Seq(pub u64);

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_validated() {
        assert!(NodeId::new("hive-1.eu_west").is_ok());
        assert!(NodeId::new("").is_err());
        assert!(NodeId::new("a".repeat(65)).is_err());
        assert!(NodeId::new("a".repeat(64)).is_ok());
        assert!(NodeId::new("hive 1").is_err());
        assert!(NodeId::new("hive/1").is_err());
        assert!(NodeId::new("hïve").is_err());
        assert!(NodeId::new("hive\n").is_err());
    }

    #[test]
    fn sanitized_ids_are_valid() {
        assert_eq!(NodeId::sanitized("my host/1").as_str(), "my-host-1");
        assert_eq!(NodeId::sanitized("").as_str(), "node");
        assert!(NodeId::new(NodeId::sanitized(&"ü".repeat(100)).as_str()).is_ok());
    }

    #[test]
    fn ids_are_validated_when_decoded() {
        let ok: Result<NodeId, _> = serde_json::from_str("\"h1\"");
        assert_eq!(ok.expect("valid id").as_str(), "h1");
        let bad: Result<NodeId, _> = serde_json::from_str("\"../etc\"");
        let msg = bad.expect_err("slash must be refused").to_string();
        assert!(msg.contains("only A-Z"), "{msg}");
    }
}
