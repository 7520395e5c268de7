//! The event log: every liveness change, newest first, with its reason.

use leptos::prelude::*;

use super::widgets::clock;
use crate::model::Dashboard;

#[component]
pub fn EventLog(dashboard: RwSignal<Dashboard>) -> impl IntoView {
    let rows = move || {
        dashboard.with(|d| {
            d.events_newest_first(None)
                .into_iter()
                .take(200)
                .map(|e| {
                    let (kind, node) = (e.kind.as_str(), e.node.as_str());
                    view! {
                        <li class=format!("event {kind}") data-id=e.id.to_string() data-kind=kind>
                            <span class="time">{clock(e.at)}</span>
                            <span class="what">{format!("{node} {} {kind}", e.id)}</span>
                            <span class="reason">{e.reason.clone()}</span>
                        </li>
                    }
                })
                .collect::<Vec<_>>()
        })
    };
    view! {
        <section>
            <h2>"Events"</h2>
            <ul id="events">{rows}</ul>
        </section>
    }
}
