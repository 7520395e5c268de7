//! The live dashboard. `model` is the shared view model (`view-model`, tested natively,
//! also what `queen top` shows through); the Leptos components and the stream hook exist
//! only in the wasm build.

pub use view_model as model;

#[cfg(target_arch = "wasm32")]
pub mod app;
#[cfg(target_arch = "wasm32")]
mod components;
#[cfg(target_arch = "wasm32")]
mod hooks;
