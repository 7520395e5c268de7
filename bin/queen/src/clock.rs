//! The queen's wall clock for what it decides by date.
//!
//! Durations (liveness, grace periods, phase timeouts, the job rate) run on tokio's
//! monotonic clock. A few times must be dates, because another queen or the next start
//! reads them: a drain's deadline, when a keyed job was routed. Those are read from
//! [`Wall`]: the system's date when the queen started, plus the monotonic time since. A
//! step of the system clock while the queen runs (NTP after a suspend, `date -s`, a VM
//! restored from a snapshot) then moves no deadline and expires no route; the step is
//! measured and said in the dashboard's banner. Times shown to people (snapshots,
//! events, the audit log) keep the system's date.

use std::sync::Arc;

use time::OffsetDateTime;

/// The system's date; a test's stepped one.
pub trait SystemClock: Send + Sync {
    fn now(&self) -> OffsetDateTime;
}

pub struct System;

impl SystemClock for System {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// A step of the system clock beyond this is said in the banner.
const STEP_SAID: time::Duration = time::Duration::minutes(1);

pub struct Wall {
    anchor: OffsetDateTime,
    at: tokio::time::Instant,
    system: Arc<dyn SystemClock>,
}

impl Wall {
    pub fn new(system: Arc<dyn SystemClock>) -> Self {
        Self { anchor: system.now(), at: tokio::time::Instant::now(), system }
    }

    pub fn system() -> Self {
        Self::new(Arc::new(System))
    }

    /// The date by this queen's reckoning.
    pub fn now(&self) -> OffsetDateTime {
        self.anchor + self.at.elapsed()
    }

    /// How far the system clock has moved from this queen's reckoning since it started
    /// (positive: the system is ahead).
    pub fn step(&self) -> time::Duration {
        self.system.now() - self.now()
    }

    /// What the banner says about a step, if there was one worth saying.
    pub fn step_text(&self) -> Option<String> {
        let step = self.step();
        (step.abs() > STEP_SAID).then(|| {
            let (way, by) = if step.is_positive() { ("forward", step) } else { ("back", -step) };
            format!(
                "the system clock stepped {way} by {} s since this queen started: drain deadlines and keyed-job routes follow the queen's own clock until it restarts",
                by.as_seconds_f64().round() as i64
            )
        })
    }
}

#[cfg(test)]
pub(crate) mod testing {
    use std::sync::Mutex;

    use super::*;

    /// A system clock that runs with tokio's (paused, in tests) and that a test steps.
    pub struct Stepped {
        start: OffsetDateTime,
        at: tokio::time::Instant,
        offset: Mutex<time::Duration>,
    }

    impl Stepped {
        pub fn new() -> Arc<Self> {
            Arc::new(Self {
                start: OffsetDateTime::now_utc(),
                at: tokio::time::Instant::now(),
                offset: Mutex::new(time::Duration::ZERO),
            })
        }

        pub fn step(&self, by: time::Duration) {
            *self.offset.lock().unwrap_or_else(|p| p.into_inner()) += by;
        }
    }

    impl SystemClock for Stepped {
        fn now(&self) -> OffsetDateTime {
            self.start + self.at.elapsed() + *self.offset.lock().unwrap_or_else(|p| p.into_inner())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::http::Method;

    use super::testing::Stepped;
    use super::*;
    use crate::store::JobRoute;

    /// A keyed job's route is kept for its window by the queen's clock: a day's step
    /// forward of the system clock does not forget it (its retry would run elsewhere).
    #[tokio::test(start_paused = true)]
    async fn a_keyed_jobs_route_outlives_a_clock_step_and_not_its_window() -> anyhow::Result<()> {
        let system = Stepped::new();
        let q = crate::testing::queen_on(Wall::new(system.clone()), |_| {})?;
        let route = JobRoute {
            worker: contract::NodeId::sanitized("w1"),
            address: "http://127.0.0.1:1".into(),
            at: q.queen.orchestrator.now(),
        };
        q.queen.orchestrator.store().put_job_route("k", &route)?;
        let stop = tokio_util::sync::CancellationToken::new();
        tokio::spawn(crate::jobs::forget_old_routes(std::sync::Arc::clone(&q.queen), stop.clone()));
        system.step(time::Duration::days(1));
        tokio::time::advance(Duration::from_secs(61)).await;
        tokio::task::yield_now().await;
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        assert!(q.queen.orchestrator.store().job_route("k")?.is_some(), "kept across the step");
        let (_, snapshot) = {
            q.queen.publish_snapshot();
            q.call(Method::GET, "/v1/snapshot", None, "").await
        };
        assert!(snapshot.contains("stepped forward by 86400 s"), "the banner says it: {snapshot}");

        tokio::time::advance(contract::IDEMPOTENCY_WINDOW + Duration::from_secs(60)).await;
        let forgotten = async {
            while q.queen.orchestrator.store().job_route("k").ok().flatten().is_some() {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(120), forgotten)
            .await
            .map_err(|_| anyhow::anyhow!("never forgotten"))?;
        stop.cancel();
        Ok(())
    }

    #[test]
    fn the_queens_reckoning_ignores_steps_and_measures_them() {
        let system = Stepped::new();
        let wall = Wall::new(system.clone());
        let before = wall.now();
        assert!(wall.step_text().is_none());
        system.step(time::Duration::hours(-1));
        assert!((wall.now() - before).abs() < time::Duration::seconds(5), "the reckoning did not move");
        assert!((wall.step() + time::Duration::hours(1)).abs() < time::Duration::seconds(5));
        assert!(wall.step_text().is_some_and(|t| t.contains("stepped back by 3600 s")));
    }
}
