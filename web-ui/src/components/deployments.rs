//! The deployments: how many replicas run of how many wanted, where (by hive), the version
//! and its rollout, how often they restarted and why one failed; with the admin token, a
//! replica count to set and a rolling restart.

use std::collections::BTreeMap;

use contract::{DeploymentStatus, NodeId, ProcessState};
use leptos::prelude::*;
use serde_json::json;

use super::actions::Admin;
use crate::model::Dashboard;

/// "hive-0 ×2, hive-1 ×1, unplaced ×1"
fn by_hive(d: &DeploymentStatus) -> String {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for a in &d.assignments {
        let hive = a.hive.as_ref().map(NodeId::to_string).unwrap_or_else(|| "unplaced".into());
        *counts.entry(hive).or_default() += 1;
    }
    counts.into_iter().map(|(hive, n)| format!("{hive} ×{n}")).collect::<Vec<_>>().join(", ")
}

/// What the hives say of the replicas that are not running, not ready, or failing a probe.
fn trouble(d: &DeploymentStatus) -> String {
    let mut out: Vec<String> = d
        .assignments
        .iter()
        .filter_map(|a| {
            if a.process.is_some_and(|p| p != ProcessState::Running) {
                return Some(format!(
                    "{} {}: {}",
                    a.worker,
                    a.process.map(ProcessState::as_str).unwrap_or(""),
                    a.last_exit
                ));
            }
            let unready = if a.ready == Some(false) { " not ready" } else { "" };
            (!unready.is_empty() || !a.probe.is_empty()).then(|| format!("{}{unready}: {}", a.worker, a.probe))
        })
        .collect();
    if let Some(why) = &d.failed {
        out.insert(0, format!("failed: {why}"));
    }
    out.join("; ")
}

#[component]
fn Row(deployment: DeploymentStatus, admin: Admin, logs: super::LogView) -> impl IntoView {
    let name = deployment.spec.name.to_string();
    let restarts: u32 = deployment.assignments.iter().map(|a| a.restarts).sum();
    let wanted = deployment.spec.replicas;
    let input: NodeRef<leptos::html::Input> = NodeRef::new();
    let scale = {
        let name = name.clone();
        move |_| {
            let Some(replicas) = input.get().and_then(|i| i.value().trim().parse::<u32>().ok()) else {
                admin.result.set(Some(super::actions::Outcome { ok: false, text: "replicas: a whole number".into() }));
                return;
            };
            let path = format!("{}/{name}", contract::paths::DEPLOYMENTS);
            admin.act("PATCH", path, Some(json!({ "replicas": replicas })), |d: DeploymentStatus| {
                format!("{} scaled to {} replicas", d.spec.name, d.spec.replicas)
            })
        }
    };
    let restart = {
        let name = name.clone();
        move |_| {
            let path = format!("{}/{name}/restart", contract::paths::DEPLOYMENTS);
            admin.act("POST", path, Some(json!({})), |d: DeploymentStatus| {
                format!("{} restarting, one replica at a time (version {})", d.spec.name, d.version)
            })
        }
    };
    let replicas: Vec<String> =
        deployment.assignments.iter().filter(|a| a.hive.is_some()).map(|a| a.worker.to_string()).collect();
    let controls = move || {
        admin.token.get()?;
        let (scale, restart) = (scale.clone(), restart.clone());
        let log_buttons = replicas
            .iter()
            .map(|r| {
                let replica = r.clone();
                view! { <button class="logs" data-replica=r.clone() on:click=move |_| logs.replica.set(Some(replica.clone()))>{format!("logs {r}")}</button> }
            })
            .collect_view();
        Some(view! {
            <td class="actions">
                <input node_ref=input class="replicas" type="number" min="0" value=wanted.to_string() />
                <button class="scale" on:click=scale>"scale"</button>
                <button class="restart" on:click=restart>"restart"</button>
                {log_buttons}
            </td>
        })
    };
    let rollout = match &deployment.rollout {
        Some(r) => {
            let state = r.state.as_str();
            let mut text = format!("v{}: {state} {}/{}", deployment.version, r.updated, r.replicas);
            if !r.reason.is_empty() {
                text.push_str(&format!(" ({})", r.reason));
            }
            text
        }
        None => format!("v{}", deployment.version),
    };
    view! {
        <tr class="deployment" data-name=name.clone()>
            <td class="name" title=deployment.spec.command.clone()>{name.clone()}</td>
            <td class="num">{format!("{}/{}", deployment.running, wanted)}</td>
            <td>{by_hive(&deployment)}</td>
            <td class="rollout">{rollout}</td>
            <td class="num">{restarts}</td>
            <td class="detail">{trouble(&deployment)}</td>
            {controls}
        </tr>
    }
}

#[component]
pub fn DeploymentsPanel(dashboard: RwSignal<Dashboard>, admin: Admin) -> impl IntoView {
    let logs = super::LogView::new();
    let list = RwSignal::new(Result::<Vec<DeploymentStatus>, (u16, String)>::Ok(Vec::new()));
    // Refetched with every snapshot: the stream carries counts, the full list says where.
    Effect::new(move |_| {
        let _ = dashboard.with(|d| d.latest.as_ref().map(|s| s.seq));
        leptos::task::spawn_local(async move {
            list.set(crate::hooks::fetch_json::<Vec<DeploymentStatus>>(contract::paths::DEPLOYMENTS).await);
        });
    });
    let rows = move || list.get().unwrap_or_default();
    let error = move || {
        list.get().err().map(|(status, message)| view! { <p class="detail">{format!("{status} {message}")}</p> })
    };
    view! {
        <Show when=move || list.with(|l| l.as_ref().map_or(true, |l| !l.is_empty()))>
            <section id="deployments">
                <h2>"Deployments"</h2>
                {error}
                <table>
                    <thead>
                        <tr>
                            <th>"deployment"</th><th>"running"</th><th>"where"</th><th>"version"</th><th>"restarts"</th>
                            <th>"why not running"</th>
                        </tr>
                    </thead>
                    <tbody>
                        // Keyed by the whole answer: a row is redrawn only when it changed, so
                        // a replica count being typed survives the snapshots in between.
                        <For each=rows key=|d| format!("{d:?}") let:deployment>
                            <Row deployment admin logs />
                        </For>
                    </tbody>
                </table>
                <super::LogPane view=logs dashboard admin />
            </section>
        </Show>
    }
}
