//! The `queen` command: `serve` runs the server library (`queen`), every other command
//! talks to a running queen over HTTP, and `top` draws the cluster in a terminal.
//!
//! The terminal-UI crates (ratatui, indicatif) live here and nowhere else, so the server
//! library and every test binary that links it stay free of them.

pub mod cli;
pub mod render;
mod top;
