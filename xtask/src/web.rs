//! `cargo xtask web`: builds the Leptos dashboard to wasm and lays it out where the queen
//! looks for it (`dashboard/` next to the queen binary).
//!
//! The rustup toolchain here has no wasm32 standard library and cannot download one;
//! Debian's Rust ships the library source, so the build uses Debian's compiler with
//! `-Zbuild-std` (see `../shared/WEB-UI-TOOLCHAIN.md`). Missing pieces are installed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::Context;

use crate::{cargo, root, run};

const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
const DEBIAN_CARGO: &str = "/usr/bin/cargo";
const APT_PACKAGES: [&str; 4] = ["rustc-web", "cargo-web", "rust-web-src", "lld"];

/// Where the dashboard goes: `<target>/debug/dashboard`, beside the binaries `cargo build`
/// makes, where the queen's build embeds it from (a debug queen reads it from there).
pub fn dist_dir() -> PathBuf {
    crate::target_dir().join("debug").join("dashboard")
}

/// The same beside a release build, so that `cargo build --release` after `cargo xtask web`
/// embeds the dashboard too.
fn release_dir() -> PathBuf {
    crate::target_dir().join("release").join("dashboard")
}

fn copy_tree(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target).with_context(|| format!("copying to {}", target.display()))?;
        }
    }
    Ok(())
}

fn have(program: &str) -> bool {
    Command::new(program).arg("--version").output().is_ok_and(|o| o.status.success())
}

fn wasm_std_source_present() -> bool {
    Command::new(DEBIAN_RUSTC)
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .is_some_and(|sysroot| Path::new(sysroot.trim()).join("lib/rustlib/src/rust/library/std").is_dir())
}

/// Installs the Debian packages among `packages` that are missing. The package lists are
/// refreshed first: a fresh machine's lists can be months old, and an install from them
/// brings an old version (Debian's Rust 1.85 instead of the current security update).
pub fn ensure_apt(packages: &[&str]) -> anyhow::Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            !Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing Debian packages {missing:?}");
    apt_install(&missing)
}

fn apt_install(packages: &[&str]) -> anyhow::Result<()> {
    let sudo = !nix::unistd::Uid::effective().is_root();
    let apt = |args: &[&str]| -> anyhow::Result<()> {
        let mut cmd = Command::new(if sudo { "sudo" } else { "apt-get" });
        if sudo {
            cmd.arg("apt-get");
        }
        run(cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive"))
    };
    apt(&["update", "-q"])?;
    let mut install = vec!["install", "-y", "-q"];
    install.extend(packages);
    apt(&install)
}

/// The oldest Debian compiler that builds the dashboard's locked dependencies (leptos 0.8
/// and time 0.3.4x need 1.88).
const DEBIAN_RUSTC_AT_LEAST: u32 = 88;

/// The minor version of Debian's compiler (`rustc 1.96.0 ...` gives 96).
fn debian_rustc_minor() -> Option<u32> {
    let out = Command::new(DEBIAN_RUSTC).arg("--version").output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    text.split_whitespace().nth(1)?.split('.').nth(1)?.parse().ok()
}

/// The `wasm-bindgen` version the lockfile pins; the CLI must be exactly this one.
fn locked_wasm_bindgen_version() -> anyhow::Result<String> {
    let lock: toml::Table = toml::from_str(&std::fs::read_to_string(root().join("Cargo.lock"))?)?;
    lock.get("package")
        .and_then(|p| p.as_array())
        .into_iter()
        .flatten()
        .find(|p| p.get("name").and_then(|n| n.as_str()) == Some("wasm-bindgen"))
        .and_then(|p| p.get("version")?.as_str().map(str::to_string))
        .context("wasm-bindgen is not in Cargo.lock")
}

fn ensure_wasm_bindgen(version: &str) -> anyhow::Result<()> {
    let installed = Command::new("wasm-bindgen")
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    if installed == format!("wasm-bindgen {version}") {
        return Ok(());
    }
    // Not `--locked`: its lockfile pins a crate version the registry no longer serves.
    run(cargo().args(["install", "wasm-bindgen-cli", "--version", version]))
}

pub fn build() -> anyhow::Result<PathBuf> {
    let started = Instant::now();
    if !(have(DEBIAN_RUSTC) && have(DEBIAN_CARGO) && have("wasm-ld") && wasm_std_source_present()) {
        ensure_apt(&APT_PACKAGES)?;
    }
    if debian_rustc_minor().is_none_or(|minor| minor < DEBIAN_RUSTC_AT_LEAST) {
        eprintln!("xtask: Debian's Rust is older than 1.{DEBIAN_RUSTC_AT_LEAST}; upgrading it");
        apt_install(&APT_PACKAGES)?;
    }
    ensure_wasm_bindgen(&locked_wasm_bindgen_version()?)?;

    let web_target = crate::target_dir().join("web");
    run(Command::new(DEBIAN_CARGO)
        .current_dir(root())
        .env("RUSTC", DEBIAN_RUSTC)
        .env("RUSTDOC", "/usr/bin/rustdoc")
        .env("RUSTC_BOOTSTRAP", "1")
        .env("CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER", "wasm-ld")
        .env_remove("RUSTFLAGS")
        .args(["build", "--quiet", "-p", "web-ui", "--bin", "web-ui", "--profile", "web"])
        .args(["--target", "wasm32-unknown-unknown", "-Zbuild-std=std,panic_abort"])
        .arg("--target-dir")
        .arg(&web_target))?;

    let dist = dist_dir();
    let wasm = web_target.join("wasm32-unknown-unknown/web/web-ui.wasm");
    let _ = std::fs::remove_dir_all(&dist);
    std::fs::create_dir_all(&dist)?;
    run(Command::new("wasm-bindgen")
        .args(["--target", "web", "--no-typescript", "--remove-name-section", "--out-dir"])
        .arg(dist.join("pkg"))
        .arg(&wasm))?;
    for file in ["index.html", "style.css"] {
        std::fs::copy(root().join("web-ui").join(file), dist.join(file)).with_context(|| format!("copying {file}"))?;
    }
    let release = release_dir();
    let _ = std::fs::remove_dir_all(&release);
    copy_tree(&dist, &release)?;
    let size = std::fs::metadata(dist.join("pkg/web-ui_bg.wasm")).map(|m| m.len()).unwrap_or(0);
    eprintln!(
        "xtask web: dashboard in {} ({} KiB wasm) after {:.0} s",
        dist.display(),
        size / 1024,
        started.elapsed().as_secs_f64()
    );
    Ok(dist)
}
