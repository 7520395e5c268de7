//! A replica's output, read through the queen with the admin token (logs may hold what a
//! program printed of its secrets): its last lines, stdout or stderr, this instance or the
//! one before its last restart, read again with every snapshot while the pane is open.

use contract::LogStream;
use leptos::prelude::*;

use super::actions::Admin;
use crate::model::Dashboard;

/// Lines shown; the pane follows the newest.
const TAIL: usize = 200;

/// Which replica's output the pane shows, if it is open.
#[derive(Clone, Copy)]
pub struct LogView {
    pub replica: RwSignal<Option<String>>,
}

impl LogView {
    pub fn new() -> Self {
        Self { replica: RwSignal::new(None) }
    }
}

#[component]
pub fn LogPane(view: LogView, dashboard: RwSignal<Dashboard>, admin: Admin) -> impl IntoView {
    let stream = RwSignal::new(LogStream::Stdout);
    let previous = RwSignal::new(false);
    let text = RwSignal::new(Result::<String, (u16, String)>::Ok(String::new()));
    Effect::new(move |_| {
        // Again with every snapshot, and at once when the choice changes.
        let _ = dashboard.with(|d| d.latest.as_ref().map(|s| s.seq));
        let (Some(replica), Some(token)) = (view.replica.get(), admin.token.get()) else { return };
        let query = contract::LogQuery {
            stream: stream.get(),
            previous: previous.get(),
            tail: Some(TAIL),
            ..Default::default()
        };
        let path = format!("{}?{}", contract::paths::REPLICA_LOGS.replace("{name}", &replica), query.to_query_string());
        leptos::task::spawn_local(async move {
            text.set(crate::hooks::send("GET", &path, None, &token).await);
        });
    });
    let pick = move |s: LogStream| move |_| stream.set(s);
    let body = move || match text.get() {
        Ok(t) if t.is_empty() => view! { <pre class="logs empty">"(nothing written yet)"</pre> }.into_any(),
        Ok(t) => view! { <pre class="logs">{t}</pre> }.into_any(),
        Err((status, message)) => view! { <p class="detail">{format!("{status} {message}")}</p> }.into_any(),
    };
    view! {
        <Show when=move || view.replica.with(Option::is_some) && admin.token.with(Option::is_some)>
            <section id="logs">
                <div class="detail-head">
                    <h2>{move || format!("Logs of {}", view.replica.get().unwrap_or_default())}</h2>
                    <button class="stdout" class:on=move || stream.get() == LogStream::Stdout on:click=pick(LogStream::Stdout)>
                        "stdout"
                    </button>
                    <button class="stderr" class:on=move || stream.get() == LogStream::Stderr on:click=pick(LogStream::Stderr)>
                        "stderr"
                    </button>
                    <label>
                        <input class="previous" type="checkbox" prop:checked=previous on:change=move |_| previous.update(|p| *p = !*p) />
                        "before the last restart"
                    </label>
                    <button class="close" on:click=move |_| view.replica.set(None)>"close"</button>
                </div>
                {body}
            </section>
        </Show>
    }
}
