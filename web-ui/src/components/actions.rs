//! What an operator can do from the page with the admin token: drain a hive or cancel its
//! drain, toggle its eligibility, scale a deployment, hand leadership over, shut the
//! cluster down (the plan first, then a confirmation). Every action is the same API call
//! the CLI makes, and its result is said in one line. Without the token no control shows.

use contract::{AuditLog, DrainStatus, EligibilityBody, NodeId, ShutdownAnswer, ShutdownPlan, TransferAnswer};
use leptos::prelude::*;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::hooks::{send_json, store_admin_token, stored_admin_token};
use crate::model::Dashboard;

/// How the last action ended, for the result line.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    pub ok: bool,
    pub text: String,
}

/// The admin token this tab acts with (none: the page only reads) and the last result.
#[derive(Clone, Copy)]
pub struct Admin {
    pub token: RwSignal<Option<String>>,
    pub result: RwSignal<Option<Outcome>>,
}

impl Admin {
    pub fn new() -> Self {
        Self { token: RwSignal::new(stored_admin_token()), result: RwSignal::new(None) }
    }

    fn say(self, ok: bool, text: String) {
        self.result.set(Some(Outcome { ok, text }));
    }

    /// Makes one admin call and says how it ended: `done` words a success.
    pub fn act<T: DeserializeOwned + 'static>(
        self,
        method: &'static str,
        path: String,
        body: Option<Value>,
        done: impl FnOnce(T) -> String + 'static,
    ) {
        let Some(token) = self.token.get_untracked() else { return };
        leptos::task::spawn_local(async move {
            match send_json::<T>(method, &path, body.as_ref(), &token).await {
                Ok(answer) => self.say(true, done(answer)),
                Err((status, message)) => self.say(false, format!("{method} {path}: {status} {message}")),
            }
        });
    }
}

/// The token field in the header, or, once a token is in use, a way to forget it.
#[component]
pub fn AdminControl(admin: Admin) -> impl IntoView {
    let draft = RwSignal::new(String::new());
    let take = move || {
        let token = draft.get_untracked().trim().to_string();
        if token.is_empty() {
            return;
        }
        leptos::task::spawn_local(async move {
            // Kept only if the queen takes it for changes (the audit log is admin-only):
            // a read token would show buttons that all fail.
            let path = format!("{}?limit=1", contract::paths::AUDIT);
            match send_json::<AuditLog>("GET", &path, None, &token).await {
                Ok(_) => {
                    store_admin_token(Some(&token));
                    admin.token.set(Some(token));
                    draft.set(String::new());
                    admin.say(true, "acting with the admin token in this tab".into());
                }
                Err((status, message)) => admin.say(false, format!("not an admin token ({status} {message})")),
            }
        });
    };
    let forget = move |_| {
        store_admin_token(None);
        admin.token.set(None);
        admin.say(true, "admin token forgotten".into());
    };
    view! {
        <div id="admin">
            {move || match admin.token.get() {
                Some(_) => view! {
                    <span class="admin-on">"admin"</span>
                    <button id="admin-forget" on:click=forget>"forget token"</button>
                }
                .into_any(),
                None => view! {
                    <input
                        id="admin-token"
                        type="password"
                        autocomplete="off"
                        placeholder="admin token to act"
                        prop:value=move || draft.get()
                        on:input=move |ev| draft.set(event_target_value(&ev))
                        on:keydown=move |ev| if ev.key() == "Enter" { take() }
                    />
                    <button id="admin-use" on:click=move |_| take()>"act"</button>
                }
                .into_any(),
            }}
        </div>
    }
}

/// The result of the last action.
#[component]
pub fn ActionResult(admin: Admin) -> impl IntoView {
    move || {
        admin.result.get().map(|o| {
            let class = if o.ok { "ok" } else { "failure" };
            view! { <div id="action-result" class=class data-ok=o.ok.to_string() role="status">{o.text}</div> }
        })
    }
}

/// Drain, cancel a drain, eligibility: in the detail view of one hive.
#[component]
pub fn HiveActions(dashboard: RwSignal<Dashboard>, admin: Admin, hive: NodeId) -> impl IntoView {
    // Redrawn when the hive's eligibility or drain changes, not with every snapshot, so a
    // button is not replaced under the pointer.
    let state = Memo::new({
        let hive = hive.clone();
        move |_| {
            dashboard.with(|d| {
                let s = d.latest.as_ref()?;
                let eligible = s.hives.iter().find(|h| h.id == hive)?.eligible;
                Some((eligible, s.drains.iter().any(|dr| dr.hive == hive && !dr.done && !dr.cancelled)))
            })
        }
    });
    move || {
        admin.token.get()?;
        let hive = hive.clone();
        let (eligible, draining) = state.get()?;
        let drain_path = format!("{}/{hive}/drain", contract::paths::HIVES);
        let eligibility_path = format!("{}/{hive}/eligibility", contract::paths::HIVES);
        let drain = if draining {
            let path = drain_path.clone();
            let cancel = move |_| {
                admin.act("DELETE", path.clone(), None, |d: DrainStatus| format!("drain of {} cancelled", d.hive))
            };
            view! { <button id="act-cancel-drain" on:click=cancel>"cancel drain"</button> }.into_any()
        } else {
            let path = drain_path.clone();
            let start = move |_| {
                admin.act("POST", path.clone(), Some(json!({})), |d: DrainStatus| {
                    format!("drain of {} started: {} replicas to move", d.hive, d.left + d.moving)
                })
            };
            view! { <button id="act-drain" on:click=start>"drain"</button> }.into_any()
        };
        let toggle = move |_| {
            let name = hive.clone();
            admin.act(
                "PUT",
                eligibility_path.clone(),
                Some(json!({ "eligible": !eligible })),
                move |b: EligibilityBody| {
                    format!("{name} is {}", if b.eligible { "eligible" } else { "ineligible: no new replicas" })
                },
            )
        };
        Some(view! {
            <div class="actions">
                {drain}
                <button id="act-eligibility" on:click=toggle>
                    {if eligible { "make ineligible" } else { "make eligible" }}
                </button>
            </div>
        })
    }
}

/// Leadership transfer and the cluster shutdown: the dry-run plan first, then confirm.
#[component]
pub fn ClusterActions(admin: Admin) -> impl IntoView {
    let plan = RwSignal::new(None::<ShutdownPlan>);
    let transfer = move |_| {
        let path = contract::paths::CLUSTER_LEADER_TRANSFER.to_string();
        admin.act("POST", path, Some(json!({})), |a: TransferAnswer| {
            format!("{} handed leadership to {}", a.from.id, a.to.id)
        })
    };
    let dry_run = move |_| {
        let path = contract::paths::CLUSTER_SHUTDOWN.to_string();
        let Some(token) = admin.token.get_untracked() else { return };
        leptos::task::spawn_local(async move {
            match send_json::<ShutdownAnswer>("POST", &path, Some(&json!({ "dry_run": true })), &token).await {
                Ok(ShutdownAnswer::Plan(p)) => plan.set(Some(p)),
                Ok(ShutdownAnswer::Started(_)) => admin.say(false, "the queen started a shutdown on a dry run".into()),
                Err((status, message)) => admin.say(false, format!("shutdown plan: {status} {message}")),
            }
        });
    };
    let confirm = move |_| {
        plan.set(None);
        let path = contract::paths::CLUSTER_SHUTDOWN.to_string();
        admin.act("POST", path, Some(json!({ "dry_run": false })), |a: ShutdownAnswer| match a {
            ShutdownAnswer::Started(_) => "cluster shutdown started".to_string(),
            ShutdownAnswer::Plan(_) => "the queen answered with a plan only".to_string(),
        })
    };
    let shown_plan = move || {
        plan.get().map(|p| {
            let phases = p.phases.iter().map(|ph| ph.name()).collect::<Vec<_>>().join(" → ");
            let hives = p
                .hives
                .iter()
                .map(|(hive, workers)| view! { <li>{format!("{hive}: {} workers", workers.len())}</li> })
                .collect::<Vec<_>>();
            view! {
                <div id="shutdown-plan" class="plan">
                    <p>{format!(
                        "Shut down {} hives in order: {phases}. Workers get {} ms to stop; each phase waits {} ms for ACKs.",
                        p.hives.len(),
                        p.drain_deadline_ms,
                        p.phase_timeout_ms
                    )}</p>
                    <ul>{hives}</ul>
                    <button id="act-shutdown-confirm" class="danger" on:click=confirm>"shut the cluster down"</button>
                    <button id="act-shutdown-cancel" on:click=move |_| plan.set(None)>"cancel"</button>
                </div>
            }
        })
    };
    move || {
        admin.token.get()?;
        Some(view! {
            <section id="cluster-actions">
                <h2>"Cluster"</h2>
                <div class="actions">
                    <button id="act-transfer" on:click=transfer>"hand leadership over"</button>
                    <button id="act-shutdown" on:click=dry_run>"shut down…"</button>
                </div>
                {shown_plan}
            </section>
        })
    }
}
