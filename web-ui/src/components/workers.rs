//! The workers table, filterable by hive.

use contract::{NodeId, NodeKind};
use leptos::prelude::*;

use super::widgets::sort_header;
use super::widgets::{MAX_ROWS, more_rows};
use crate::app::Selection;
use crate::model::{Dashboard, WorkerColumn, ago, visible_workers, worker_state};

#[component]
pub fn WorkerTable(
    dashboard: RwSignal<Dashboard>,
    query: RwSignal<String>,
    now: ReadSignal<f64>,
    selected: RwSignal<Selection>,
) -> impl IntoView {
    let sort = RwSignal::new((WorkerColumn::Hive, false));
    let hive_filter = RwSignal::new(String::new());
    let hive_options = move || {
        dashboard.with(|d| {
            let mut hives: Vec<String> =
                d.latest.iter().flat_map(|s| s.workers.iter().map(|w| w.hive_id.to_string())).collect();
            hives.sort();
            hives.dedup();
            hives.into_iter().map(|h| view! { <option value=h.clone()>{h.clone()}</option> }).collect::<Vec<_>>()
        })
    };
    let rows = move || {
        let q = query.get();
        let hive = NodeId::new(hive_filter.get()).ok();
        let (column, desc) = sort.get();
        dashboard.with(|d| {
            let Some(s) = &d.latest else { return Vec::new() };
            let since = d.since_last_ms(now.get());
            {
                let all = visible_workers(s, &q, hive.as_ref(), column, desc);
                let hidden = all.len().saturating_sub(MAX_ROWS);
                let mut rows: Vec<AnyView> = all
                    .into_iter()
                    .take(MAX_ROWS)
                    .map(|w| {
                        let (label, class) = worker_state(&w);
                        let id = w.id.clone();
                        let select = move |_| selected.set(Some((NodeKind::Worker, id.clone())));
                        view! {
                            <tr class="worker" data-id=w.id.to_string() data-state=label>
                                <td class="name"><button class="link" on:click=select>{w.id.to_string()}</button></td>
                                <td>{w.hive_id.to_string()}</td>
                                <td><span class=format!("state {class}")>{label}</span></td>
                                <td class="num">{format!("{}/{}", w.in_flight, w.max_concurrent)}</td>
                                <td>{w.kind.clone()}</td>
                                <td class="num seen">{ago(w.last_seen_ago_ms as f64 + since)}</td>
                            </tr>
                        }
                        .into_any()
                    })
                    .collect();
                if hidden > 0 {
                    rows.push(more_rows(hidden, 6));
                }
                rows
            }
        })
    };
    view! {
        <section>
            <h2>
                "Workers"
                <select id="hive-filter" on:change=move |ev| hive_filter.set(event_target_value(&ev))>
                    <option value="">"all hives"</option>
                    {hive_options}
                </select>
            </h2>
            <table id="workers">
                <thead>
                    <tr>
                        {sort_header("worker", WorkerColumn::Name, sort)}
                        {sort_header("hive", WorkerColumn::Hive, sort)}
                        {sort_header("state", WorkerColumn::State, sort)}
                        {sort_header("in flight", WorkerColumn::InFlight, sort)}
                        {sort_header("kind", WorkerColumn::Kind, sort)}
                        {sort_header("last seen", WorkerColumn::LastSeen, sort)}
                    </tr>
                </thead>
                <tbody>{rows}</tbody>
            </table>
        </section>
    }
}
