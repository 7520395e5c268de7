//! `cargo xtask`: the project's automation, in Rust rather than shell scripts.
//!
//! - `cargo xtask dev [--hives N] [--workers-per-hive M]`: a local cluster on loopback,
//!   with the dashboard.
//! - `cargo xtask web`: build the dashboard.
//! - `cargo xtask dist [--check]`: the release tarball and .deb (and, with `--check`,
//!   both installed and tried).
//! - `cargo xtask test [--ci]`: the whole test suite (with `--ci`, also fmt, clippy, a
//!   longer property-test run, schemathesis against the OpenAPI document, and one round of
//!   the chaos suite).
//! - `cargo xtask schemathesis [--seconds N]`: the queen held to its OpenAPI document.
//! - `cargo xtask bench`: the queen under simulated load; writes `BENCHMARKS.md`.
//! - `cargo xtask chaos [--rounds N]`: three queens on etcd under injected faults.
//!   The project has no doctests; nextest runs everything else.

mod bench;
mod chaos;
mod dev;
mod dist;
mod schemathesis;
#[cfg(test)]
mod tidy;
mod web;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Apiary's development tasks")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Build and run a local cluster (queen + hives + workers) until Ctrl-C.
    Dev(dev::DevArgs),
    /// Build the dashboard (wasm) into `dashboard/` next to the binaries.
    Web,
    /// Build the release tarball and .deb into target/dist (with --check, install and try
    /// them).
    Dist(dist::DistArgs),
    /// Run the whole test suite: unit, integration, end-to-end and style checks.
    Test {
        /// Also check formatting and clippy with warnings as errors, as CI does.
        #[arg(long)]
        ci: bool,
    },
    /// Measure the queen under load (release build) and write BENCHMARKS.md.
    Bench(bench::BenchArgs),
    /// Three queens on etcd, hives, workers and jobs under injected faults; prints what
    /// each fault cost and fails on any loss.
    Chaos(chaos::ChaosArgs),
    /// Run schemathesis against a real queen for a bounded time.
    Schemathesis {
        #[arg(long, default_value_t = 90)]
        seconds: u32,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Task::Dev(args) => dev::run(args),
        Task::Web => web::build().map(|_| ()),
        Task::Dist(args) => dist::run_dist(args),
        Task::Test { ci } => test(ci),
        Task::Bench(args) => bench::run_bench(args),
        Task::Chaos(args) => chaos::run(args),
        Task::Schemathesis { seconds } => schemathesis::check(&build_binaries()?, seconds),
    }
}

/// The workspace root: xtask lives one level below it.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."))
}

pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(root());
    cmd
}

pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    eprintln!("$ {}", describe(cmd));
    let status = cmd.status().with_context(|| format!("starting {}", describe(cmd)))?;
    if !status.success() {
        bail!("{} failed with {status}", describe(cmd));
    }
    Ok(())
}

fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program().to_string_lossy().into_owned())
        .chain(cmd.get_args().map(|a| a.to_string_lossy().into_owned()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The packages that build the `queen`, `hive` and `worker` binaries (`queen-cli` makes
/// `queen`).
pub const PACKAGES: [&str; 3] = ["queen-cli", "hive", "worker"];

/// Cargo features every build and test run of xtask turns on: the queen's etcd backend
/// (replicas), and the sandbox's tests of it.
const FEATURES: &str = "queen/etcd,sandbox/etcd";

/// Builds the binaries, with the queen's etcd backend (whose build needs `protoc`).
pub fn build_binaries() -> anyhow::Result<PathBuf> {
    web::ensure_apt(&["protobuf-compiler"])?;
    let mut cmd = cargo();
    cmd.args(["build", "--features", "queen/etcd"]);
    for p in PACKAGES {
        cmd.args(["-p", p]);
    }
    run(&mut cmd)?;
    Ok(target_dir().join("debug"))
}

pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root().join("target"))
}

/// Waits until something listens on a loopback port.
pub fn wait_for(port: u16) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::time::Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    bail!("nothing started listening on {port}")
}

/// A child process stopped (SIGTERM, then waited for) however the task using it ends.
pub struct Stopped(pub std::process::Child);

impl Drop for Stopped {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.0.wait();
    }
}

fn has_nextest() -> bool {
    cargo().args(["nextest", "--version"]).output().is_ok_and(|o| o.status.success())
}

fn test(ci: bool) -> anyhow::Result<()> {
    if ci {
        run(cargo().args(["fmt", "--all", "--check"]))?;
        web::ensure_apt(&["protobuf-compiler"])?;
        run(cargo().args(["clippy", "--workspace", "--all-targets", "--features", FEATURES, "--", "-D", "warnings"]))?;
        // The queen without etcd (what a plain `cargo build` makes) must stay clean too.
        run(cargo().args(["clippy", "-p", "queen", "--all-targets", "--", "-D", "warnings"]))?;
    }
    // The end-to-end and browser tests start these as processes and serve this
    // dashboard; building them here keeps those tests from building inside the run.
    let bin_dir = build_binaries()?;
    web::build()?;
    // The browser tests drive Debian's Chromium over WebDriver; `queen top` is tested in
    // a tmux pseudo-terminal.
    // The replica tests start Debian's etcd on loopback ports of their own.
    // promtool (Debian's prometheus package) checks /metrics and the alert rules.
    web::ensure_apt(&["chromium", "chromium-driver", "tmux", "etcd-server", "prometheus"])?;
    if has_nextest() {
        run(cargo().args(["nextest", "run", "--workspace", "--features", FEATURES, "--no-fail-fast"]))?;
        if ci {
            // The bounded fuzz pass: the decoding and ordering properties with 20 000
            // cases each instead of 256 (about ten seconds).
            run(cargo().env("PROPTEST_CASES", "20000").args([
                "nextest",
                "run",
                "-p",
                "contract",
                "-p",
                "heartbeat-registry",
                "-E",
                "binary(decode) | test(ordering)",
            ]))?;
            schemathesis::check(&bin_dir, 90)?;
            // The release artifacts, built and tried as an operator installs them.
            dist::run_dist(dist::DistArgs { check: true })?;
            // The bounded chaos run: every fault once (about a minute and a half).
            chaos::run(chaos::ChaosArgs::bounded())?;
        }
        Ok(())
    } else {
        eprintln!("cargo-nextest not found; using cargo test (install it with `cargo install cargo-nextest`)");
        run(cargo().args(["test", "--workspace", "--features", FEATURES]))
    }
}
