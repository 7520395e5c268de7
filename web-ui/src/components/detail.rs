//! One node in detail, with its liveness history from the queen: why is it down?

use contract::{NodeEvent, NodeKind};
use leptos::prelude::*;

use super::actions::{Admin, HiveActions};
use super::widgets::clock;
use crate::app::Selection;
use crate::model::{Dashboard, ago, hive_state, worker_state};

async fn fetch_history(kind: NodeKind, id: &str) -> Result<Vec<NodeEvent>, String> {
    let path = match kind {
        NodeKind::Hive => "hives",
        NodeKind::Worker => "workers",
        NodeKind::Queen => return Err("the queen has no node history".into()),
    };
    crate::hooks::fetch_json(&format!("/v1/{path}/{id}/events"))
        .await
        .map_err(|(status, message)| format!("queen answered {status}: {message}"))
}

#[component]
pub fn NodeDetail(
    dashboard: RwSignal<Dashboard>,
    selected: RwSignal<Selection>,
    now: ReadSignal<f64>,
    admin: Admin,
) -> impl IntoView {
    let history = RwSignal::new(Result::<Vec<NodeEvent>, String>::Ok(Vec::new()));
    // Refetch when the selection changes and with every snapshot while it is open.
    Effect::new(move |_| {
        let seq = dashboard.with(|d| d.latest.as_ref().map(|s| s.seq));
        let Some((kind, id)) = selected.get() else { return };
        let _ = seq;
        leptos::task::spawn_local(async move {
            history.set(fetch_history(kind, id.as_str()).await);
        });
    });
    let header = move || {
        let (kind, id) = selected.get()?;
        let since = dashboard.with(|d| d.since_last_ms(now.get()));
        dashboard.with(|d| {
            let s = d.latest.as_ref()?;
            let (label, class, seen, extra) = match kind {
                NodeKind::Hive => {
                    let h = s.hives.iter().find(|h| h.id == id)?;
                    let (l, c) = hive_state(h);
                    (l, c, h.last_seen_ago_ms, format!("{} · epoch {} · {}", h.hostname, h.epoch, h.address))
                }
                NodeKind::Worker => {
                    let w = s.workers.iter().find(|w| w.id == id)?;
                    let (l, c) = worker_state(w);
                    (l, c, w.last_seen_ago_ms, format!("on {} · epoch {} · {}", w.hive_id, w.epoch, w.address))
                }
                NodeKind::Queen => return None,
            };
            Some(view! {
                <div class="detail-head">
                    <strong>{id.to_string()}</strong>
                    <span class=format!("state {class}")>{label}</span>
                    <span class="seen">{format!("last seen {}", ago(seen as f64 + since))}</span>
                </div>
                <div class="detail-extra">{extra}</div>
            })
        })
    };
    let rows = move || match history.get() {
        Ok(events) => events
            .into_iter()
            .rev()
            .map(|e| {
                let kind = e.kind.as_str();
                let class = format!("event {kind}");
                view! {
                    <li class=class>
                        <span class="time">{clock(e.at)}</span>
                        <span class="what">{kind}</span>
                        <span class="reason">{e.reason}</span>
                    </li>
                }
            })
            .collect::<Vec<_>>()
            .into_any(),
        Err(e) => view! { <li class="error">{e}</li> }.into_any(),
    };
    view! {
        <Show when=move || selected.with(Option::is_some)>
            <section id="detail">
                <h2>
                    "Node"
                    <button class="link close" on:click=move |_| selected.set(None)>"close"</button>
                </h2>
                {header}
                {move || match selected.get() {
                    Some((NodeKind::Hive, hive)) => Some(view! { <HiveActions dashboard admin hive /> }),
                    _ => None,
                }}
                <h3>"Liveness history"</h3>
                <ul class="history">{rows}</ul>
            </section>
        </Show>
    }
}
