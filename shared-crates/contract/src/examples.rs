//! Valid example bodies of the two heartbeats, as the wire carries them: one place for the
//! tests that send heartbeats by hand, break them on purpose, or fuzz from them.

/// A hive heartbeat with id `hive-1`.
pub const HIVE_HEARTBEAT: &str = r#"{
    "id": "hive-1", "epoch": 7, "seq": 1, "address": "http://127.0.0.1:1", "hostname": "box",
    "version": "0.1.0", "status": "ready",
    "resources": {"cpu_percent": 5.0, "memory_used_bytes": 1, "memory_total_bytes": 2,
                  "disk_used_bytes": 1, "disk_total_bytes": 2,
                  "load_average": {"one": 0.1, "five": 0.1, "fifteen": 0.1}},
    "capacity": {"max_workers": 4, "running_workers": 0},
    "labels": {}, "services": [], "sent_at": "2026-11-24T12:00:00Z"
}"#;

/// A worker heartbeat with id `w-1` of hive `hive-x`.
pub const WORKER_HEARTBEAT: &str = r#"{
    "id": "w-1", "hive_id": "hive-x", "epoch": 7, "seq": 1, "version": "0.1.0", "status": "ready",
    "kind": "reference", "address": "http://127.0.0.1:2", "in_flight": 0, "max_concurrent": 4,
    "sent_at": "2026-11-24T12:00:00Z"
}"#;

#[cfg(test)]
mod tests {
    #[test]
    fn the_examples_are_valid() {
        let hive: crate::HiveHeartbeat = serde_json::from_str(super::HIVE_HEARTBEAT).expect("decodes");
        hive.validate().expect("valid");
        let worker: crate::WorkerHeartbeat = serde_json::from_str(super::WORKER_HEARTBEAT).expect("decodes");
        worker.validate().expect("valid");
    }
}
