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
    /// CPU (thousandths of a core) and memory (bytes) it offers that the replicas assigned
    /// to it have not asked for; `u64::MAX` for a hive that does not say what it offers.
    pub cpu_free: u64,
    pub memory_free: u64,
}

impl Candidate {
    /// A hive with `max_workers` slots that offers no CPU or memory figure.
    pub fn slots(id: NodeId, max_workers: u32) -> Self {
        Self {
            id,
            labels: BTreeMap::new(),
            max_workers,
            assigned: 0,
            cpu_percent: 0.0,
            memory_percent: 0.0,
            cpu_free: u64::MAX,
            memory_free: u64::MAX,
        }
    }

    /// Room for one more replica asking `want`: a slot, and the CPU and memory it asks.
    fn has_room(&self, want: &Want<'_>) -> bool {
        self.assigned < self.max_workers && self.cpu_free >= want.cpu_millis && self.memory_free >= want.memory_bytes
    }

    /// Counts a replica asking `cpu_millis` and `memory_bytes` on this hive.
    pub fn take(&mut self, cpu_millis: u64, memory_bytes: u64) {
        self.assigned += 1;
        self.cpu_free = self.cpu_free.saturating_sub(cpu_millis);
        self.memory_free = self.memory_free.saturating_sub(memory_bytes);
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

/// What one replica asks of its hive, and where its deployment's other replicas are.
pub struct Want<'a> {
    /// Labels the hive must have.
    pub labels: &'a BTreeMap<String, String>,
    /// Spread across the values of this label (zone, rack) before spreading across hives.
    pub spread_by: Option<&'a str>,
    /// Replicas of the same deployment on each hive now; the pick is counted in.
    pub placed: &'a mut BTreeMap<NodeId, u32>,
    /// What the replica asks of its hive (0: nothing counted).
    pub cpu_millis: u64,
    pub memory_bytes: u64,
}

impl<'a> Want<'a> {
    /// A replica that needs `labels` and has no siblings placed yet.
    #[cfg(test)]
    pub fn labels(labels: &'a BTreeMap<String, String>, placed: &'a mut BTreeMap<NodeId, u32>) -> Self {
        Self { labels, spread_by: None, placed, cpu_millis: 0, memory_bytes: 0 }
    }
}

/// Keeps, of `eligible`, the hives where the fewest of the deployment's replicas run —
/// first by the `spread_by` label's value, then by hive — so that no strategy stacks
/// replicas on one hive (or zone) while another with room has fewer.
fn spread(candidates: &[Candidate], eligible: Vec<usize>, want: &Want<'_>) -> Vec<usize> {
    let on = |i: usize| want.placed.get(&candidates[i].id).copied().unwrap_or(0);
    let eligible = match want.spread_by {
        Some(label) => {
            let value = |i: usize| candidates[i].labels.get(label).cloned();
            // Replicas per value count every hive of that value, eligible or not.
            let mut per_value: BTreeMap<Option<String>, u32> = BTreeMap::new();
            for c in candidates {
                let n = want.placed.get(&c.id).copied().unwrap_or(0);
                *per_value.entry(c.labels.get(label).cloned()).or_default() += n;
            }
            let load = |i: usize| per_value.get(&value(i)).copied().unwrap_or(0);
            let least = eligible.iter().map(|&i| load(i)).min().unwrap_or(0);
            eligible.into_iter().filter(|&i| load(i) == least).collect()
        }
        None => eligible,
    };
    let least = eligible.iter().map(|&i| on(i)).min().unwrap_or(0);
    eligible.into_iter().filter(|&i| on(i) == least).collect()
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
    /// and that have room, spread from its siblings (see [`spread`]), and counts the
    /// replica on it. `None` when no hive qualifies.
    pub fn pick(&mut self, candidates: &mut [Candidate], want: &mut Want<'_>) -> Option<NodeId> {
        let fits: Vec<usize> = (0..candidates.len())
            .filter(|&i| candidates[i].has_room(want) && candidates[i].matches(want.labels))
            .collect();
        if fits.is_empty() {
            return None;
        }
        let eligible = spread(candidates, fits, want);
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
        candidates[chosen].take(want.cpu_millis, want.memory_bytes);
        *want.placed.entry(candidates[chosen].id.clone()).or_default() += 1;
        Some(candidates[chosen].id.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hive(id: &str, max: u32, cpu: f32, labels: &[(&str, &str)]) -> Candidate {
        Candidate {
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            cpu_percent: cpu,
            memory_percent: 20.0,
            ..Candidate::slots(NodeId::new(id).expect("valid id"), max)
        }
    }

    /// The fixed cluster every strategy is shown on: a big quiet hive, a small busy one,
    /// and a middling one labelled `gpu`.
    fn cluster() -> Vec<Candidate> {
        vec![hive("a", 8, 10.0, &[]), hive("b", 2, 90.0, &[]), hive("c", 4, 40.0, &[("gpu", "yes")])]
    }

    const ANY: &BTreeMap<String, String> = &BTreeMap::new();

    /// A replica of a deployment of its own: nothing to spread from.
    fn alone(placer: &mut Placer, hives: &mut [Candidate], labels: &BTreeMap<String, String>) -> Option<NodeId> {
        placer.pick(hives, &mut Want::labels(labels, &mut BTreeMap::new()))
    }

    /// Places `n` single-replica deployments and returns how many landed on a, b, c:
    /// the strategy alone, without spreading.
    fn landed(strategy: PlacementStrategy, n: usize) -> [u32; 3] {
        let mut hives = cluster();
        let mut placer = Placer::with_seed(strategy, 7);
        for _ in 0..n {
            alone(&mut placer, &mut hives, ANY).expect("room left");
        }
        [hives[0].assigned, hives[1].assigned, hives[2].assigned]
    }

    #[test]
    fn round_robin_takes_turns() {
        assert_eq!(landed(PlacementStrategy::RoundRobin, 6), [2, 2, 2]);
        // b is full after two: the turns skip it.
        assert_eq!(landed(PlacementStrategy::RoundRobin, 9), [4, 2, 3]);
    }

    #[test]
    fn least_loaded_prefers_the_quiet_big_hive() {
        // a: 0.1 + 0.2 + k/8; c: 0.4 + 0.2 + k/4; b: 0.9 + 0.2 + k/2.
        assert_eq!(landed(PlacementStrategy::LeastLoaded, 6), [5, 0, 1]);
    }

    #[test]
    fn least_workers_evens_out_counts() {
        assert_eq!(landed(PlacementStrategy::LeastWorkers, 6), [2, 2, 2]);
        assert_eq!(landed(PlacementStrategy::LeastWorkers, 12), [6, 2, 4]);
    }

    #[test]
    fn random_is_uniform_among_hives_with_room() {
        let [a, b, c] = landed(PlacementStrategy::Random, 12);
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
            alone(&mut placer, &mut hives, ANY).expect("room");
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
            assert_eq!(alone(&mut placer, &mut hives, &gpu).map(|id| id.to_string()), Some("c".into()));
        }
        assert_eq!(alone(&mut placer, &mut hives, &gpu), None, "c is full and nothing else matches");
        let nowhere: BTreeMap<String, String> = [("zone".to_string(), "mars".to_string())].into();
        assert_eq!(alone(&mut placer, &mut hives, &nowhere), None);
    }

    #[test]
    fn capacity_is_never_exceeded() {
        for strategy in PlacementStrategy::ALL {
            let mut hives = cluster();
            let mut placer = Placer::with_seed(strategy, 1);
            let placed = std::iter::from_fn(|| alone(&mut placer, &mut hives, ANY)).take(100).count();
            assert_eq!(placed, 14, "{strategy:?} fills exactly the 14 slots");
            assert!(hives.iter().all(|h| h.assigned <= h.max_workers), "{strategy:?}");
        }
    }

    /// `n` replicas of one deployment: where they land, by hive id.
    fn one_deployment(strategy: PlacementStrategy, hives: &mut [Candidate], n: usize, by: Option<&str>) -> Vec<u32> {
        let mut placer = Placer::with_seed(strategy, 7);
        let mut placed = BTreeMap::new();
        for _ in 0..n {
            let mut want = Want { labels: ANY, spread_by: by, placed: &mut placed, cpu_millis: 0, memory_bytes: 0 };
            placer.pick(hives, &mut want).expect("room left");
        }
        hives.iter().map(|h| placed.get(&h.id).copied().unwrap_or(0)).collect()
    }

    #[test]
    fn every_strategy_spreads_one_deployments_replicas_across_hives() {
        for strategy in PlacementStrategy::ALL {
            // Room for 6 each, unevenly loaded: least_loaded alone would stack on the quietest.
            let mut hives = vec![hive("a", 6, 5.0, &[]), hive("b", 6, 50.0, &[]), hive("c", 6, 90.0, &[])];
            assert_eq!(one_deployment(strategy, &mut hives, 6, None), vec![2, 2, 2], "{strategy:?}");
        }
    }

    #[test]
    fn a_full_hive_is_skipped_and_the_rest_share() {
        for strategy in PlacementStrategy::ALL {
            let mut hives = vec![hive("a", 1, 5.0, &[]), hive("b", 6, 50.0, &[]), hive("c", 6, 90.0, &[])];
            assert_eq!(one_deployment(strategy, &mut hives, 7, None), vec![1, 3, 3], "{strategy:?}");
        }
    }

    #[test]
    fn no_strategy_gives_a_hive_more_cpu_or_memory_than_it_offers() {
        const GIB: u64 = 1 << 30;
        for strategy in PlacementStrategy::ALL {
            // Slots for 8 each; a offers 2 cores and 4 GiB, b 8 cores and 2 GiB, c says nothing.
            let offers = |id: &str, cpu: u64, memory: u64| Candidate {
                cpu_free: cpu,
                memory_free: memory,
                ..hive(id, 8, 10.0, &[])
            };
            let mut hives = vec![offers("a", 2_000, 4 * GIB), offers("b", 8_000, 2 * GIB), hive("c", 8, 10.0, &[])];
            let (offered_a, offered_b) =
                ((hives[0].cpu_free, hives[0].memory_free), (hives[1].cpu_free, hives[1].memory_free));
            let mut placer = Placer::with_seed(strategy, 3);
            let mut placed = BTreeMap::new();
            let mut landed = 0;
            // 20 replicas of half a core and 1 GiB each: a takes 4 (cpu), b 2 (memory), c 8 (slots).
            for _ in 0..20 {
                let mut want =
                    Want { labels: ANY, spread_by: None, placed: &mut placed, cpu_millis: 500, memory_bytes: GIB };
                landed += usize::from(placer.pick(&mut hives, &mut want).is_some());
            }
            let on: Vec<u32> = hives.iter().map(|h| placed.get(&h.id).copied().unwrap_or(0)).collect();
            assert_eq!(on, vec![4, 2, 8], "{strategy:?}");
            assert_eq!(landed, 14, "{strategy:?}: the other 6 find no room and stay pending");
            assert!(u64::from(on[0]) * 500 <= offered_a.0 && u64::from(on[0]) * GIB <= offered_a.1);
            assert!(u64::from(on[1]) * 500 <= offered_b.0 && u64::from(on[1]) * GIB <= offered_b.1);
        }
    }

    #[test]
    fn spread_by_a_label_spreads_across_its_values_first() {
        for strategy in PlacementStrategy::ALL {
            // Zone x has three hives, zone y one: by zone, half the replicas go to y.
            let mut hives = vec![
                hive("a", 8, 10.0, &[("zone", "x")]),
                hive("b", 8, 10.0, &[("zone", "x")]),
                hive("c", 8, 10.0, &[("zone", "x")]),
                hive("d", 8, 10.0, &[("zone", "y")]),
            ];
            let on = one_deployment(strategy, &mut hives, 6, Some("zone"));
            assert_eq!(on[3], 3, "{strategy:?}: {on:?}");
            assert_eq!(on[..3].iter().sum::<u32>(), 3, "{strategy:?}: {on:?}");
            assert!(on[..3].iter().all(|&n| n == 1), "and across zone x's hives: {strategy:?} {on:?}");
        }
    }
}
