//! The one registry of nodes that send heartbeats.
//!
//! `HeartbeatRegistry<T>` holds the latest heartbeat of every hive or every worker (the
//! same type serves both), drops heartbeats that are older than what it holds, derives
//! each node's liveness from the time since its last heartbeat, and records every change
//! of liveness as an event with a reason, so that "why is this node down?" always has an
//! answer.
//!
//! It knows nothing of HTTP or of the wire format: its payload type only has to say who
//! sent it, in which epoch and sequence, and whether it may take work.

mod events;
mod listening;
mod registry;
mod thresholds;

pub use events::{EventKind, LivenessEvent};
pub use listening::{Episode, Listening};
pub use registry::{HeartbeatRegistry, NodeRef, NodeView, UpsertOutcome};
pub use thresholds::{ThresholdError, Thresholds};

use std::fmt;
use std::hash::Hash;

/// What the registry needs to know about a heartbeat.
pub trait HeartbeatPayload: Clone + Send + Sync + 'static {
    type Id: Clone + Eq + Hash + Ord + fmt::Display + fmt::Debug + Send + Sync + 'static;

    fn id(&self) -> &Self::Id;
    /// Incarnation of the sender; a larger value means the process restarted.
    fn epoch(&self) -> u64;
    /// Monotonic within an epoch.
    fn seq(&self) -> u64;
    /// The sender says it can take new work (ready, not draining, not at capacity).
    fn accepts_work(&self) -> bool;
    /// The sender says this is its last heartbeat: it is stopping on purpose.
    fn is_final(&self) -> bool;
}

/// The registry's verdict on a node, derived from time since its last heartbeat.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Liveness {
    Online,
    Suspect,
    Offline,
    Stopped,
}

impl Liveness {
    /// Presumed alive: online, or late but not yet declared offline.
    pub fn is_up(self) -> bool {
        matches!(self, Liveness::Online | Liveness::Suspect)
    }
}
