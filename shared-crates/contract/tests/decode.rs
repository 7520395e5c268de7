//! Property tests over decoding what comes off the wire: arbitrary bytes and mutated valid
//! bodies either decode to something that validates and survives a round trip unchanged,
//! or are refused with an error; ids are accepted exactly when they follow the id rule.
//!
//! proptest rather than `cargo fuzz`: libFuzzer needs a nightly compiler with sanitizer
//! runtimes, which this machine's toolchains do not have; proptest runs on stable, in the
//! normal test run, for a bounded number of cases (`PROPTEST_CASES`, default 256).

use std::fmt::Debug;

use contract::{DeploymentSpec, DrainRequest, HiveHeartbeat, JobRequest, NodeId, ShutdownRequest, WorkerHeartbeat};
use proptest::prelude::*;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Decodes `bytes` as `T`; when that works and `valid` agrees, encoding and decoding again
/// gives the same value.
fn round_trips<T: Serialize + DeserializeOwned + PartialEq + Debug>(
    bytes: &[u8],
    valid: impl Fn(&T) -> bool,
) -> Result<(), TestCaseError> {
    if let Ok(value) = serde_json::from_slice::<T>(bytes)
        && valid(&value)
    {
        let again: T =
            serde_json::from_slice(&serde_json::to_vec(&value).map_err(|e| TestCaseError::fail(e.to_string()))?)
                .map_err(|e| TestCaseError::fail(format!("re-decoding {value:?}: {e}")))?;
        prop_assert_eq!(again, value);
    }
    Ok(())
}

fn all_types(bytes: &[u8]) -> Result<(), TestCaseError> {
    round_trips::<HiveHeartbeat>(bytes, |h| h.validate().is_ok())?;
    round_trips::<WorkerHeartbeat>(bytes, |w| w.validate().is_ok())?;
    round_trips::<DeploymentSpec>(bytes, |d| d.validate().is_ok())?;
    round_trips::<ShutdownRequest>(bytes, |_| true)?;
    round_trips::<DrainRequest>(bytes, |_| true)?;
    round_trips::<JobRequest>(bytes, |_| true)
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f).map(Value::Number)),
        any::<String>().prop_map(Value::from),
        "[a-z0-9._-]{0,70}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map("[a-z_]{0,12}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn hive_beat() -> Value {
    serde_json::from_str(contract::examples::HIVE_HEARTBEAT).expect("the example is JSON")
}

fn worker_beat() -> Value {
    serde_json::from_str(contract::examples::WORKER_HEARTBEAT).expect("the example is JSON")
}

/// Replaces (or removes, for `None`) the value at `pointer`.
fn mutate(mut doc: Value, pointer: &str, value: Option<Value>) -> Value {
    let (parent, key) = pointer.rsplit_once('/').unwrap_or(("", pointer));
    if let Some(Value::Object(map)) = doc.pointer_mut(parent) {
        match value {
            Some(v) => map.insert(key.to_string(), v),
            None => map.remove(key),
        };
    }
    doc
}

const HIVE_FIELDS: &[&str] = &[
    "/id",
    "/epoch",
    "/seq",
    "/address",
    "/hostname",
    "/version",
    "/status",
    "/resources/cpu_percent",
    "/resources/memory_used_bytes",
    "/resources/memory_total_bytes",
    "/resources/disk_used_bytes",
    "/resources/load_average/one",
    "/capacity/max_workers",
    "/capacity/running_workers",
    "/labels",
    "/services",
    "/sent_at",
    "/unknown",
];
const WORKER_FIELDS: &[&str] = &[
    "/id",
    "/hive_id",
    "/epoch",
    "/seq",
    "/version",
    "/status",
    "/kind",
    "/address",
    "/in_flight",
    "/max_concurrent",
    "/sent_at",
    "/unknown",
];

/// Found by the mutation property on a CI run: serde_json's default float parsing gave
/// 2.1109195877372926e-308 back for 2.110919587737293e-308.
#[test]
fn a_subnormal_reading_round_trips_exactly() -> Result<(), TestCaseError> {
    let beat = mutate(hive_beat(), "/resources/load_average/one", Some(serde_json::json!(2.110919587737293e-308)));
    round_trips::<HiveHeartbeat>(&serde_json::to_vec(&beat).map_err(|e| TestCaseError::fail(e.to_string()))?, |h| {
        h.validate().is_ok()
    })
}

fn id_rule(s: &str) -> bool {
    (1..=64).contains(&s.len()) && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

proptest! {
    #[test]
    fn arbitrary_bytes_are_refused_or_round_trip(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        all_types(&bytes)?;
    }

    #[test]
    fn arbitrary_json_is_refused_or_round_trips(doc in json_value()) {
        all_types(doc.to_string().as_bytes())?;
    }

    #[test]
    fn mutated_heartbeats_are_refused_or_valid(
        hive_field in proptest::sample::select(HIVE_FIELDS),
        worker_field in proptest::sample::select(WORKER_FIELDS),
        value in proptest::option::weighted(0.9, json_value()),
    ) {
        let hive = mutate(hive_beat(), hive_field, value.clone()).to_string();
        round_trips::<HiveHeartbeat>(hive.as_bytes(), |h| h.validate().is_ok())?;
        let worker = mutate(worker_beat(), worker_field, value).to_string();
        round_trips::<WorkerHeartbeat>(worker.as_bytes(), |w| w.validate().is_ok())?;
        // Whatever decodes carries ids that follow the id rule.
        if let Ok(w) = serde_json::from_str::<WorkerHeartbeat>(&worker) {
            prop_assert!(id_rule(w.id.as_str()) && id_rule(w.hive_id.as_str()));
        }
    }

    #[test]
    fn ids_are_accepted_exactly_by_the_rule(s in prop_oneof![any::<String>(), "[A-Za-z0-9._-]{0,70}", "[ -~]{1,10}"]) {
        let expected = id_rule(&s);
        prop_assert_eq!(NodeId::new(s.clone()).is_ok(), expected, "{:?}", s);
        let decoded = serde_json::from_value::<NodeId>(Value::String(s.clone()));
        prop_assert_eq!(decoded.is_ok(), expected, "decoding {:?}", s);
    }
}
