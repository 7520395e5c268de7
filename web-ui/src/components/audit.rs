//! The queen's own warnings, as a banner, and the audit log of admin calls.

use contract::AuditLog;
use leptos::prelude::*;

use crate::model::Dashboard;

/// Said on every page while it holds: a queen open to anyone, for one.
#[component]
pub fn Warnings(dashboard: RwSignal<Dashboard>) -> impl IntoView {
    move || {
        let warnings = dashboard.with(|d| d.latest.as_ref().map(|s| s.warnings.clone()).unwrap_or_default());
        (!warnings.is_empty()).then(|| {
            let items = warnings.into_iter().map(|w| view! { <li>{w}</li> }).collect::<Vec<_>>();
            view! { <section id="warnings" class="failure" role="alert"><ul>{items}</ul></section> }
        })
    }
}

/// The newest admin calls: who (the token's name), what, when, how it ended. Read with the
/// page's token, so it shows only on a dashboard opened with the admin token.
#[component]
pub fn AuditPanel(dashboard: RwSignal<Dashboard>) -> impl IntoView {
    let log = RwSignal::new(Result::<AuditLog, (u16, String)>::Err((0, "loading".into())));
    // Refetched with every snapshot.
    Effect::new(move |_| {
        let _ = dashboard.with(|d| d.latest.as_ref().map(|s| s.seq));
        leptos::task::spawn_local(async move {
            log.set(crate::hooks::fetch_json::<AuditLog>(&format!("{}?limit=20", contract::paths::AUDIT)).await);
        });
    });
    let body = move || {
        match log.get() {
        Ok(log) if log.entries.is_empty() => view! { <p class="detail">"no admin calls yet"</p> }.into_any(),
        Ok(log) => {
            let rows = log
                .entries
                .into_iter()
                .rev()
                .map(|e| {
                    let at = e.at.replace_nanosecond(0).unwrap_or(e.at);
                    let at = at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
                    let class = if e.outcome == "ok" { "" } else { "failure" };
                    view! {
                        <tr class=class>
                            <td>{at}</td>
                            <td>{e.who}</td>
                            <td>{format!("{} {}", e.method, e.path)}</td>
                            <td>{format!("{} {}", e.status, e.outcome)}</td>
                        </tr>
                    }
                })
                .collect::<Vec<_>>();
            view! {
                <table>
                    <thead><tr><th>"when"</th><th>"who"</th><th>"what"</th><th>"result"</th></tr></thead>
                    <tbody>{rows}</tbody>
                </table>
            }
            .into_any()
        }
        Err((401 | 403, _)) => view! {
            <p class="detail">"the audit log needs the admin token: open the dashboard with ?access_token=<admin token>"</p>
        }
        .into_any(),
        Err((_, message)) => view! { <p class="detail">{message}</p> }.into_any(),
    }
    };
    view! {
        <section id="audit">
            <h2>"Audit log"</h2>
            {body}
        </section>
    }
}
