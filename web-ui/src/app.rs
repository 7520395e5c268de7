//! The dashboard page: state, hooks, and the layout of the components.

use std::time::Duration;

use contract::{NodeId, NodeKind};
use leptos::prelude::*;

use crate::components::{
    ActionResult, Admin, AdminControl, AuditPanel, ClusterActions, ConnectionBadge, DeploymentsPanel, DrainsPanel,
    EventLog, HiveTable, NodeDetail, ShutdownPanel, Summary, Warnings, WorkerTable,
};
use crate::hooks::{use_clock, use_snapshot_stream};
use crate::model::{Connection, Dashboard};

/// The node whose detail panel is open.
pub type Selection = Option<(NodeKind, NodeId)>;

#[component]
pub fn App() -> impl IntoView {
    let dashboard = RwSignal::new(Dashboard::default());
    let connection = RwSignal::new(Connection::Connecting);
    let query = RwSignal::new(String::new());
    let selected = RwSignal::new(Selection::None);
    let admin = Admin::new();
    let stream = format!("{}?delta=true", contract::paths::HEARTBEAT_STREAM);
    use_snapshot_stream(&crate::hooks::api_url(&stream), dashboard, connection);
    let now = use_clock(Duration::from_secs(1));

    Effect::new(move |_| document().set_title(&dashboard.with(Dashboard::title)));

    view! {
        <header>
            <h1>"Apiary"</h1>
            <input
                id="filter"
                type="search"
                placeholder="filter nodes: name, hive, state…"
                prop:value=move || query.get()
                on:input=move |ev| query.set(event_target_value(&ev))
            />
            <ConnectionBadge dashboard connection now />
            <AdminControl admin />
        </header>
        <main>
            <Warnings dashboard />
            <ActionResult admin />
            <Summary dashboard />
            <ShutdownPanel dashboard />
            <ClusterActions admin />
            <DrainsPanel dashboard />
            <DeploymentsPanel dashboard admin />
            <div class="columns">
                <div class="tables">
                    <HiveTable dashboard query now selected />
                    <WorkerTable dashboard query now selected />
                </div>
                <aside>
                    <NodeDetail dashboard selected now admin />
                    <EventLog dashboard />
                    <AuditPanel dashboard />
                </aside>
            </div>
        </main>
    }
}
