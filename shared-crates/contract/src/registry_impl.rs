//! Lets the queen keep hive and worker heartbeats in the one generic registry.

use heartbeat_registry::HeartbeatPayload;

use crate::{HiveHeartbeat, HiveStatus, NodeId, WorkerHeartbeat, WorkerStatus};

impl HeartbeatPayload for HiveHeartbeat {
    type Id = NodeId;
    fn id(&self) -> &NodeId {
        &self.id
    }
    fn epoch(&self) -> u64 {
        self.epoch.0
    }
    fn seq(&self) -> u64 {
        self.seq.0
    }
    fn accepts_work(&self) -> bool {
        self.status == HiveStatus::Ready && self.capacity.running_workers < self.capacity.max_workers
    }
    fn is_final(&self) -> bool {
        self.status == HiveStatus::ShuttingDown
    }
}

impl HeartbeatPayload for WorkerHeartbeat {
    type Id = NodeId;
    fn id(&self) -> &NodeId {
        &self.id
    }
    fn epoch(&self) -> u64 {
        self.epoch.0
    }
    fn seq(&self) -> u64 {
        self.seq.0
    }
    fn accepts_work(&self) -> bool {
        self.status == WorkerStatus::Ready && self.in_flight < self.max_concurrent
    }
    fn is_final(&self) -> bool {
        self.status == WorkerStatus::Stopped
    }
}
