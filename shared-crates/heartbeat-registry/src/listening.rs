//! Silence is counted only while the owner listens.
//!
//! A node is declared offline for silence, but silence is evidence only while the queen
//! could have heard it: a queen that is paused (SIGSTOP, a VM pause, a swap storm) or
//! starved of CPU hears nobody, and on waking would find every node silent for as long.
//! `Listening` keeps a clock that runs only while the owner listens: a probe ticks it
//! every `period` on the same runtime that takes heartbeats in, and a tick that comes
//! late by more than `allowance` means the owner was not listening for the excess. The
//! registry measures each node's silence on this clock, so the deadlines of every node
//! are extended by exactly the time the queen was deaf, and a node that really went
//! silent is declared offline once it has been silent for the threshold of listening.
//!
//! A stall still in progress counts at once (the sweep that runs first after a pause,
//! before the probe's late tick, already sees it), and the clock never runs backwards: a
//! late tick stops it at `period + allowance` after the last tick, where it then stays.
//! It is Lifeguard's "local health" (a node that cannot keep its own schedule doubts its
//! verdicts on others), made exact: the doubt is measured in seconds, not a multiplier.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// One stretch of time the owner was not listening.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Episode {
    /// When it ended (the late tick).
    pub ended: Instant,
    /// How long the owner could not hear: the lateness beyond the allowance.
    pub deaf: Duration,
}

#[derive(Debug)]
struct State {
    origin: Instant,
    last_tick: Instant,
    /// Deaf time recorded by ticks so far.
    deaf: Duration,
    episodes: u64,
    last_episode: Option<Episode>,
}

/// The listening clock of one owner (a queen), shared by its registries.
#[derive(Debug)]
pub struct Listening {
    period: Duration,
    allowance: Duration,
    state: Mutex<State>,
}

impl Listening {
    /// A clock whose probe ticks every `period`; lateness up to `allowance` is ordinary
    /// scheduling and costs nothing.
    pub fn new(period: Duration, allowance: Duration) -> Self {
        let now = Instant::now();
        Self {
            period,
            allowance,
            state: Mutex::new(State {
                origin: now,
                last_tick: now,
                deaf: Duration::ZERO,
                episodes: 0,
                last_episode: None,
            }),
        }
    }

    pub fn period(&self) -> Duration {
        self.period
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn excess(&self, since_tick: Duration) -> Duration {
        since_tick.saturating_sub(self.period + self.allowance)
    }

    /// The probe's tick; returns how long the owner was not listening since the last one
    /// (zero when on time).
    pub fn tick(&self) -> Duration {
        let now = Instant::now();
        let mut s = self.lock();
        let lost = self.excess(now.saturating_duration_since(s.last_tick));
        if !lost.is_zero() {
            s.deaf += lost;
            s.episodes += 1;
            s.last_episode = Some(Episode { ended: now, deaf: lost });
        }
        s.last_tick = now;
        lost
    }

    /// The time the owner has been listening since it started, as of `now` (a stall in
    /// progress counted).
    pub fn heard_time(&self, now: Instant) -> Duration {
        let s = self.lock();
        let ongoing = self.excess(now.saturating_duration_since(s.last_tick));
        now.saturating_duration_since(s.origin).saturating_sub(s.deaf + ongoing)
    }

    /// Every second the owner was not listening, in stretches past the allowance.
    pub fn deaf_total(&self) -> Duration {
        self.lock().deaf
    }

    pub fn episodes(&self) -> u64 {
        self.lock().episodes
    }

    pub fn last_episode(&self) -> Option<Episode> {
        self.lock().last_episode
    }

    /// A stall in progress as of now: how long the probe is overdue past the allowance.
    pub fn overdue(&self) -> Duration {
        let s = self.lock();
        self.excess(Instant::now().saturating_duration_since(s.last_tick))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: Duration = Duration::from_millis(100);
    const A: Duration = Duration::from_millis(200);

    async fn ticking(l: &Listening, for_: Duration) {
        let mut left = for_;
        while !left.is_zero() {
            let step = left.min(P);
            tokio::time::advance(step).await;
            l.tick();
            left -= step;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_clock_runs_while_ticked_and_stops_in_a_stall() {
        let l = Listening::new(P, A);
        let t0 = Instant::now();
        ticking(&l, Duration::from_secs(1)).await;
        assert_eq!(l.heard_time(Instant::now()), Duration::from_secs(1), "on time, nothing lost");

        // Ten seconds without a tick: the clock stops after period + allowance.
        let before = l.heard_time(Instant::now());
        tokio::time::advance(Duration::from_secs(10)).await;
        let during = l.heard_time(Instant::now());
        assert_eq!(during, before + P + A, "a stall in progress already counts");
        assert_eq!(l.overdue(), Duration::from_secs(10) - P - A);
        let lost = l.tick();
        assert_eq!(lost, Duration::from_secs(10) - P - A);
        assert_eq!(l.heard_time(Instant::now()), during, "the late tick records what was already counted");
        assert_eq!(l.episodes(), 1);

        // Listening again: the clock runs with real time.
        ticking(&l, Duration::from_secs(2)).await;
        assert_eq!(l.heard_time(Instant::now()), during + Duration::from_secs(2));
        assert_eq!(Instant::now() - t0 - l.heard_time(Instant::now()), l.deaf_total());
    }

    #[tokio::test(start_paused = true)]
    async fn lateness_within_the_allowance_costs_nothing_and_the_clock_never_goes_back() {
        let l = Listening::new(P, A);
        let mut last = Duration::ZERO;
        for late in [0, 50, 150, 200, 250, 1_000, 0, 299] {
            for _ in 0..10 {
                tokio::time::advance(Duration::from_millis(10)).await;
                let now = l.heard_time(Instant::now());
                assert!(now >= last, "never backwards");
                last = now;
            }
            tokio::time::advance(P + Duration::from_millis(late) - Duration::from_millis(100)).await;
            l.tick();
        }
        assert_eq!(l.deaf_total(), Duration::from_millis(50 + 800 + 99), "only lateness past the allowance");
    }
}
