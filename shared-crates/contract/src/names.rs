//! The wire names of the contract's plain enums, as `&'static str`, for tables, metric
//! labels and CSS classes — one list, checked against serde's own names in a test.

use std::fmt;

use crate::{
    AckStatus, AssignmentState, EventKind, HiveStatus, Liveness, NodeKind, PhaseStatus, ProcessState, RolloutState,
    ShutdownStatus, WorkerStatus,
};

macro_rules! wire_names {
    ($($ty:ident { $($variant:ident => $name:literal),+ $(,)? })+) => {
        $(
            impl $ty {
                /// Every variant, in declaration order.
                pub const ALL: &'static [$ty] = &[$($ty::$variant),+];

                /// The name on the wire (serde's snake_case).
                pub fn as_str(self) -> &'static str {
                    match self { $($ty::$variant => $name),+ }
                }
            }

            impl fmt::Display for $ty {
                fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.pad(self.as_str())
                }
            }
        )+

        #[cfg(test)]
        mod tests {
            use super::*;

            #[test]
            fn names_match_serde() {
                $(
                    for v in $ty::ALL {
                        let json = serde_json::to_string(v).expect("serializes");
                        assert_eq!(json, format!("\"{}\"", v.as_str()), "{}", stringify!($ty));
                    }
                )+
            }
        }
    };
}

wire_names! {
    Liveness { Online => "online", Suspect => "suspect", Offline => "offline", Stopped => "stopped" }
    NodeKind { Hive => "hive", Worker => "worker", Queen => "queen" }
    EventKind {
        Joined => "joined", Restarted => "restarted", Suspect => "suspect", Offline => "offline",
        Recovered => "recovered", Stopped => "stopped", Removed => "removed", Flapping => "flapping",
        Steady => "steady", Placed => "placed", Orphaned => "orphaned", Pending => "pending",
        Retired => "retired", PhaseStarted => "phase_started", PhaseDone => "phase_done",
        PhaseFailed => "phase_failed", Acked => "acked", AckFailed => "ack_failed", Eligible => "eligible", StartFailed => "start_failed", Rollout => "rollout",
    }
    HiveStatus { Ready => "ready", Draining => "draining", ShuttingDown => "shutting_down" }
    WorkerStatus { Starting => "starting", Ready => "ready", Busy => "busy", Draining => "draining", Stopped => "stopped" }
    AssignmentState { Placed => "placed", Orphaned => "orphaned", Pending => "pending" }
    ProcessState { Running => "running", Restarting => "restarting", Stopping => "stopping", Failed => "failed" }
    AckStatus { Waiting => "waiting", Acked => "acked", Failed => "failed", TimedOut => "timed_out" }
    PhaseStatus { Pending => "pending", Running => "running", Done => "done", Failed => "failed", Forced => "forced" }
    ShutdownStatus { Running => "running", Completed => "completed", Failed => "failed" }
    RolloutState { Running => "running", Paused => "paused", Done => "done", Reverting => "reverting", Reverted => "reverted" }
}

impl Liveness {
    /// Presumed alive: online, or late but not yet declared offline. What "online" counts.
    pub fn is_up(self) -> bool {
        matches!(self, Liveness::Online | Liveness::Suspect)
    }
}

impl crate::Resources {
    pub fn memory_percent(&self) -> f32 {
        percent(self.memory_used_bytes, self.memory_total_bytes)
    }

    pub fn disk_percent(&self) -> f32 {
        percent(self.disk_used_bytes, self.disk_total_bytes)
    }
}

/// `used` as a share of `total`; 0 when the total is unknown.
fn percent(used: u64, total: u64) -> f32 {
    if total == 0 { 0.0 } else { (used as f64 * 100.0 / total as f64) as f32 }
}
