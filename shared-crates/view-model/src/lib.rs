//! What a view of the cluster knows and how it shows it, as plain Rust: the state built
//! from snapshots, staleness, sorting, filtering, formatting and sparkline geometry. The
//! web dashboard and `queen top` both show the cluster through it, so they agree on when a
//! picture is stale, what "trouble first" means and how an age reads. No UI crate here:
//! all of it is unit-tested natively.

use std::collections::{BTreeMap, VecDeque};

use contract::{
    DeltaGap, HiveStatus, HiveSummary, Liveness, NodeEvent, NodeId, NodeKind, Snapshot, SnapshotDelta, WorkerStatus,
    WorkerSummary,
};

/// Snapshots remembered for sparklines (5 minutes at the default 5 s tick).
pub const HISTORY: usize = 60;
/// Events kept for the log; older ones are in the queen's per-node history.
pub const MAX_EVENTS: usize = 500;

/// The stream's state as the operator should read it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Connection {
    /// Before the first snapshot.
    Connecting,
    Live,
    /// The stream dropped; the browser is retrying.
    Reconnecting,
}

/// One hive's readings over time, oldest first.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HiveTrend {
    pub cpu: VecDeque<f32>,
    pub memory: VecDeque<f32>,
}

/// Everything the page shows, folded from the snapshots received so far.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Dashboard {
    pub latest: Option<Snapshot>,
    /// Client clock (ms) when `latest` arrived; "last seen" ticks from here.
    pub received_at_ms: f64,
    /// Time between the last two snapshots; how late is "stale" scales with it.
    pub tick_ms: f64,
    pub trends: BTreeMap<NodeId, HiveTrend>,
    /// (hives online, workers online), oldest first.
    pub online: VecDeque<(usize, usize)>,
    /// Liveness events, oldest first, each once (by seq).
    pub events: VecDeque<NodeEvent>,
}

fn push_bounded<T>(q: &mut VecDeque<T>, v: T, max: usize) {
    if q.len() == max {
        q.pop_front();
    }
    q.push_back(v);
}

impl Dashboard {
    /// Applies a `?delta=true` frame to the latest snapshot, then folds the result in like
    /// a whole one. A delta that does not follow the snapshot held means frames were lost:
    /// the caller must resync.
    pub fn apply_delta(&mut self, delta: &SnapshotDelta, now_ms: f64) -> Result<(), DeltaGap> {
        let mut next = self.latest.clone().ok_or(DeltaGap { held: 0, base_seq: delta.base_seq })?;
        next.apply(delta)?;
        self.apply(next, now_ms);
        Ok(())
    }

    pub fn apply(&mut self, snapshot: Snapshot, now_ms: f64) {
        if self.latest.is_some() {
            let gap = now_ms - self.received_at_ms;
            if gap > 0.0 {
                self.tick_ms = gap;
            }
        }
        for h in &snapshot.hives {
            let trend = self.trends.entry(h.id.clone()).or_default();
            push_bounded(&mut trend.cpu, h.resources.cpu_percent, HISTORY);
            push_bounded(&mut trend.memory, h.resources.memory_percent(), HISTORY);
        }
        self.trends.retain(|id, _| snapshot.hives.iter().any(|h| &h.id == id));
        push_bounded(&mut self.online, (snapshot.hives_online, snapshot.workers_online), HISTORY);
        let newest = self.events.back().map(|e| e.seq).unwrap_or(0);
        // A queen that restarted numbers its events from 1 again: start the log over.
        if snapshot.events.last().is_some_and(|e| e.seq < newest) {
            self.events.clear();
        }
        let newest = self.events.back().map(|e| e.seq).unwrap_or(0);
        for e in snapshot.events.iter().filter(|e| e.seq > newest) {
            push_bounded(&mut self.events, e.clone(), MAX_EVENTS);
        }
        self.latest = Some(snapshot);
        self.received_at_ms = now_ms;
    }

    /// Milliseconds since the last snapshot arrived.
    pub fn since_last_ms(&self, now_ms: f64) -> f64 {
        (now_ms - self.received_at_ms).max(0.0)
    }

    /// No snapshot for well over one tick: whatever the page shows may be out of date.
    pub fn is_stale(&self, now_ms: f64) -> bool {
        let tick = if self.tick_ms > 0.0 { self.tick_ms } else { 5_000.0 };
        self.latest.is_some() && self.since_last_ms(now_ms) > tick * 2.5 + 1_000.0
    }

    /// What the connection indicator says.
    pub fn connection_text(&self, state: Connection, now_ms: f64) -> String {
        let ago = ago(self.since_last_ms(now_ms));
        match state {
            Connection::Connecting => "connecting…".into(),
            Connection::Live if self.is_stale(now_ms) => format!("stale: last snapshot {ago}"),
            Connection::Live => format!("live · snapshot {ago}"),
            Connection::Reconnecting if self.latest.is_none() => "reconnecting…".into(),
            Connection::Reconnecting => format!("reconnecting · last snapshot {ago}"),
        }
    }

    /// Events newest first, optionally only one node's.
    pub fn events_newest_first(&self, node: Option<(NodeKind, &NodeId)>) -> Vec<NodeEvent> {
        self.events
            .iter()
            .rev()
            .filter(|e| node.is_none_or(|(kind, id)| e.node == kind && &e.id == id))
            .cloned()
            .collect()
    }

    /// Browser tab title: counts first, so they show in a narrow tab.
    pub fn title(&self) -> String {
        match &self.latest {
            Some(s) => format!(
                "{}/{} hives · {}/{} workers — Apiary",
                s.hives_online, s.hives_total, s.workers_online, s.workers_total
            ),
            None => "Apiary".into(),
        }
    }
}

/// "0.9 s ago", "31 s ago", "4 min ago", "2 h ago": tenths while they matter.
pub fn ago(ms: f64) -> String {
    let secs = (ms / 1000.0).max(0.0);
    let s = secs.floor() as u64;
    match s {
        0..=9 => format!("{secs:.1} s ago"),
        10..=59 => format!("{s} s ago"),
        60..=3599 => format!("{} min ago", s / 60),
        _ => format!("{} h ago", s / 3600),
    }
}

pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{b} B") } else { format!("{v:.1} {}", UNITS[unit]) }
}

/// Label and CSS class for a hive's state: liveness first, then what it says of itself.
pub fn hive_state(h: &HiveSummary) -> (&'static str, &'static str) {
    match (h.liveness, h.status) {
        (Liveness::Online, _) if h.flapping => ("flapping", "warn"),
        (Liveness::Online, HiveStatus::Draining) => ("draining", "warn"),
        (Liveness::Online, _) if !h.eligible => ("ineligible", "warn"),
        (Liveness::Online, _) => ("online", "ok"),
        (Liveness::Suspect, _) => ("suspect", "warn"),
        (Liveness::Offline, _) => ("offline", "bad"),
        (Liveness::Stopped, _) => ("stopped", "off"),
    }
}

pub fn worker_state(w: &WorkerSummary) -> (&'static str, &'static str) {
    match w.liveness {
        Liveness::Online if w.flapping => ("flapping", "warn"),
        Liveness::Online => match w.status {
            WorkerStatus::Ready => ("ready", "ok"),
            WorkerStatus::Busy => ("busy", "busy"),
            WorkerStatus::Starting => ("starting", "warn"),
            WorkerStatus::Draining => ("draining", "warn"),
            WorkerStatus::Stopped => ("stopped", "off"),
        },
        Liveness::Suspect => ("suspect", "warn"),
        Liveness::Offline => ("offline", "bad"),
        Liveness::Stopped => ("stopped", "off"),
    }
}

/// Case-insensitive match of `query` against any of `fields`; an empty query matches all.
pub fn matches(query: &str, fields: &[&str]) -> bool {
    let q = query.trim().to_lowercase();
    q.is_empty() || fields.iter().any(|f| f.to_lowercase().contains(&q))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HiveColumn {
    Name,
    State,
    Cpu,
    Memory,
    Disk,
    Load,
    Workers,
    LastSeen,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkerColumn {
    Name,
    Hive,
    State,
    InFlight,
    Kind,
    LastSeen,
}

/// Rank of a state for sorting: trouble first.
fn severity(class: &str) -> u8 {
    match class {
        "bad" => 0,
        "warn" => 1,
        "busy" => 2,
        "ok" => 3,
        _ => 4,
    }
}

pub fn visible_hives(s: &Snapshot, query: &str, column: HiveColumn, descending: bool) -> Vec<HiveSummary> {
    let mut hives: Vec<HiveSummary> = s
        .hives
        .iter()
        .filter(|h| matches(query, &[h.id.as_str(), h.hostname.as_str(), hive_state(h).0, h.version.as_str()]))
        .cloned()
        .collect();
    hives.sort_by(|a, b| {
        let ord = match column {
            HiveColumn::Name => a.id.cmp(&b.id),
            HiveColumn::State => severity(hive_state(a).1).cmp(&severity(hive_state(b).1)),
            HiveColumn::Cpu => a.resources.cpu_percent.total_cmp(&b.resources.cpu_percent),
            HiveColumn::Memory => a.resources.memory_percent().total_cmp(&b.resources.memory_percent()),
            HiveColumn::Disk => a.resources.disk_percent().total_cmp(&b.resources.disk_percent()),
            HiveColumn::Load => a.resources.load_average.one.total_cmp(&b.resources.load_average.one),
            HiveColumn::Workers => a.capacity.running_workers.cmp(&b.capacity.running_workers),
            HiveColumn::LastSeen => a.last_seen_ago_ms.cmp(&b.last_seen_ago_ms),
        }
        .then_with(|| a.id.cmp(&b.id));
        if descending { ord.reverse() } else { ord }
    });
    hives
}

pub fn visible_workers(
    s: &Snapshot,
    query: &str,
    hive: Option<&NodeId>,
    column: WorkerColumn,
    descending: bool,
) -> Vec<WorkerSummary> {
    let mut workers: Vec<WorkerSummary> = s
        .workers
        .iter()
        .filter(|w| hive.is_none_or(|h| &w.hive_id == h))
        .filter(|w| matches(query, &[w.id.as_str(), w.hive_id.as_str(), w.kind.as_str(), worker_state(w).0]))
        .cloned()
        .collect();
    workers.sort_by(|a, b| {
        let ord = match column {
            WorkerColumn::Name => a.id.cmp(&b.id),
            WorkerColumn::Hive => a.hive_id.cmp(&b.hive_id),
            WorkerColumn::State => severity(worker_state(a).1).cmp(&severity(worker_state(b).1)),
            WorkerColumn::InFlight => a.in_flight.cmp(&b.in_flight),
            WorkerColumn::Kind => a.kind.cmp(&b.kind),
            WorkerColumn::LastSeen => a.last_seen_ago_ms.cmp(&b.last_seen_ago_ms),
        }
        .then_with(|| a.id.cmp(&b.id));
        if descending { ord.reverse() } else { ord }
    });
    workers
}

/// SVG polyline points for `values` in a `width`×`height` box, 0 at the bottom and `max`
/// at the top; the newest value sits at the right edge so lines do not jump as they grow.
pub fn sparkline(values: impl ExactSizeIterator<Item = f32>, width: f32, height: f32, max: f32) -> String {
    let n = values.len();
    if n == 0 {
        return String::new();
    }
    let step = width / (HISTORY.max(2) - 1) as f32;
    let start = width - step * (n - 1) as f32;
    values
        .enumerate()
        .map(|(i, v)| {
            let y = height - (v.clamp(0.0, max) / max.max(f32::EPSILON)) * height;
            format!("{:.1},{:.1}", start + step * i as f32, y)
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use contract::{Capacity, Epoch, EventKind, Resources};
    use time::OffsetDateTime;

    fn id(s: &str) -> NodeId {
        NodeId::new(s).expect("valid id")
    }

    fn hive(name: &str, liveness: Liveness, cpu: f32) -> HiveSummary {
        HiveSummary {
            id: id(name),
            liveness,
            eligible: true,
            available: liveness == Liveness::Online,
            flapping: false,
            status: HiveStatus::Ready,
            epoch: Epoch(1),
            last_seen: OffsetDateTime::UNIX_EPOCH,
            last_seen_ago_ms: 1000,
            address: String::new(),
            hostname: "box".into(),
            version: "0.1.0".into(),
            resources: Resources {
                cpu_percent: cpu,
                memory_used_bytes: 1,
                memory_total_bytes: 4,
                ..Default::default()
            },
            capacity: Capacity { max_workers: 4, running_workers: 1, ..Default::default() },
            labels: Default::default(),
            services: vec![],
            workers: vec![],
        }
    }

    fn event(seq: u64, node: &str, kind: EventKind) -> NodeEvent {
        NodeEvent {
            seq,
            at: OffsetDateTime::UNIX_EPOCH,
            node: NodeKind::Hive,
            id: id(node),
            kind,
            liveness: Liveness::Online,
            epoch: None,
            reason: format!("reason {seq}"),
        }
    }

    fn snapshot(seq: u64, hives: Vec<HiveSummary>, events: Vec<NodeEvent>) -> Snapshot {
        Snapshot {
            timestamp: OffsetDateTime::UNIX_EPOCH,
            workers_online: 0,
            workers_available: 0,
            hives_online: hives.iter().filter(|h| h.liveness == Liveness::Online).count(),
            hives_available: 0,
            worker_ids: vec![],
            hive_ids: hives.iter().map(|h| h.id.clone()).collect(),
            seq,
            hives_total: hives.len(),
            workers_total: 0,
            jobs_in_flight: 0,
            hives,
            workers: vec![],
            events,
            deployments: vec![],
            placement_brake: false,
            warnings: Vec::new(),
            shutdown: None,
            drains: vec![],
        }
    }

    /// Ages as the queen sets them: from the snapshot's own timestamp.
    fn aged(mut s: Snapshot, at_s: i64) -> Snapshot {
        s.timestamp = OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(at_s);
        for h in &mut s.hives {
            h.last_seen_ago_ms = contract::ago_ms(s.timestamp, h.last_seen);
        }
        s
    }

    #[test]
    fn deltas_bring_the_dashboard_to_the_next_snapshot() {
        let a =
            aged(snapshot(1, vec![hive("h1", Liveness::Online, 10.0), hive("h2", Liveness::Online, 20.0)], vec![]), 5);
        let b =
            aged(snapshot(2, vec![hive("h1", Liveness::Online, 50.0), hive("h3", Liveness::Online, 1.0)], vec![]), 10);
        let mut d = Dashboard::default();
        d.apply(a.clone(), 0.0);
        d.apply_delta(&a.delta_to(&b), 5000.0).expect("follows");
        assert_eq!(d.latest.as_ref(), Some(&b), "the delta rebuilds the next snapshot exactly");
        assert_eq!(d.trends.get(&id("h1")).map(|t| t.cpu.len()), Some(2), "and folds in like a whole one");
        let mut stray = a.delta_to(&b);
        stray.base_seq = 7;
        assert_eq!(d.apply_delta(&stray, 6000.0), Err(DeltaGap { held: 2, base_seq: 7 }));
        assert_eq!(d.latest.as_ref().map(|s| s.seq), Some(2), "a gap changes nothing");
    }

    #[test]
    fn events_accumulate_once_each_and_restart_with_a_new_queen() {
        let mut d = Dashboard::default();
        d.apply(snapshot(1, vec![], vec![event(1, "a", EventKind::Joined), event(2, "b", EventKind::Joined)]), 0.0);
        d.apply(snapshot(2, vec![], vec![event(2, "b", EventKind::Joined), event(3, "a", EventKind::Offline)]), 5000.0);
        let seqs: Vec<u64> = d.events_newest_first(None).iter().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![3, 2, 1], "newest first, no duplicates");
        let a: Vec<u64> = d.events_newest_first(Some((NodeKind::Hive, &id("a")))).iter().map(|e| e.seq).collect();
        assert_eq!(a, vec![3, 1]);
        d.apply(snapshot(1, vec![], vec![event(1, "c", EventKind::Joined)]), 10_000.0);
        assert_eq!(d.events.len(), 1, "a restarted queen's events replace the old log");
    }

    #[test]
    fn staleness_follows_the_observed_tick() {
        let mut d = Dashboard::default();
        assert_eq!(d.connection_text(Connection::Connecting, 0.0), "connecting…");
        d.apply(snapshot(1, vec![], vec![]), 0.0);
        d.apply(snapshot(2, vec![], vec![]), 1000.0);
        assert_eq!(d.tick_ms, 1000.0);
        assert!(!d.is_stale(3000.0));
        assert_eq!(d.connection_text(Connection::Live, 3000.0), "live · snapshot 2.0 s ago");
        assert!(!d.is_stale(4400.0), "within 2.5 ticks + 1 s");
        assert!(d.is_stale(5000.0));
        assert_eq!(d.connection_text(Connection::Live, 5000.0), "stale: last snapshot 4.0 s ago");
        assert_eq!(d.connection_text(Connection::Reconnecting, 8000.0), "reconnecting · last snapshot 7.0 s ago");
    }

    #[test]
    fn trends_are_bounded_and_forget_departed_hives() {
        let mut d = Dashboard::default();
        for i in 0..(HISTORY + 5) {
            d.apply(
                snapshot(
                    i as u64,
                    vec![hive("a", Liveness::Online, i as f32), hive("b", Liveness::Online, 1.0)],
                    vec![],
                ),
                i as f64,
            );
        }
        assert_eq!(d.trends[&id("a")].cpu.len(), HISTORY);
        assert_eq!(d.trends[&id("a")].cpu.back(), Some(&((HISTORY + 4) as f32)));
        assert_eq!(d.trends[&id("a")].memory.back(), Some(&25.0));
        d.apply(snapshot(99, vec![hive("a", Liveness::Online, 1.0)], vec![]), 99.0);
        assert!(!d.trends.contains_key(&id("b")));
        assert_eq!(d.online.len(), HISTORY);
    }

    #[test]
    fn hives_filter_and_sort() {
        let s = snapshot(
            1,
            vec![
                hive("alpha", Liveness::Online, 50.0),
                hive("beta", Liveness::Offline, 10.0),
                hive("gamma", Liveness::Online, 90.0),
            ],
            vec![],
        );
        let names = |v: Vec<HiveSummary>| v.into_iter().map(|h| h.id.to_string()).collect::<Vec<_>>();
        assert_eq!(names(visible_hives(&s, "", HiveColumn::Cpu, true)), ["gamma", "alpha", "beta"]);
        assert_eq!(names(visible_hives(&s, "", HiveColumn::State, false)), ["beta", "alpha", "gamma"], "trouble first");
        assert_eq!(names(visible_hives(&s, "OFFLINE", HiveColumn::Name, false)), ["beta"], "filters on state text");
        assert_eq!(names(visible_hives(&s, "mm", HiveColumn::Name, false)), ["gamma"]);
    }

    #[test]
    fn formatting() {
        assert_eq!(ago(2_500.0), "2.5 s ago");
        assert_eq!(ago(31_400.0), "31 s ago");
        assert_eq!(ago(125_000.0), "2 min ago");
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(3 * 1024 * 1024 * 1024), "3.0 GiB");
        let mut d = Dashboard::default();
        d.apply(snapshot(1, vec![hive("a", Liveness::Online, 1.0), hive("b", Liveness::Offline, 1.0)], vec![]), 0.0);
        assert_eq!(d.title(), "1/2 hives · 0/0 workers — Apiary");
    }

    #[test]
    fn sparklines_end_at_the_right_edge() {
        assert_eq!(sparkline([].into_iter(), 59.0, 10.0, 100.0), "");
        let pts = sparkline([0.0, 100.0].into_iter(), 59.0, 10.0, 100.0);
        assert_eq!(pts, "58.0,10.0 59.0,0.0");
        let clamped = sparkline([250.0].into_iter(), 59.0, 10.0, 100.0);
        assert_eq!(clamped, "59.0,0.0");
    }
}
