//! Cluster totals at a glance, with the online counts over time.

use leptos::prelude::*;

use super::widgets::spark;
use crate::model::Dashboard;

#[component]
pub fn Summary(dashboard: RwSignal<Dashboard>) -> impl IntoView {
    let card = move |label: &'static str,
                     id: &'static str,
                     value: Box<dyn Fn() -> String + Send + Sync>,
                     detail: Box<dyn Fn() -> String + Send + Sync>| {
        view! {
            <div class="card" id=id>
                <div class="label">{label}</div>
                <div class="value">{value}</div>
                <div class="detail">{detail}</div>
            </div>
        }
    };
    let latest = move |f: fn(&contract::Snapshot) -> String| {
        move || dashboard.with(|d| d.latest.as_ref().map(f).unwrap_or_else(|| "–".into()))
    };
    view! {
        <section class="summary">
            {card(
                "hives online",
                "hives-online",
                Box::new(latest(|s| format!("{} / {}", s.hives_online, s.hives_total))),
                Box::new(latest(|s| format!("{} available", s.hives_available))),
            )}
            {card(
                "workers online",
                "workers-online",
                Box::new(latest(|s| format!("{} / {}", s.workers_online, s.workers_total))),
                Box::new(latest(|s| format!("{} available", s.workers_available))),
            )}
            {card(
                "jobs in flight",
                "jobs-in-flight",
                Box::new(latest(|s| s.jobs_in_flight.to_string())),
                Box::new(latest(|s| format!("snapshot #{}", s.seq))),
            )}
            {card(
                "replicas running",
                "replicas",
                Box::new(latest(|s| {
                    let (running, wanted) = s.deployments.iter().fold((0, 0), |(r, w), d| (r + d.running, w + d.replicas));
                    format!("{running} / {wanted}")
                })),
                Box::new(latest(|s| {
                    if s.placement_brake {
                        "placement brake on: most hives look dead".into()
                    } else {
                        format!("{} deployments", s.deployments.len())
                    }
                })),
            )}
            <div class="card trend">
                <div class="label">"online over time"</div>
                {move || dashboard.with(|d| {
                    let hives: Vec<f32> = d.online.iter().map(|(h, _)| *h as f32).collect();
                    let workers: Vec<f32> = d.online.iter().map(|(_, w)| *w as f32).collect();
                    let max = workers.iter().chain(hives.iter()).copied().fold(1.0, f32::max);
                    view! {
                        <div class="sparks">
                            {spark(hives, max, "hives")}
                            {spark(workers, max, "workers")}
                        </div>
                    }
                })}
                <div class="detail">"hives · workers"</div>
            </div>
        </section>
    }
}
