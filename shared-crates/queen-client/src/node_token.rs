//! Per-node tokens: credentials that name the node holding them.
//!
//! The cluster token proves "a node of this cluster", not which one. A node token is
//! derived from it and binds an identity: `hive:<hive>:<mac>` with the MAC over the hive's
//! id keyed by the cluster token, and `worker:<hive>:<worker>:<mac>` with the MAC over the
//! worker's id keyed by its hive's MAC. The queen, which holds the cluster token, checks
//! either without storing anything; a hive given only its own token can make its workers'
//! tokens but not another hive's; no node holds the cluster token itself. `:` never occurs
//! in an id, so the fields split unambiguously.

use contract::NodeId;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// The identity a node token proves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeIdentity {
    Hive(NodeId),
    Worker { hive: NodeId, worker: NodeId },
}

fn mac(key: &[u8], message: &str) -> Hmac<Sha256> {
    // HMAC takes keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).unwrap_or_else(|_| unreachable!("hmac key"));
    mac.update(message.as_bytes());
    mac
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

fn hive_mac(cluster_token: &str, hive: &NodeId) -> Vec<u8> {
    mac(cluster_token.as_bytes(), &format!("hive:{hive}")).finalize().into_bytes().to_vec()
}

/// The token of hive `hive`, made by whoever holds the cluster token (`queen token`).
pub fn hive_token(cluster_token: &str, hive: &NodeId) -> String {
    format!("hive:{hive}:{}", hex(&hive_mac(cluster_token, hive)))
}

/// What the queen presents to worker `worker` of hive `hive` with a job: that worker's own
/// node token, which the queen makes from the cluster token.
pub fn job_token(cluster_token: &str, hive: &NodeId, worker: &NodeId) -> Option<String> {
    worker_token(&hive_token(cluster_token, hive), worker)
}

/// What worker `worker` of hive `hive`, holding `own` (its node token, its hive's token, or
/// the shared cluster token), accepts with a job: the same [`job_token`]. A token of
/// another worker, or the cluster token itself, is not it.
pub fn expected_job_token(own: &str, hive: &NodeId, worker: &NodeId) -> Option<String> {
    if own.starts_with("worker:") {
        return Some(own.to_string());
    }
    if own.starts_with("hive:") {
        return worker_token(own, worker);
    }
    job_token(own, hive, worker)
}

/// The token a hive holding `hive_token` gives the worker `worker` it starts; `None` when
/// `hive_token` is not a hive token (then the hive passes its own token on as it is).
pub fn worker_token(hive_token: &str, worker: &NodeId) -> Option<String> {
    let mut parts = hive_token.split(':');
    let (Some("hive"), Some(hive), Some(key), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return None;
    };
    let key = unhex(key)?;
    let worker_mac = mac(&key, &format!("worker:{worker}")).finalize().into_bytes();
    Some(format!("worker:{hive}:{worker}:{}", hex(&worker_mac)))
}

/// The identity `token` proves, if it is a node token made from `cluster_token`.
/// Comparison is constant time.
pub fn verify(cluster_token: &str, token: &str) -> Option<NodeIdentity> {
    let parts: Vec<&str> = token.split(':').collect();
    match parts.as_slice() {
        ["hive", hive, tag] => {
            let hive = NodeId::new(*hive).ok()?;
            mac(cluster_token.as_bytes(), &format!("hive:{hive}")).verify_slice(&unhex(tag)?).ok()?;
            Some(NodeIdentity::Hive(hive))
        }
        ["worker", hive, worker, tag] => {
            let (hive, worker) = (NodeId::new(*hive).ok()?, NodeId::new(*worker).ok()?);
            let key = hive_mac(cluster_token, &hive);
            mac(&key, &format!("worker:{worker}")).verify_slice(&unhex(tag)?).ok()?;
            Some(NodeIdentity::Worker { hive, worker })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> NodeId {
        NodeId::sanitized(s)
    }

    #[test]
    fn the_queen_and_the_worker_agree_on_the_job_token_and_nobody_else_has_it() {
        let (h1, w1, w2) = (id("h1"), id("w1"), id("w2"));
        let from_queen = job_token("cluster-secret", &h1, &w1).expect("made");
        let node = worker_token(&hive_token("cluster-secret", &h1), &w1).expect("made");
        assert_eq!(
            expected_job_token(&node, &h1, &w1).as_deref(),
            Some(from_queen.as_str()),
            "a worker with its node token"
        );
        assert_eq!(
            expected_job_token("cluster-secret", &h1, &w1).as_deref(),
            Some(from_queen.as_str()),
            "with the shared token"
        );
        assert_ne!(
            job_token("cluster-secret", &h1, &w2).as_deref(),
            Some(from_queen.as_str()),
            "another worker's differs"
        );
        assert_ne!(from_queen, "cluster-secret");
    }

    #[test]
    fn node_tokens_prove_exactly_their_node() {
        let hive = hive_token("cluster-secret", &id("h1"));
        assert_eq!(verify("cluster-secret", &hive), Some(NodeIdentity::Hive(id("h1"))));
        assert_eq!(verify("other-secret", &hive), None, "made from another cluster's token");
        let forged = hive.replace("hive:h1:", "hive:h2:");
        assert_eq!(verify("cluster-secret", &forged), None, "a token renamed to another hive");

        let worker = worker_token(&hive, &id("w1")).expect("a hive token makes worker tokens");
        assert_eq!(verify("cluster-secret", &worker), Some(NodeIdentity::Worker { hive: id("h1"), worker: id("w1") }));
        assert_eq!(verify("cluster-secret", &worker.replace(":w1:", ":w2:")), None);
        assert_eq!(verify("cluster-secret", &worker.replace("worker:h1:", "worker:h2:")), None, "claims another hive");
        let other_hive = hive_token("cluster-secret", &id("h2"));
        let minted_elsewhere = worker_token(&other_hive, &id("w1")).expect("worker token");
        assert_eq!(
            verify("cluster-secret", &minted_elsewhere),
            Some(NodeIdentity::Worker { hive: id("h2"), worker: id("w1") }),
            "a worker token names the hive that made it"
        );
        assert_eq!(worker_token("cluster-secret", &id("w1")), None, "the plain cluster token is passed on as is");
        assert_eq!(worker_token(&worker, &id("w2")), None, "a worker token mints nothing");
        let shaped = format!("hive:h1:{}", worker.rsplit(':').next().unwrap_or_default());
        let minted = worker_token(&shaped, &id("w2")).expect("any hive-shaped text makes a token");
        assert_eq!(verify("cluster-secret", &minted), None, "but one made from a worker's key verifies as nobody");
        for garbage in ["", "hive:", "hive:h1:zz", "hive:h1:abc", "worker:h1:w1", "hive:bad id:00"] {
            assert_eq!(verify("cluster-secret", garbage), None, "{garbage:?}");
        }
    }
}
