//! The jobs the reference worker runs: real work, bounded.

use std::time::{Duration, Instant};

use contract::{JobRequest, MAX_SHA256_ROUNDS, MAX_SLEEP_MS};
use sha2::{Digest, Sha256};

/// Longest sha256 input accepted.
pub const MAX_INPUT_BYTES: usize = 4096;

/// Refuses jobs that would hold a slot for too long or ask for nonsense.
pub fn check(job: &JobRequest) -> Result<(), String> {
    match job {
        JobRequest::Sleep { ms } if *ms > MAX_SLEEP_MS => Err(format!("sleep of {ms} ms exceeds {MAX_SLEEP_MS} ms")),
        JobRequest::Sha256 { rounds, .. } if *rounds == 0 || *rounds > MAX_SHA256_ROUNDS => {
            Err(format!("rounds must be within 1..={MAX_SHA256_ROUNDS}"))
        }
        JobRequest::Sha256 { input, .. } if input.len() > MAX_INPUT_BYTES => {
            Err(format!("input exceeds {MAX_INPUT_BYTES} bytes"))
        }
        _ => Ok(()),
    }
}

pub fn kind(job: &JobRequest) -> &'static str {
    match job {
        JobRequest::Sleep { .. } => "sleep",
        JobRequest::Sha256 { .. } => "sha256",
    }
}

/// `sha256` applied `rounds` times, starting from `input`; hex of the last digest.
pub fn sha256_rounds(input: &str, rounds: u32) -> String {
    let mut digest = Sha256::digest(input.as_bytes());
    for _ in 1..rounds {
        digest = Sha256::digest(digest);
    }
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The executor's readiness: the hashing a `sha256` job runs gives the known digest of
/// "abc" (a broken build or a miscompiled dependency would be caught here, not by users).
pub fn self_test() -> Result<String, String> {
    const ABC: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    let got = sha256_rounds("abc", 1);
    if got == ABC { Ok("sha256 self-test passed".into()) } else { Err(format!("sha256(\"abc\") gave {got}")) }
}

/// Runs a checked job to completion; CPU work goes to the blocking pool so it never
/// stalls the heartbeat or other requests.
pub async fn execute(job: JobRequest) -> Result<(String, Duration), String> {
    let started = Instant::now();
    let output = match job {
        JobRequest::Sleep { ms } => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            String::new()
        }
        JobRequest::Sha256 { input, rounds } => tokio::task::spawn_blocking(move || sha256_rounds(&input, rounds))
            .await
            .map_err(|e| format!("job failed: {e}"))?,
    };
    Ok((output, started.elapsed()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_matches_known_digests() {
        assert_eq!(sha256_rounds("abc", 1), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        // Two rounds: sha256 of the raw first digest.
        let first = Sha256::digest(b"abc");
        let second: String = Sha256::digest(first).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(sha256_rounds("abc", 2), second);
    }

    #[test]
    fn oversized_jobs_are_refused() {
        assert!(check(&JobRequest::Sleep { ms: MAX_SLEEP_MS + 1 }).is_err());
        assert!(check(&JobRequest::Sha256 { input: "x".into(), rounds: 0 }).is_err());
        assert!(check(&JobRequest::Sha256 { input: "x".repeat(MAX_INPUT_BYTES + 1), rounds: 1 }).is_err());
        assert!(check(&JobRequest::Sha256 { input: "x".into(), rounds: 10 }).is_ok());
    }
}
