//! Valid heartbeat bodies as raw JSON, for tests that send them by hand (and tests that
//! break them on purpose).

use serde_json::{Value, json};

pub fn hive_beat(id: &str) -> Value {
    json!({
        "id": id, "epoch": 7, "seq": 1, "address": "http://127.0.0.1:1", "hostname": "box",
        "version": "0.1.0", "status": "ready",
        "resources": {"cpu_percent": 5.0, "memory_used_bytes": 1, "memory_total_bytes": 2,
                      "disk_used_bytes": 1, "disk_total_bytes": 2,
                      "load_average": {"one": 0.1, "five": 0.1, "fifteen": 0.1}},
        "capacity": {"max_workers": 4, "running_workers": 0},
        "labels": {}, "services": [], "sent_at": "2026-11-24T12:00:00Z"
    })
}

pub fn worker_beat(id: &str) -> Value {
    json!({
        "id": id, "hive_id": "hive-x", "epoch": 7, "seq": 1, "version": "0.1.0", "status": "ready",
        "kind": "reference", "address": "http://127.0.0.1:2", "in_flight": 0, "max_concurrent": 4,
        "sent_at": "2026-11-24T12:00:00Z"
    })
}
