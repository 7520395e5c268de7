//! Heartbeat bodies, written as text: building them through serde for every send would
//! make the simulator, not the queen, the bottleneck on a shared machine.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

fn now() -> String {
    OffsetDateTime::now_utc().format(&Rfc3339).unwrap_or_else(|_| "2026-01-01T00:00:00Z".into())
}

/// A hive heartbeat with plausible, slowly varying readings. Addresses are loopback: the
/// queen takes in only addresses on the sender's own machine, and the simulated nodes are
/// all on the simulator's.
pub fn hive(id: &str, epoch: u64, seq: u64, workers: u32) -> String {
    let cpu = (seq % 50) as f32 + 5.0;
    format!(
        concat!(
            r#"{{"id":"{id}","epoch":{epoch},"seq":{seq},"address":"http://127.0.0.1:7000","hostname":"{id}","#,
            r#""version":"sim","status":"ready","resources":{{"cpu_percent":{cpu},"memory_used_bytes":4000000000,"#,
            r#""memory_total_bytes":16000000000,"disk_used_bytes":100000000000,"disk_total_bytes":500000000000,"#,
            r#""load_average":{{"one":0.5,"five":0.5,"fifteen":0.5}}}},"capacity":{{"max_workers":{max},"#,
            r#""running_workers":{workers}}},"labels":{{}},"services":[],"sent_at":"{now}"}}"#
        ),
        id = id,
        epoch = epoch,
        seq = seq,
        cpu = cpu,
        max = workers.max(1) * 2,
        workers = workers,
        now = now(),
    )
}

/// A worker heartbeat.
pub fn worker(id: &str, hive: &str, epoch: u64, seq: u64) -> String {
    format!(
        concat!(
            r#"{{"id":"{id}","hive_id":"{hive}","epoch":{epoch},"seq":{seq},"version":"sim","status":"ready","#,
            r#""kind":"sim","address":"http://127.0.0.1:7001","in_flight":0,"max_concurrent":4,"sent_at":"{now}"}}"#
        ),
        id = id,
        hive = hive,
        epoch = epoch,
        seq = seq,
        now = now(),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn bodies_are_valid_contract_heartbeats() {
        let h: contract::HiveHeartbeat = serde_json::from_str(&super::hive("h1", 1, 2, 3)).expect("decodes");
        h.validate().expect("valid");
        assert_eq!((h.seq.0, h.capacity.running_workers), (2, 3));
        let w: contract::WorkerHeartbeat = serde_json::from_str(&super::worker("w1", "h1", 1, 2)).expect("decodes");
        w.validate().expect("valid");
        assert_eq!(w.hive_id.as_str(), "h1");
    }
}
