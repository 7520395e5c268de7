//! Valid heartbeat bodies as raw JSON (the contract's examples) under a chosen id, for
//! tests that send them by hand (and tests that break them on purpose).

use serde_json::{Value, json};

fn example(text: &str, id: &str) -> Value {
    let mut v: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("the contract's example is JSON: {e}"));
    v["id"] = json!(id);
    v
}

pub fn hive_beat(id: &str) -> Value {
    example(contract::examples::HIVE_HEARTBEAT, id)
}

pub fn worker_beat(id: &str) -> Value {
    example(contract::examples::WORKER_HEARTBEAT, id)
}
