//! The hives table: liveness in colour and words, resource bars with sparklines, load,
//! workers, and a "last seen" that ticks between snapshots.

use contract::NodeKind;
use leptos::prelude::*;

use super::widgets::{MAX_ROWS, more_rows};
use super::widgets::{bar, sort_header, spark};
use crate::app::Selection;
use crate::model::{Dashboard, HiveColumn, ago, hive_state, human_bytes, visible_hives};

#[component]
pub fn HiveTable(
    dashboard: RwSignal<Dashboard>,
    query: RwSignal<String>,
    now: ReadSignal<f64>,
    selected: RwSignal<Selection>,
) -> impl IntoView {
    let sort = RwSignal::new((HiveColumn::Name, false));
    let rows = move || {
        let q = query.get();
        let (column, desc) = sort.get();
        dashboard.with(|d| {
            let Some(s) = &d.latest else { return Vec::new() };
            let since = d.since_last_ms(now.get());
            {
            let all = visible_hives(s, &q, column, desc);
            let hidden = all.len().saturating_sub(MAX_ROWS);
            let mut rows: Vec<AnyView> = all
                .into_iter()
                .take(MAX_ROWS)
                .map(|h| {
                    let (label, class) = hive_state(&h);
                    let trend = d.trends.get(&h.id).cloned().unwrap_or_default();
                    let r = h.resources;
                    let (mem, disk) = (r.memory_percent(), r.disk_percent());
                    let id = h.id.clone();
                    let select = move |_| selected.set(Some((NodeKind::Hive, id.clone())));
                    view! {
                        <tr class="hive" data-id=h.id.to_string() data-state=label>
                            <td class="name"><button class="link" on:click=select>{h.id.to_string()}</button></td>
                            <td><span class=format!("state {class}")>{label}</span></td>
                            <td class="res">{bar(r.cpu_percent, format!("{:.1}% cpu", r.cpu_percent))}{spark(trend.cpu.into_iter().collect(), 100.0, "cpu")}</td>
                            <td class="res">
                                {bar(mem, format!("{} of {}", human_bytes(r.memory_used_bytes), human_bytes(r.memory_total_bytes)))}
                                {spark(trend.memory.into_iter().collect(), 100.0, "mem")}
                            </td>
                            <td class="res">{bar(disk, format!("{} of {}", human_bytes(r.disk_used_bytes), human_bytes(r.disk_total_bytes)))}</td>
                            <td class="num">{format!("{:.2}", r.load_average.one)}</td>
                            <td class="num">{format!("{}/{}", h.capacity.running_workers, h.capacity.max_workers)}</td>
                            <td>{h.version.clone()}</td>
                            <td class="num seen">{ago(h.last_seen_ago_ms as f64 + since)}</td>
                        </tr>
                    }
                    .into_any()
                })
                .collect();
            if hidden > 0 {
                rows.push(more_rows(hidden, 9));
            }
            rows
            }
        })
    };
    view! {
        <section>
            <h2>"Hives"</h2>
            <table id="hives">
                <thead>
                    <tr>
                        {sort_header("hive", HiveColumn::Name, sort)}
                        {sort_header("state", HiveColumn::State, sort)}
                        {sort_header("cpu", HiveColumn::Cpu, sort)}
                        {sort_header("memory", HiveColumn::Memory, sort)}
                        {sort_header("disk", HiveColumn::Disk, sort)}
                        {sort_header("load", HiveColumn::Load, sort)}
                        {sort_header("workers", HiveColumn::Workers, sort)}
                        <th>"version"</th>
                        {sort_header("last seen", HiveColumn::LastSeen, sort)}
                    </tr>
                </thead>
                <tbody>{rows}</tbody>
            </table>
        </section>
    }
}
