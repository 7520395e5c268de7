//! `cargo xtask`: the project's automation, in Rust rather than shell scripts.
//!
//! - `cargo xtask dev [--hives N] [--workers-per-hive M]`: a local cluster on loopback.
//! - `cargo xtask test [--ci]`: the whole test suite (with `--ci`, also fmt and clippy).
//!   The project has no doctests; nextest runs everything else.

mod dev;
#[cfg(test)]
mod tidy;

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
    /// Run the whole test suite: unit, integration, end-to-end and style checks.
    Test {
        /// Also check formatting and clippy with warnings as errors, as CI does.
        #[arg(long)]
        ci: bool,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Task::Dev(args) => dev::run(args),
        Task::Test { ci } => test(ci),
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

pub const BINARIES: [&str; 3] = ["queen", "hive", "worker"];

pub fn build_binaries() -> anyhow::Result<PathBuf> {
    let mut cmd = cargo();
    cmd.arg("build");
    for b in BINARIES {
        cmd.args(["-p", b]);
    }
    run(&mut cmd)?;
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root().join("target"));
    Ok(target.join("debug"))
}

fn has_nextest() -> bool {
    cargo().args(["nextest", "--version"]).output().is_ok_and(|o| o.status.success())
}

fn test(ci: bool) -> anyhow::Result<()> {
    if ci {
        run(cargo().args(["fmt", "--all", "--check"]))?;
        run(cargo().args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]))?;
    }
    // The end-to-end test starts these as processes; building them here keeps that test
    // from building inside the test run.
    build_binaries()?;
    if has_nextest() {
        run(cargo().args(["nextest", "run", "--workspace", "--no-fail-fast"]))
    } else {
        eprintln!("cargo-nextest not found; using cargo test (install it with `cargo install cargo-nextest`)");
        run(cargo().args(["test", "--workspace"]))
    }
}
