//! Points the embedded dashboard at the built one.
//!
//! The dashboard is a wasm build of its own (`cargo xtask web`), not something cargo can
//! build here, so the queen embeds whatever that build left beside its binaries
//! (`<target>/<profile>/dashboard`), or the directory `APIARY_DASHBOARD_DIR` names. Release
//! builds carry the files inside the binary; debug builds read them from that directory at
//! run time (rust-embed's behaviour), so a rebuilt dashboard shows without rebuilding the
//! queen.

use std::path::PathBuf;

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=APIARY_DASHBOARD_DIR");
    let dir = match std::env::var_os("APIARY_DASHBOARD_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => profile_dir().join("dashboard"),
    };
    // Cargo re-runs a script whose watched path is missing on every build, which would
    // rebuild the queen each time; an empty directory is watched like any other, and
    // `cargo xtask web` filling it later is a change that re-embeds.
    if !dir.exists() {
        let _ = std::fs::create_dir_all(&dir);
    }
    // Debug builds read the files at run time, so only a release build must re-run.
    if std::env::var_os("CARGO_CFG_DEBUG_ASSERTIONS").is_none() {
        println!("cargo::rerun-if-changed={}", dir.display());
    }
    let dir = std::path::absolute(&dir).unwrap_or(dir);
    let source = format!(
        "/// The dashboard's files, embedded at build time (see `build.rs`).\n\
         #[derive(rust_embed::Embed)]\n\
         #[folder = {:?}]\n\
         #[allow_missing = true]\n\
         pub struct Dashboard;\n",
        dir.display().to_string()
    );
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("dashboard.rs");
    std::fs::write(&out, source).expect("writing dashboard.rs into OUT_DIR");
}

/// `<target>/<profile>` (or `<target>/<triple>/<profile>`): OUT_DIR is
/// `<that>/build/queen-<hash>/out`.
fn profile_dir() -> PathBuf {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    out.ancestors().nth(3).map(PathBuf::from).unwrap_or(out)
}
