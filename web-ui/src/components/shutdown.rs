//! A running cluster shutdown: the phases as a stepper, each hive's ACK and workers left.

use contract::{AckStatus, PhaseStatus, ShutdownStatus};
use leptos::prelude::*;

use crate::model::Dashboard;

fn phase_class(s: PhaseStatus) -> &'static str {
    match s {
        PhaseStatus::Pending => "step pending",
        PhaseStatus::Running => "step running",
        PhaseStatus::Done => "step done",
        PhaseStatus::Forced => "step forced",
        PhaseStatus::Failed => "step failed",
    }
}

fn ack_text(s: AckStatus) -> &'static str {
    match s {
        AckStatus::Waiting => "waiting",
        AckStatus::Acked => "ACK",
        AckStatus::Failed => "failed",
        AckStatus::TimedOut => "no answer",
    }
}

#[component]
pub fn ShutdownPanel(dashboard: RwSignal<Dashboard>) -> impl IntoView {
    move || {
        let state = dashboard.with(|d| d.latest.as_ref().and_then(|s| s.shutdown.clone()))?;
        let title = match state.status {
            ShutdownStatus::Running => "Cluster shutdown running",
            ShutdownStatus::Completed => "Cluster shutdown completed",
            ShutdownStatus::Failed => "Cluster shutdown stopped",
        };
        let current = state.current().cloned();
        let steps = state
            .phases
            .iter()
            .map(|p| view! { <li class=phase_class(p.status) data-phase=p.phase.name()>{p.phase.name()}</li> })
            .collect::<Vec<_>>();
        let hives = current
            .map(|p| {
                p.hives
                    .into_iter()
                    .map(|(hive, h)| {
                        view! {
                            <tr>
                                <td>{hive.to_string()}</td>
                                <td>{ack_text(h.status)}</td>
                                <td class="num">{format!("{} workers left", h.workers_left)}</td>
                                <td>{h.detail}</td>
                            </tr>
                        }
                    })
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        Some(view! {
            <section id="shutdown">
                <h2>{title}</h2>
                <ol class="stepper">{steps}</ol>
                <table><tbody>{hives}</tbody></table>
                <div class="failure">{state.failure}</div>
            </section>
        })
    }
}
