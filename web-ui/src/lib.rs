//! The live dashboard will live here: a Leptos client-side app fed by
//! `/v1/heartbeats/stream`. This crate is empty until then, and the queen serves no UI yet.
