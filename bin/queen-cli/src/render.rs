//! How the remote commands print: one table (or block of text) per answer. `--output json`
//! skips all of this and prints the answer as JSON.

use std::sync::OnceLock;

use contract::{DeploymentStatus, HiveSummary, NodeId, ShutdownPlan, ShutdownState, Snapshot, WorkerSummary};
use time::OffsetDateTime;
use view_model::ago;

/// This machine's offset from UTC. Read once by `main` before any thread starts (the
/// `time` crate refuses to read it from a multi-threaded process, where another thread
/// could change the environment meanwhile); UTC when it could not be read.
static LOCAL_OFFSET: OnceLock<time::UtcOffset> = OnceLock::new();

pub fn set_local_offset(offset: time::UtcOffset) {
    let _ = LOCAL_OFFSET.set(offset);
}

/// A time for people: local, to the second (`2026-12-01 19:03:56`).
pub fn local_time(t: OffsetDateTime) -> String {
    let t = t.to_offset(LOCAL_OFFSET.get().copied().unwrap_or(time::UtcOffset::UTC));
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    t.format(&format).unwrap_or_else(|_| rfc3339(t))
}

/// A past time for people: local time and how long ago (`2026-12-01 19:03:56, 3 min ago`).
pub fn when(t: OffsetDateTime) -> String {
    let ms = (OffsetDateTime::now_utc() - t).whole_milliseconds() as f64;
    format!("{}, {}", local_time(t), ago(ms))
}

pub fn render_deployments(deployments: &[DeploymentStatus]) -> String {
    let mut out = format!("{:<20} {:>8} {:>8} {:>8}  {}\n", "DEPLOYMENT", "REPLICAS", "RUNNING", "VERSION", "COMMAND");
    for d in deployments {
        out.push_str(&format!(
            "{:<20} {:>8} {:>8} {:>8}  {}\n",
            d.spec.name, d.spec.replicas, d.running, d.version, d.spec.command
        ));
        if let Some(r) = d.rollout.as_ref().filter(|r| r.state != contract::RolloutState::Done) {
            out.push_str(&format!("  {}", render_rollout(d.spec.name.as_str(), d.version, Some(r))));
        }
        if let Some(why) = &d.failed {
            out.push_str(&format!("  FAILED: {why}\n"));
        }
        for a in &d.assignments {
            let hive = a.hive.as_ref().map(NodeId::to_string).unwrap_or_else(|| "-".into());
            out.push_str(&format!("  {:<24} {:<16} {:<9} since {}", a.worker, hive, a.state.as_str(), when(a.since)));
            // What its hive says when the process is not running or was restarted: why,
            // and how often; and a probe failing now.
            match a.process {
                Some(p) if p != contract::ProcessState::Running || a.restarts > 0 => {
                    out.push_str(&format!("  {} ({} restarts): {}", p.as_str(), a.restarts, a.last_exit));
                }
                _ => {}
            }
            if a.ready == Some(false) {
                out.push_str("  not ready");
            }
            if !a.probe.is_empty() {
                out.push_str(&format!("  probe: {}", a.probe));
            }
            out.push('\n');
        }
    }
    out
}

pub fn render_leader(l: &contract::LeaderInfo) -> String {
    let leader = match &l.leader {
        Some(q) => {
            format!("leader:  {} at {} (term {}){}", q.id, q.url, l.term, if l.is_self { ", this queen" } else { "" })
        }
        None => "leader:  none yet (an election is under way)".into(),
    };
    match &l.answered_by {
        Some(me) if !l.is_self => format!("{leader}\nasked:   {} at {}, a follower", me.id, me.url),
        _ => leader,
    }
}

pub fn render_status(s: &Snapshot) -> String {
    format!(
        "snapshot {} of {}\nhives:   {} online, {} available, {} known\nworkers: {} online, {} available, {} known\njobs in flight: {}\n",
        s.seq,
        when(s.timestamp),
        s.hives_online,
        s.hives_available,
        s.hives_total,
        s.workers_online,
        s.workers_available,
        s.workers_total,
        s.jobs_in_flight
    )
}

pub fn render_nodes(hives: &[HiveSummary], workers: &[WorkerSummary]) -> String {
    let mut out = format!(
        "{:<24} {:<9} {:<14} {:>6} {:>7} {:>8} {:>12}\n",
        "HIVE", "LIVENESS", "STATUS", "CPU%", "MEM%", "WORKERS", "SEEN"
    );
    for h in hives {
        let mem = h.resources.memory_percent();
        out.push_str(&format!(
            "{:<24} {:<9} {:<14} {:>6.1} {:>7.1} {:>8} {:>12}\n",
            h.id,
            h.liveness.as_str(),
            h.status.as_str(),
            h.resources.cpu_percent,
            mem,
            format!("{}/{}", h.capacity.running_workers, h.capacity.max_workers),
            ago(h.last_seen_ago_ms as f64)
        ));
    }
    out.push('\n');
    out.push_str(&format!(
        "{:<24} {:<16} {:<9} {:<9} {:>9} {:>12}\n",
        "WORKER", "HIVE", "LIVENESS", "STATUS", "IN-FLIGHT", "SEEN"
    ));
    for w in workers {
        out.push_str(&format!(
            "{:<24} {:<16} {:<9} {:<9} {:>9} {:>12}\n",
            w.id,
            w.hive_id,
            w.liveness.as_str(),
            w.status.as_str(),
            format!("{}/{}", w.in_flight, w.max_concurrent),
            ago(w.last_seen_ago_ms as f64)
        ));
    }
    out
}

pub fn render_plan(plan: &ShutdownPlan) -> String {
    let mut out = format!(
        "plan (dry run, nothing changed): {}\nworkers get {} ms between SIGTERM and SIGKILL; each phase waits {} ms for ACKs\n",
        plan.phases.iter().map(|p| p.name()).collect::<Vec<_>>().join(" → "),
        plan.drain_deadline_ms,
        plan.phase_timeout_ms
    );
    for (hive, workers) in &plan.hives {
        let names: Vec<String> = workers.iter().map(NodeId::to_string).collect();
        out.push_str(&format!("  {hive}: {} workers {}\n", workers.len(), names.join(", ")));
    }
    out
}

pub fn render_shutdown(s: &ShutdownState) -> String {
    let mut out = format!("cluster shutdown: {}{}\n", s.status, if s.force { " (force)" } else { "" });
    for p in &s.phases {
        let took = match (p.started_at, p.ended_at) {
            (Some(a), Some(b)) => format!("{} ms", (b - a).whole_milliseconds()),
            (Some(_), None) => "running".into(),
            _ => "-".into(),
        };
        out.push_str(&format!("  {:<8} {:<8} {:>10}\n", p.phase.name(), p.status.as_str(), took));
        for (hive, h) in &p.hives {
            out.push_str(&format!("      {hive:<20} {:<9} {}\n", h.status.as_str(), h.detail));
        }
    }
    if !s.failure.is_empty() {
        out.push_str(&format!("stopped: {}\n", s.failure));
    }
    out
}

pub fn render_stats(s: &contract::ClusterStats) -> String {
    let by = |m: &std::collections::BTreeMap<String, usize>| {
        m.iter().map(|(k, v)| format!("{v} {k}")).collect::<Vec<_>>().join(", ")
    };
    format!(
        "hives:    {} ({} eligible, {} ineligible)\nworkers:  {}\ncapacity: {} slots, {} assigned ({:.0} %)\njobs routed: {} ({:.1}/s)\nstrategy: {}\nleader:   {}\n",
        by(&s.hives_by_liveness),
        s.hives_eligible,
        s.hives_ineligible,
        by(&s.workers_by_status),
        s.capacity,
        s.assigned,
        s.utilization_percent,
        s.jobs_routed_total,
        s.jobs_routed_per_second,
        s.strategy.as_str(),
        s.leader
    )
}

pub fn render_assignments(assignments: &[contract::Assignment]) -> String {
    let mut out =
        format!("{:<24} {:<16} {:<9} {:>5} {:>8}  {}\n", "WORKER", "HIVE", "STATE", "MOVES", "RESTARTS", "SINCE");
    for a in assignments {
        let hive = a.hive.as_ref().map(NodeId::to_string).unwrap_or_else(|| "-".into());
        let state = a.state.as_str();
        out.push_str(&format!(
            "{:<24} {:<16} {:<9} {:>5} {:>8}  {}\n",
            a.worker,
            hive,
            state,
            a.moves,
            a.restarts,
            when(a.since)
        ));
        if let Some(r) = &a.retiring {
            out.push_str(&format!("  retiring {} on {}\n", r.worker, r.hive));
        }
    }
    out
}

/// A time as RFC 3339 to the second, in UTC: what a script and an operator both read.
pub fn rfc3339(t: time::OffsetDateTime) -> String {
    let t = t.replace_nanosecond(0).unwrap_or(t);
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_else(|_| t.to_string())
}

pub fn render_audit(log: &contract::AuditLog) -> String {
    let mut out = format!("{:>6}  {:<19}  {:<20} {:<6} {:<40} {}\n", "SEQ", "AT", "WHO", "METHOD", "PATH", "RESULT");
    for e in &log.entries {
        out.push_str(&format!(
            "{:>6}  {:<19}  {:<20} {:<6} {:<40} {} {}\n",
            e.seq,
            local_time(e.at),
            e.who,
            e.method,
            e.path,
            e.status,
            e.outcome
        ));
    }
    out
}

pub fn render_rollout(name: &str, version: u64, r: Option<&contract::RolloutStatus>) -> String {
    let Some(r) = r else { return format!("{name}: version {version}, never rolled out\n") };
    let state = r.state.as_str();
    let mut out = format!(
        "{name}: version {} → {} {state}, {}/{} replicas updated, started {}\n",
        r.from_version,
        r.to_version,
        r.updated,
        r.replicas,
        when(r.started_at)
    );
    if !r.reason.is_empty() {
        out.push_str(&format!("  why: {}\n", r.reason));
    }
    out
}

pub fn render_history(h: &contract::DeploymentHistory) -> String {
    let mut out = format!("{:>8}  {:<7}  {}\n", "VERSION", "", "COMMAND");
    for v in &h.versions {
        let args = v.spec.args.join(" ");
        let env: Vec<String> = v.spec.env.iter().map(|(k, val)| format!("{k}={val}")).collect();
        out.push_str(&format!(
            "{:>8}  {:<7}  {} {}{}\n",
            v.version,
            if v.current { "current" } else { "" },
            v.spec.command,
            args,
            if env.is_empty() { String::new() } else { format!("  [{}]", env.join(" ")) }
        ));
    }
    out
}

pub fn render_done(d: &contract::cli::Done) -> String {
    format!("{}: {}\n", d.name, d.outcome)
}

pub fn render_drain(d: &contract::DrainStatus) -> String {
    let mut out = format!(
        "drain of {}: {} moved, {} left{}{}\n",
        d.hive,
        d.moved,
        d.left,
        if d.cancelled { ", cancelled" } else { "" },
        if d.done { ", done" } else { "" }
    );
    for n in &d.notes {
        out.push_str(&format!("  {n}\n"));
    }
    out
}
