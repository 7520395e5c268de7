//! The integration tests, in one test binary: each file below links the whole cluster
//! (queen, hive, worker, the client), and on two cores one link beats thirteen.
//!
//! - `cluster`: an in-process cluster over real sockets: liveness, the stream, the API.
//! - `auth`, `hostile`, `tls`, `hop`: tokens and scopes, hostile input, HTTPS, the queen →
//!   worker hop (no redirects, capped answers).
//! - `deploy`, `drain`, `shutdown`: placement with real worker processes, drains, the
//!   cluster shutdown.
//! - `workloads`: what replicas get beside placement: probes, logs, plain programs.
//! - `stream_modes`, `reload`: the stream's delta and summary forms; live config reload.
//! - `replicas`: queens on a real etcd (with the `etcd` feature).
//! - `ops`: what operators import: /metrics through promtool, the alert rules, the Grafana
//!   dashboard's metrics.
//! - `cli`: the `queen` command as scripts use it (JSON output, exit status, completions).
//! - `e2e`, `top`, `dashboard`: the real binaries as processes, `queen top` in tmux, the
//!   dashboard in headless Chromium.

mod auth;
mod cli;
mod cluster;
mod dashboard;
mod deploy;
mod drain;
mod e2e;
mod hop;
mod hostile;
mod ops;
mod reload;
mod replicas;
mod shutdown;
mod stream_modes;
mod tls;
mod top;
mod workloads;
