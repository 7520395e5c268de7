//! Choosing a hive for a replica: one function, the strategies as data.

use std::collections::BTreeMap;

use contract::{NodeId, PlacementStrategy};

/// A hive that could take a replica, with what the strategies weigh.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub id: NodeId,
    pub labels: BTreeMap<String, String>,
    pub max_workers: u32,
    /// Replicas assigned to it now, counting those placed in this round.
    pub assigned: u32,
    pub cpu_percent: f32,
    pub memory_percent: f32,
}

impl Candidate {
    fn has_room(&self) -> bool {
        self.assigned < self.max_workers
    }

    fn matches(&self, required: &BTreeMap<String, String>) -> bool {
        required.iter().all(|(k, v)| self.labels.get(k) == Some(v))
    }

    /// Busier is larger: cpu and memory in 0–1 each, plus the share of slots taken, so a
    /// quiet machine that is already full of idle workers is not chosen forever.
    fn load(&self) -> f64 {
        f64::from(self.cpu_percent) / 100.0
            + f64::from(self.memory_percent) / 100.0
            + f64::from(self.assigned) / f64::from(self.max_workers.max(1))
    }
}

/// State a strategy keeps between picks. Cloned by the planner, which works on a copy and
/// hands it back only with a plan that was applied.
#[derive(Clone, Debug)]
pub struct Placer {
    pub strategy: PlacementStrategy,
    /// Round robin's position, an index into candidates sorted by id.
    cursor: usize,
    rng: fastrand::Rng,
}

impl Placer {
    pub fn new(strategy: PlacementStrategy) -> Self {
        Self { strategy, cursor: 0, rng: fastrand::Rng::new() }
    }

    /// Deterministic random choices, for tests.
    #[cfg(test)]
    pub fn with_seed(strategy: PlacementStrategy, seed: u64) -> Self {
        Self { strategy, cursor: 0, rng: fastrand::Rng::with_seed(seed) }
    }

    /// Picks a hive for one replica among `candidates` (sorted by id) whose labels match
    /// `required` and that have room, and counts the replica on it. `None` when no hive
    /// qualifies.
    pub fn pick(&mut self, candidates: &mut [Candidate], required: &BTreeMap<String, String>) -> Option<NodeId> {
        let eligible: Vec<usize> =
            (0..candidates.len()).filter(|&i| candidates[i].has_room() && candidates[i].matches(required)).collect();
        if eligible.is_empty() {
            return None;
        }
        let by_key = |key: &dyn Fn(&Candidate) -> f64| {
            eligible.iter().copied().min_by(|&a, &b| key(&candidates[a]).total_cmp(&key(&candidates[b])))
        };
        let chosen = match self.strategy {
            PlacementStrategy::RoundRobin => {
                let n = candidates.len();
                let next = eligible.iter().copied().find(|&i| i >= self.cursor % n).unwrap_or(eligible[0]);
                self.cursor = next + 1;
                Some(next)
            }
            PlacementStrategy::LeastLoaded => by_key(&Candidate::load),
            PlacementStrategy::LeastWorkers => by_key(&|c| f64::from(c.assigned)),
            PlacementStrategy::Random => Some(eligible[self.rng.usize(..eligible.len())]),
            PlacementStrategy::Weighted => {
                let free = |i: usize| u64::from(candidates[i].max_workers - candidates[i].assigned);
                let total: u64 = eligible.iter().map(|&i| free(i)).sum();
                let mut ticket = self.rng.u64(..total);
                eligible.iter().copied().find(|&i| {
                    if ticket < free(i) {
                        true
                    } else {
                        ticket -= free(i);
                        false
                    }
                })
            }
        }?;
        candidates[chosen].assigned += 1;
        Some(candidates[chosen].id.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hive(id: &str, max: u32, cpu: f32, labels: &[(&str, &str)]) -> Candidate {
        Candidate {
            id: NodeId::new(id).expect("valid id"),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            max_workers: max,
            assigned: 0,
            cpu_percent: cpu,
            memory_percent: 20.0,
        }
    }

    /// The fixed cluster every strategy is shown on: a big quiet hive, a small busy one,
    /// and a middling one labelled `gpu`.
    fn cluster() -> Vec<Candidate> {
        vec![hive("a", 8, 10.0, &[]), hive("b", 2, 90.0, &[]), hive("c", 4, 40.0, &[("gpu", "yes")])]
    }

    /// Places `n` replicas and returns how many landed on a, b, c.
    fn spread(strategy: PlacementStrategy, n: usize) -> [u32; 3] {
        let mut hives = cluster();
        let mut placer = Placer::with_seed(strategy, 7);
        for _ in 0..n {
            placer.pick(&mut hives, &BTreeMap::new()).expect("room left");
        }
        [hives[0].assigned, hives[1].assigned, hives[2].assigned]
    }

    #[test]
    fn round_robin_takes_turns() {
        assert_eq!(spread(PlacementStrategy::RoundRobin, 6), [2, 2, 2]);
        // b is full after two: the turns skip it.
        assert_eq!(spread(PlacementStrategy::RoundRobin, 9), [4, 2, 3]);
    }

    #[test]
    fn least_loaded_prefers_the_quiet_big_hive() {
        // a: 0.1 + 0.2 + k/8; c: 0.4 + 0.2 + k/4; b: 0.9 + 0.2 + k/2.
        assert_eq!(spread(PlacementStrategy::LeastLoaded, 6), [5, 0, 1]);
    }

    #[test]
    fn least_workers_evens_out_counts() {
        assert_eq!(spread(PlacementStrategy::LeastWorkers, 6), [2, 2, 2]);
        assert_eq!(spread(PlacementStrategy::LeastWorkers, 12), [6, 2, 4]);
    }

    #[test]
    fn random_is_uniform_among_hives_with_room() {
        let [a, b, c] = spread(PlacementStrategy::Random, 12);
        assert_eq!(a + b + c, 12);
        assert!(b <= 2, "never over capacity");
        assert!(a >= 2 && c >= 2, "spread, not piled: {a} {b} {c}");
    }

    #[test]
    fn weighted_follows_free_capacity() {
        let mut totals = [0u32; 3];
        for seed in 0..200 {
            let mut hives = cluster();
            let mut placer = Placer::with_seed(PlacementStrategy::Weighted, seed);
            placer.pick(&mut hives, &BTreeMap::new()).expect("room");
            for (t, h) in totals.iter_mut().zip(&hives) {
                *t += h.assigned;
            }
        }
        // Free capacity 8 : 2 : 4 → expected 114 : 29 : 57 of 200.
        assert!(totals[0] > totals[2] && totals[2] > totals[1], "{totals:?}");
        assert!((90..=140).contains(&totals[0]), "{totals:?}");
    }

    #[test]
    fn labels_restrict_where_replicas_land() {
        let mut hives = cluster();
        let gpu: BTreeMap<String, String> = [("gpu".to_string(), "yes".to_string())].into();
        let mut placer = Placer::new(PlacementStrategy::LeastLoaded);
        for _ in 0..4 {
            assert_eq!(placer.pick(&mut hives, &gpu).map(|id| id.to_string()), Some("c".into()));
        }
        assert_eq!(placer.pick(&mut hives, &gpu), None, "c is full and nothing else matches");
        let nowhere: BTreeMap<String, String> = [("zone".to_string(), "mars".to_string())].into();
        assert_eq!(placer.pick(&mut hives, &nowhere), None);
    }

    #[test]
    fn capacity_is_never_exceeded() {
        for strategy in PlacementStrategy::ALL {
            let mut hives = cluster();
            let mut placer = Placer::with_seed(strategy, 1);
            let placed = std::iter::from_fn(|| placer.pick(&mut hives, &BTreeMap::new())).take(100).count();
            assert_eq!(placed, 14, "{strategy:?} fills exactly the 14 slots");
            assert!(hives.iter().all(|h| h.assigned <= h.max_workers), "{strategy:?}");
        }
    }
}
