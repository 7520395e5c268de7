//! Jobs this worker ran under an idempotency key, remembered for a while: a job sent again
//! with the same key (its first answer was lost with a queen, or the client gave up
//! waiting) waits for the first run, or gets its outcome, instead of running twice.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use contract::{JobRequest, JobResponse};
use tokio::sync::watch;

/// How long a keyed job's outcome is kept.
pub const KEPT_FOR: Duration = contract::IDEMPOTENCY_WINDOW;
/// Most outcomes kept; past it the oldest go first, so memory stays bounded at any rate.
pub const KEPT_AT_MOST: usize = 10_000;

/// How a job ended: its answer, or why it failed.
pub type Outcome = Result<JobResponse, String>;

/// What a request with a key should do.
pub enum Claim {
    /// The key is new: run the job and send its outcome here (`None` until then).
    Run(watch::Sender<Option<Outcome>>),
    /// The key was seen with the same job: wait for (or read) that run's outcome.
    Replay(watch::Receiver<Option<Outcome>>),
    /// The key was seen with a different job.
    Conflict,
}

struct Entry {
    job: JobRequest,
    outcome: watch::Receiver<Option<Outcome>>,
}

#[derive(Default)]
pub struct Remembered {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    by_key: HashMap<String, Entry>,
    /// Keys by the time they were claimed, oldest first.
    order: VecDeque<(Instant, String)>,
}

impl Remembered {
    pub fn claim(&self, key: &str, job: &JobRequest, now: Instant) -> Claim {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.expire(now);
        if let Some(entry) = inner.by_key.get(key) {
            return if &entry.job == job { Claim::Replay(entry.outcome.clone()) } else { Claim::Conflict };
        }
        let (tx, rx) = watch::channel(None);
        inner.by_key.insert(key.to_string(), Entry { job: job.clone(), outcome: rx });
        inner.order.push_back((now, key.to_string()));
        Claim::Run(tx)
    }

    /// Forgets a key whose job never started (refused: busy or draining), so a retry runs it.
    pub fn forget(&self, key: &str) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.by_key.remove(key);
        inner.order.retain(|(_, k)| k != key);
    }

    pub fn len(&self) -> usize {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Inner {
    fn expire(&mut self, now: Instant) {
        while let Some((at, key)) = self.order.front() {
            let too_many = self.order.len() >= KEPT_AT_MOST;
            if !too_many && now.saturating_duration_since(*at) < KEPT_FOR {
                break;
            }
            self.by_key.remove(key);
            self.order.pop_front();
        }
    }
}

/// Waits for a claimed run's outcome; `Err` if the run vanished without one (its task was
/// aborted as the worker stopped).
pub async fn outcome(mut rx: watch::Receiver<Option<Outcome>>) -> Outcome {
    match rx.wait_for(Option::is_some).await {
        Ok(v) => v.clone().unwrap_or_else(|| Err("the job ended without an outcome".into())),
        Err(_) => Err("the job ended without an outcome".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sleep(ms: u64) -> JobRequest {
        JobRequest::Sleep { ms }
    }

    #[tokio::test]
    async fn a_key_runs_once_and_replays_its_outcome() {
        let r = Remembered::default();
        let now = Instant::now();
        let Claim::Run(tx) = r.claim("k", &sleep(1), now) else { panic!("a new key runs") };
        let Claim::Replay(rx) = r.claim("k", &sleep(1), now) else { panic!("a second claim replays") };
        assert!(matches!(r.claim("k", &sleep(2), now), Claim::Conflict), "another job under the key");
        let answer = JobResponse { worker_id: "w".into(), kind: "sleep".into(), output: String::new(), duration_ms: 1 };
        let waiting = tokio::spawn(outcome(rx));
        tx.send_replace(Some(Ok(answer.clone())));
        assert_eq!(waiting.await.ok(), Some(Ok(answer.clone())));
        let Claim::Replay(rx) = r.claim("k", &sleep(1), now) else { panic!("still remembered") };
        assert_eq!(outcome(rx).await, Ok(answer));
    }

    #[tokio::test]
    async fn a_run_dropped_without_an_outcome_is_an_error_not_a_hang() {
        let r = Remembered::default();
        let Claim::Run(tx) = r.claim("k", &sleep(1), Instant::now()) else { panic!("new") };
        let Claim::Replay(rx) = r.claim("k", &sleep(1), Instant::now()) else { panic!("replay") };
        drop(tx);
        assert!(outcome(rx).await.is_err());
    }

    #[test]
    fn forgotten_refused_and_expired_keys_run_again() {
        let r = Remembered::default();
        let t0 = Instant::now();
        assert!(matches!(r.claim("refused", &sleep(1), t0), Claim::Run(_)));
        r.forget("refused");
        assert!(matches!(r.claim("refused", &sleep(1), t0), Claim::Run(_)), "a refused job runs on retry");
        assert!(matches!(r.claim("old", &sleep(1), t0), Claim::Run(_)));
        assert!(matches!(r.claim("old", &sleep(1), t0 + KEPT_FOR), Claim::Run(_)), "expired");
    }

    #[test]
    fn memory_is_bounded() {
        let r = Remembered::default();
        let now = Instant::now();
        for i in 0..KEPT_AT_MOST + 50 {
            let _ = r.claim(&format!("k{i}"), &sleep(1), now);
        }
        assert_eq!(r.len(), KEPT_AT_MOST);
        assert!(matches!(r.claim("k0", &sleep(1), now), Claim::Run(_)), "the oldest went first");
    }
}
