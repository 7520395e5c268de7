//! The rules of one shutdown phase as pure functions of its report, what the hives
//! answered and the time: who takes part, which ACKs count, how the phase ends. The
//! sequencer (`super::run_phase`) applies them: it writes the state down after each.

use std::collections::BTreeMap;
use std::time::Duration;

use contract::{AckStatus, CommandAck, HiveProgress, NodeId, PhaseReport, PhaseStatus};
use time::OffsetDateTime;

/// Marks the phase running. A phase that was already running (a queen that restarted,
/// or a new leader) keeps the hives it began with; otherwise the hives online now take
/// part.
pub fn begin(report: &mut PhaseReport, online: &[NodeId], now: OffsetDateTime) {
    if report.status != PhaseStatus::Running || report.hives.is_empty() {
        report.hives = online
            .iter()
            .map(|h| (h.clone(), HiveProgress { status: AckStatus::Waiting, workers_left: 0, detail: String::new() }))
            .collect();
    }
    report.status = PhaseStatus::Running;
    report.started_at.get_or_insert(now);
}

/// A hive's answer as the phase sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub hive: NodeId,
    pub ok: bool,
    pub detail: String,
}

/// Takes in the ACKs that answer this phase's commands (`ids`: the command each hive
/// must ACK; an ACK of an older command does not count, one of a later command does, since
/// every command after the order carries it) and each hive's workers left.
/// Returns how many hives are still waited for, and the answers new since the last call.
pub fn take_acks(
    report: &mut PhaseReport,
    ids: &BTreeMap<NodeId, u64>,
    last_ack: impl Fn(&NodeId) -> Option<CommandAck>,
    workers_left: impl Fn(&NodeId) -> u32,
) -> (usize, Vec<Answer>) {
    let mut waiting = 0;
    let mut answers = Vec::new();
    for (hive, progress) in report.hives.iter_mut() {
        progress.workers_left = workers_left(hive);
        if progress.status != AckStatus::Waiting {
            continue;
        }
        match last_ack(hive) {
            Some(ack) if ids.get(hive).is_some_and(|id| ack.command_id >= *id) => {
                progress.status = if ack.ok { AckStatus::Acked } else { AckStatus::Failed };
                progress.detail = ack.detail.clone();
                answers.push(Answer { hive: hive.clone(), ok: ack.ok, detail: ack.detail });
            }
            _ => waiting += 1,
        }
    }
    (waiting, answers)
}

/// Why a hive failed a phase.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub hive: NodeId,
    /// No answer at all (rather than an answer saying it could not).
    pub timed_out: bool,
    pub text: String,
}

/// Ends the phase: hives still waited for timed out; done when nobody failed, forced on
/// when someone did and `force` is set, failed otherwise.
pub fn conclude(report: &mut PhaseReport, force: bool, timeout: Duration, now: OffsetDateTime) -> Vec<Failure> {
    let mut failed = Vec::new();
    for (hive, progress) in report.hives.iter_mut() {
        match progress.status {
            AckStatus::Waiting => {
                progress.status = AckStatus::TimedOut;
                let text = format!("{hive} did not ACK within {} s", timeout.as_secs());
                failed.push(Failure { hive: hive.clone(), timed_out: true, text });
            }
            AckStatus::Failed => {
                let text = format!("{hive} failed: {}", progress.detail);
                failed.push(Failure { hive: hive.clone(), timed_out: false, text });
            }
            _ => {}
        }
    }
    report.ended_at = Some(now);
    report.status = match (failed.is_empty(), force) {
        (true, _) => PhaseStatus::Done,
        (false, true) => PhaseStatus::Forced,
        (false, false) => PhaseStatus::Failed,
    };
    failed
}

/// INFRA cannot be ACKed (the hives exit): a hive that said goodbye counts as done, one
/// still heartbeating as timed out. The phase itself is done either way: the queen leaves.
pub fn conclude_infra(report: &mut PhaseReport, still_up: impl Fn(&NodeId) -> bool, now: OffsetDateTime) {
    for (hive, progress) in report.hives.iter_mut() {
        (progress.status, progress.detail) = if still_up(hive) {
            (AckStatus::TimedOut, "still heartbeating".into())
        } else {
            (AckStatus::Acked, "exited".into())
        };
    }
    report.status = PhaseStatus::Done;
    report.ended_at = Some(now);
}

#[cfg(test)]
mod tests {
    use contract::Phase;

    use super::*;

    fn id(s: &str) -> NodeId {
        NodeId::sanitized(s)
    }

    fn at(s: i64) -> OffsetDateTime {
        OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(s)
    }

    fn pending(phase: Phase) -> PhaseReport {
        PhaseReport { phase, status: PhaseStatus::Pending, started_at: None, ended_at: None, hives: BTreeMap::new() }
    }

    fn ack(command_id: u64, ok: bool) -> CommandAck {
        CommandAck { command_id, ok, detail: if ok { "3 workers stopped".into() } else { "hook failed".into() } }
    }

    #[test]
    fn a_phase_begins_with_the_hives_online_and_a_resumed_one_keeps_them() {
        let mut r = pending(Phase::Drain);
        begin(&mut r, &[id("a"), id("b")], at(1));
        assert_eq!(r.status, PhaseStatus::Running);
        assert_eq!(r.hives.keys().cloned().collect::<Vec<_>>(), [id("a"), id("b")]);
        // The queen restarted midway; `b` has not come back yet and `c` is new.
        begin(&mut r, &[id("a"), id("c")], at(9));
        assert_eq!(r.hives.keys().cloned().collect::<Vec<_>>(), [id("a"), id("b")], "the same hives as it began with");
        assert_eq!(r.started_at, Some(at(1)));
    }

    #[test]
    fn only_an_ack_of_this_phases_command_counts() {
        let mut r = pending(Phase::Drain);
        begin(&mut r, &[id("a"), id("b")], at(1));
        let ids = BTreeMap::from([(id("a"), 10), (id("b"), 11)]);
        let acks = BTreeMap::from([(id("a"), ack(9, true)), (id("b"), ack(11, true))]);
        let (waiting, answers) = take_acks(&mut r, &ids, |h| acks.get(h).cloned(), |_| 2);
        assert_eq!(waiting, 1, "a's ACK is of an older command");
        assert_eq!(answers, [Answer { hive: id("b"), ok: true, detail: "3 workers stopped".into() }]);
        assert_eq!(r.hives[&id("a")].workers_left, 2);
        let acks = BTreeMap::from([(id("a"), ack(10, false))]);
        let (waiting, answers) = take_acks(&mut r, &ids, |h| acks.get(h).cloned(), |_| 0);
        assert_eq!(waiting, 0);
        assert_eq!(answers.len(), 1, "b is not announced twice");
        assert_eq!(r.hives[&id("a")].status, AckStatus::Failed);
    }

    #[test]
    fn a_phase_ends_done_forced_or_failed() {
        let started = |statuses: &[(&str, AckStatus)]| {
            let mut r = pending(Phase::Storage);
            for (h, s) in statuses {
                r.hives.insert(id(h), HiveProgress { status: *s, workers_left: 0, detail: "disk busy".into() });
            }
            r.status = PhaseStatus::Running;
            r
        };
        let timeout = Duration::from_secs(45);
        let mut all_in = started(&[("a", AckStatus::Acked)]);
        assert!(conclude(&mut all_in, false, timeout, at(5)).is_empty());
        assert_eq!((all_in.status, all_in.ended_at), (PhaseStatus::Done, Some(at(5))));

        let mut silent = started(&[("a", AckStatus::Acked), ("b", AckStatus::Waiting), ("c", AckStatus::Failed)]);
        let failures = conclude(&mut silent, false, timeout, at(6));
        assert_eq!(silent.status, PhaseStatus::Failed);
        assert_eq!(silent.hives[&id("b")].status, AckStatus::TimedOut);
        assert_eq!(
            failures,
            [
                Failure { hive: id("b"), timed_out: true, text: "b did not ACK within 45 s".into() },
                Failure { hive: id("c"), timed_out: false, text: "c failed: disk busy".into() },
            ]
        );
        let mut forced = started(&[("b", AckStatus::Waiting)]);
        assert_eq!(conclude(&mut forced, true, timeout, at(7)).len(), 1);
        assert_eq!(forced.status, PhaseStatus::Forced);
    }

    #[test]
    fn infra_counts_goodbyes_as_acks() {
        let mut r = pending(Phase::Infra);
        begin(&mut r, &[id("a"), id("b")], at(1));
        conclude_infra(&mut r, |h| h == &id("b"), at(3));
        assert_eq!(r.status, PhaseStatus::Done);
        assert_eq!(r.hives[&id("a")].status, AckStatus::Acked);
        assert_eq!(r.hives[&id("b")].status, AckStatus::TimedOut);
    }
}
