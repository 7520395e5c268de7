//! Whether what the page shows is live: a stale page must never look live.

use leptos::prelude::*;

use crate::model::{Connection, Dashboard};

#[component]
pub fn ConnectionBadge(
    dashboard: RwSignal<Dashboard>,
    connection: RwSignal<Connection>,
    now: ReadSignal<f64>,
) -> impl IntoView {
    let state = move || {
        let c = connection.get();
        let stale = dashboard.with(|d| d.is_stale(now.get()));
        match c {
            Connection::Live if stale => "stale",
            Connection::Live => "live",
            Connection::Connecting => "connecting",
            Connection::Reconnecting => "reconnecting",
        }
    };
    let text = move || dashboard.with(|d| d.connection_text(connection.get(), now.get()));
    view! {
        <div id="connection" class=move || format!("badge {}", state()) data-state=state>
            <span class="dot"></span>
            <span>{text}</span>
        </div>
    }
}
