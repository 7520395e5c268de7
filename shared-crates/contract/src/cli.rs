//! What `queen --output json` prints where no single API answer fits: the answers a
//! command combines, or the outcome of a call whose success has no body. Scripts decode
//! these like any other contract type.

use serde::{Deserialize, Serialize};

use crate::{HiveSummary, LeaderInfo, Snapshot, TransferAnswer, WorkerSummary};

/// `queen status`: the cluster's snapshot and who leads it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Status {
    pub snapshot: Snapshot,
    pub leader: LeaderInfo,
}

/// `queen nodes`: every hive and worker.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Nodes {
    pub hives: Vec<HiveSummary>,
    pub workers: Vec<WorkerSummary>,
}

/// A change whose API answer has no body (`undeploy`, `node rm`): what was done to what.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Done {
    /// The deployment or hive acted on.
    pub name: String,
    /// What happened, in words ("replicas stopping", "removed").
    pub outcome: String,
}

/// `queen leader transfer`: who handed over to whom, and when the new leader led.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Transferred {
    pub transfer: TransferAnswer,
    /// As the new leader answered once it led.
    pub leader: LeaderInfo,
    /// From the request to the new leader's first answer as leader.
    pub took_ms: u64,
}
