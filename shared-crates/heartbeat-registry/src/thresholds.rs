//! The time limits that turn silence into suspicion, then into a verdict.

use std::time::Duration;

/// When a silent node becomes suspect, offline, forgotten; and how flapping is damped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Thresholds {
    /// Silence after which a node is suspect (still counted as up, not given new work).
    pub suspect_after: Duration,
    /// Silence after which a node is offline.
    pub offline_after: Duration,
    /// After the registry is created, nobody is declared offline for this long: the owner
    /// has not yet had the chance to hear from everyone.
    pub startup_grace: Duration,
    /// Returns from offline within `flap_window` that mark a node as flapping.
    pub flap_limit: usize,
    pub flap_window: Duration,
    /// A flapping node must beat without a gap this long before it counts as available.
    pub steady_after: Duration,
    /// `cleanup_stale` forgets nodes that have been offline or stopped this long.
    pub remove_after: Duration,
    /// Liveness changes kept per node; read once, when the registry is created.
    pub history_len: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ThresholdError {
    #[error("thresholds out of order: need interval ({interval:?}) < suspect ({suspect:?}) < offline ({offline:?})")]
    OutOfOrder { interval: Duration, suspect: Duration, offline: Duration },
    #[error("heartbeat interval must be greater than zero")]
    ZeroInterval,
}

impl Thresholds {
    /// Thresholds for nodes beating every `interval`, declared offline after
    /// `offline_after` of silence (three intervals when `None`). Suspicion sits half way
    /// between the interval and the offline threshold, so one late packet makes a node
    /// suspect but never offline.
    pub fn for_interval(interval: Duration, offline_after: Option<Duration>) -> Result<Self, ThresholdError> {
        if interval.is_zero() {
            return Err(ThresholdError::ZeroInterval);
        }
        let offline = offline_after.unwrap_or(interval * 3);
        let suspect = interval + (offline.saturating_sub(interval)) / 2;
        if !(interval < suspect && suspect < offline) {
            return Err(ThresholdError::OutOfOrder { interval, suspect, offline });
        }
        Ok(Self {
            suspect_after: suspect,
            offline_after: offline,
            startup_grace: offline,
            flap_limit: 3,
            flap_window: offline * 20,
            steady_after: offline,
            remove_after: offline * 120,
            history_len: 32,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_keep_their_order() {
        let t = Thresholds::for_interval(Duration::from_secs(10), None).expect("valid");
        assert_eq!(t.offline_after, Duration::from_secs(30));
        assert_eq!(t.suspect_after, Duration::from_secs(20));
        assert!(t.suspect_after < t.offline_after);
    }

    #[test]
    fn offline_at_or_below_interval_is_refused() {
        let err = Thresholds::for_interval(Duration::from_secs(10), Some(Duration::from_secs(10)));
        assert!(matches!(err, Err(ThresholdError::OutOfOrder { .. })));
        assert_eq!(Thresholds::for_interval(Duration::ZERO, None), Err(ThresholdError::ZeroInterval));
    }
}
