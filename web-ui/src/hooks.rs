//! Side effects as hooks: the snapshot stream and the clock.

use std::time::Duration;

use contract::{Snapshot, SnapshotDelta};
use leptos::prelude::*;
use send_wrapper::SendWrapper;
use wasm_bindgen::JsCast;
use wasm_bindgen::closure::Closure;
use web_sys::{EventSource, MessageEvent};

use crate::model::{Connection, Dashboard};

/// `/v1` URL with the page's own `?access_token=` carried over, so a dashboard opened
/// with the read token reads with it (an EventSource cannot send headers).
pub fn api_url(path: &str) -> String {
    let search = web_sys::window().and_then(|w| w.location().search().ok()).unwrap_or_default();
    let token = search.trim_start_matches('?').split('&').find_map(|kv| kv.strip_prefix("access_token="));
    match token {
        Some(t) if !t.is_empty() => {
            let sep = if path.contains('?') { '&' } else { '?' };
            format!("{path}{sep}access_token={t}")
        }
        _ => path.to_string(),
    }
}

/// GETs a `/v1` path (with the page's token, see [`api_url`]) and decodes its JSON; an
/// error answer comes back as its status and the queen's message.
pub async fn fetch_json<T: serde::de::DeserializeOwned>(path: &str) -> Result<T, (u16, String)> {
    let window = web_sys::window().ok_or((0, "no window".to_string()))?;
    answer(window.fetch_with_str(&api_url(path))).await
}

/// Sends an admin call: the token as a bearer header, never in the URL (where it would
/// land in the history and the queen's access logs), and a JSON body if there is one.
pub async fn send_json<T: serde::de::DeserializeOwned>(
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
    token: &str,
) -> Result<T, (u16, String)> {
    let text = send(method, path, body, token).await?;
    let text = if text.trim().is_empty() { "null" } else { &text };
    serde_json::from_str(text).map_err(|e| (200, e.to_string()))
}

/// An admin call whose answer is text (a replica's output), as the browser decodes it.
pub async fn send(
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
    token: &str,
) -> Result<String, (u16, String)> {
    let js = |e: wasm_bindgen::JsValue| (0, format!("{e:?}"));
    let window = web_sys::window().ok_or((0, "no window".to_string()))?;
    let headers = web_sys::Headers::new().map_err(js)?;
    headers.set("Authorization", &format!("Bearer {token}")).map_err(js)?;
    let init = web_sys::RequestInit::new();
    init.set_method(method);
    if let Some(body) = body {
        headers.set("Content-Type", "application/json").map_err(js)?;
        init.set_body(&wasm_bindgen::JsValue::from_str(&body.to_string()));
    }
    init.set_headers(&headers);
    let request = web_sys::Request::new_with_str_and_init(path, &init).map_err(js)?;
    answer_text(window.fetch_with_request(&request)).await
}

/// A fetch's answer as `T`, or its status and the queen's message. An empty success (a
/// 204) reads as JSON `null`.
async fn answer<T: serde::de::DeserializeOwned>(fetch: js_sys::Promise) -> Result<T, (u16, String)> {
    let text = answer_text(fetch).await?;
    let text = if text.trim().is_empty() { "null" } else { &text };
    serde_json::from_str(text).map_err(|e| (200, e.to_string()))
}

/// A fetch's answer as text, or its status and the queen's message.
async fn answer_text(fetch: js_sys::Promise) -> Result<String, (u16, String)> {
    use wasm_bindgen_futures::JsFuture;
    let resp = JsFuture::from(fetch).await.map_err(|e| (0, format!("{e:?}")))?;
    let resp: web_sys::Response = resp.dyn_into().map_err(|_| (0, "not a response".to_string()))?;
    let text =
        JsFuture::from(resp.text().map_err(|e| (0, format!("{e:?}")))?).await.map_err(|e| (0, format!("{e:?}")))?;
    let text = text.as_string().unwrap_or_default();
    if !resp.ok() {
        let message = serde_json::from_str::<contract::ApiErrorBody>(&text).map(|b| b.message).unwrap_or(text);
        return Err((resp.status(), message));
    }
    Ok(text)
}

/// Where the admin token is kept: this tab's session storage, gone when the tab closes.
const ADMIN_TOKEN_KEY: &str = "apiary-admin-token";

fn session_storage() -> Option<web_sys::Storage> {
    web_sys::window()?.session_storage().ok()?
}

pub fn stored_admin_token() -> Option<String> {
    session_storage()?.get_item(ADMIN_TOKEN_KEY).ok()?.filter(|t| !t.is_empty())
}

pub fn store_admin_token(token: Option<&str>) {
    let Some(storage) = session_storage() else { return };
    let _ = match token {
        Some(t) => storage.set_item(ADMIN_TOKEN_KEY, t),
        None => storage.remove_item(ADMIN_TOKEN_KEY),
    };
}

pub fn now_ms() -> f64 {
    js_sys::Date::now()
}

/// Opens an `EventSource` on `url` (asking for deltas) and folds every `event: heartbeat`
/// and `event: delta` into `dashboard`; `connection` follows the stream's state. The browser reconnects by itself (the queen
/// sends `retry:`); the source is closed when the owning component is cleaned up.
pub fn use_snapshot_stream(url: &str, dashboard: RwSignal<Dashboard>, connection: RwSignal<Connection>) {
    let source = match EventSource::new(url) {
        Ok(s) => s,
        Err(e) => {
            leptos::logging::error!("cannot open {url}: {e:?}");
            connection.set(Connection::Reconnecting);
            return;
        }
    };
    let on_snapshot = Closure::<dyn FnMut(MessageEvent)>::new(move |ev: MessageEvent| {
        let Some(data) = ev.data().as_string() else { return };
        match serde_json::from_str::<Snapshot>(&data) {
            Ok(s) => {
                dashboard.update(|d| d.apply(s, now_ms()));
                connection.set(Connection::Live);
            }
            Err(e) => leptos::logging::error!("snapshot did not decode: {e}"),
        }
    });
    let on_delta = Closure::<dyn FnMut(MessageEvent)>::new(move |ev: MessageEvent| {
        let Some(data) = ev.data().as_string() else { return };
        match serde_json::from_str::<SnapshotDelta>(&data) {
            Ok(delta) => {
                let applied = dashboard.try_update(|d| d.apply_delta(&delta, now_ms()));
                match applied {
                    Some(Ok(())) => connection.set(Connection::Live),
                    // The queen sends a whole snapshot whenever a client skipped frames, so
                    // this does not happen on one connection; if it does, start over.
                    _ => {
                        leptos::logging::error!("delta {} does not follow; reloading", delta.seq);
                        if let Some(w) = web_sys::window() {
                            let _ = w.location().reload();
                        }
                    }
                }
            }
            Err(e) => leptos::logging::error!("delta did not decode: {e}"),
        }
    });
    let on_open = Closure::<dyn FnMut(web_sys::Event)>::new(move |_| {
        if connection.get_untracked() == Connection::Reconnecting {
            // Stays "reconnecting" until a snapshot proves the stream is really back.
            leptos::logging::log!("stream reopened");
        }
    });
    let on_error = Closure::<dyn FnMut(web_sys::Event)>::new(move |_| connection.set(Connection::Reconnecting));
    let _ = source.add_event_listener_with_callback("heartbeat", on_snapshot.as_ref().unchecked_ref());
    let _ = source.add_event_listener_with_callback("delta", on_delta.as_ref().unchecked_ref());
    source.set_onopen(Some(on_open.as_ref().unchecked_ref()));
    source.set_onerror(Some(on_error.as_ref().unchecked_ref()));

    let held = SendWrapper::new((source, on_snapshot, on_delta, on_open, on_error));
    on_cleanup(move || {
        let (source, ..) = held.take();
        source.close();
    });
}

/// A clock that ticks every `period`, so "3 s ago" moves between snapshots.
pub fn use_clock(period: Duration) -> ReadSignal<f64> {
    let (now, set_now) = signal(now_ms());
    match set_interval_with_handle(move || set_now.set(now_ms()), period) {
        Ok(handle) => on_cleanup(move || handle.clear()),
        Err(e) => leptos::logging::error!("no clock: {e:?}"),
    }
    now
}
