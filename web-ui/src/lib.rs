//! The live dashboard. `model` is plain Rust (tested natively); the Leptos components
//! and the stream hook exist only in the wasm build.

pub mod model;

#[cfg(target_arch = "wasm32")]
pub mod app;
#[cfg(target_arch = "wasm32")]
mod components;
#[cfg(target_arch = "wasm32")]
mod hooks;
