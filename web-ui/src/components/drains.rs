//! Hive drains in progress: replicas moved, moving, left, and what could not move.

use leptos::prelude::*;

use crate::model::Dashboard;

#[component]
pub fn DrainsPanel(dashboard: RwSignal<Dashboard>) -> impl IntoView {
    move || {
        let drains = dashboard.with(|d| d.latest.as_ref().map(|s| s.drains.clone()).unwrap_or_default());
        let running: Vec<_> = drains.into_iter().filter(|d| !d.done).collect();
        if running.is_empty() {
            return None;
        }
        let items = running
            .into_iter()
            .map(|d| {
                let replicas = d.replicas.iter().map(|(w, s)| format!("{w}: {s}")).collect::<Vec<_>>().join(" · ");
                view! {
                    <li data-hive=d.hive.to_string()>
                        <strong>{format!("drain of {}", d.hive)}</strong>
                        <span>{format!(" {} moved, {} moving, {} left", d.moved, d.moving, d.left)}</span>
                        <div class="detail-extra">{replicas}</div>
                        <div class="failure">{d.notes.join("; ")}</div>
                    </li>
                }
            })
            .collect::<Vec<_>>();
        Some(view! {
            <section id="drains">
                <h2>"Drains"</h2>
                <ul>{items}</ul>
            </section>
        })
    }
}
