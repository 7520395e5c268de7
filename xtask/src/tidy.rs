//! Style rules a machine can check, run as tests: they fail the suite, not a review.

use std::path::{Path, PathBuf};

use crate::root;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if name == "target" || name.to_string_lossy().starts_with('.') {
            continue;
        }
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn all_rust_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    for dir in ["bin", "shared-crates", "tests", "web-ui", "xtask"] {
        rust_files(&root().join(dir), &mut files);
    }
    assert!(files.len() > 20, "tidy found too few files; is the root right? {:?}", root());
    files
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Workspace members, from the root manifest.
fn members() -> Vec<String> {
    let manifest = read(&root().join("Cargo.toml"));
    let start = manifest.find("members = [").expect("members list");
    let end = start + manifest[start..].find(']').expect("end of members");
    manifest[start..end].split('"').skip(1).step_by(2).map(str::to_string).collect()
}

#[test]
fn every_rust_file_starts_with_a_module_doc() {
    let missing: Vec<_> = all_rust_files().into_iter().filter(|f| !read(f).trim_start().starts_with("//!")).collect();
    assert!(missing.is_empty(), "files without a `//!` doc at the top: {missing:?}");
}

#[test]
fn no_stubs_or_banners_in_the_tree() {
    // Split so that this file does not trip its own check.
    let forbidden = [
        concat!("todo", "!("),
        concat!("unimplemented", "!("),
        concat!("TEAM", "-"),
        "\u{2705}",
        concat!("COMP", "LETE"),
    ];
    let mut hits = Vec::new();
    for f in all_rust_files() {
        for (n, line) in read(&f).lines().enumerate() {
            if forbidden.iter().any(|p| line.contains(p)) {
                hits.push(format!("{}:{}: {line}", f.display(), n + 1));
            }
        }
    }
    assert!(hits.is_empty(), "stubs or banners:\n{}", hits.join("\n"));
}

#[test]
fn there_is_one_registry() {
    let mut others = Vec::new();
    for f in all_rust_files() {
        for line in read(&f).lines() {
            let Some(rest) =
                line.trim_start().strip_prefix("pub struct ").or_else(|| line.trim_start().strip_prefix("struct "))
            else {
                continue;
            };
            let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            if name.ends_with("Registry") && name != "HeartbeatRegistry" {
                others.push(format!("{}: {name}", f.display()));
            }
        }
    }
    assert!(others.is_empty(), "a second registry type: {others:?}; use HeartbeatRegistry<T>");
}

/// What the queen decides by date (drain deadlines, keyed-job routes, the planner's `now`)
/// reads its own reckoning (`clock::Wall`), which a step of the system clock does not move.
#[test]
fn the_queens_dated_decisions_read_its_own_clock() {
    for file in ["bin/queen/src/plan.rs", "bin/queen/src/orchestrator/drains.rs", "bin/queen/src/jobs.rs"] {
        let text = read(&root().join(file));
        assert!(!text.contains("now_utc()"), "{file} reads the system clock; use the orchestrator's `now()`");
    }
}

#[test]
fn the_registry_knows_nothing_of_the_wire() {
    let manifest = read(&root().join("shared-crates/heartbeat-registry/Cargo.toml"));
    let deps = manifest.split("[dependencies]").nth(1).expect("dependencies").split("\n[").next().unwrap_or_default();
    for banned in ["serde", "axum", "reqwest", "hyper", "contract"] {
        assert!(
            !deps.lines().any(|l| l.trim_start().starts_with(banned)),
            "heartbeat-registry depends on {banned}; it must stay generic"
        );
    }
}

#[test]
fn architecture_names_every_crate() {
    let architecture = read(&root().join("ARCHITECTURE.md"));
    for member in members() {
        let name = member.rsplit('/').next().unwrap_or(&member).to_string();
        assert!(architecture.contains(&format!("`{name}`")), "ARCHITECTURE.md does not describe `{name}`");
    }
}

#[test]
fn readme_gives_the_two_commands() {
    let readme = read(&root().join("README.md"));
    assert!(readme.contains("cargo xtask dev"), "README must give the run command");
    assert!(readme.contains("cargo xtask test"), "README must give the test command");
    let ci = read(&root().join(".ci/run"));
    assert!(ci.contains("cargo xtask test"), ".ci/run must run the README's test command");
}

#[test]
fn main_files_stay_thin() {
    for bin in crate::PACKAGES {
        let main = read(&root().join(format!("bin/{bin}/src/main.rs")));
        let lines = main.lines().filter(|l| !l.trim().is_empty()).count();
        assert!(lines <= 60, "bin/{bin}/src/main.rs has {lines} lines; logic belongs in lib.rs");
    }
}

/// The crates one package depends on, as the lockfile names them (every feature's).
fn locked_dependencies(lock: &toml::Table, package: &str) -> Vec<String> {
    let packages = lock.get("package").and_then(|p| p.as_array()).cloned().unwrap_or_default();
    let find = |name: &str| packages.iter().find(|p| p.get("name").and_then(|n| n.as_str()) == Some(name)).cloned();
    let mut seen = std::collections::BTreeSet::new();
    let mut todo = vec![package.to_string()];
    while let Some(name) = todo.pop() {
        let Some(p) = find(&name) else { continue };
        for dep in p.get("dependencies").and_then(|d| d.as_array()).into_iter().flatten() {
            // "name" or "name version" when several versions are locked.
            let dep = dep.as_str().unwrap_or_default().split(' ').next().unwrap_or_default().to_string();
            if seen.insert(dep.clone()) {
                todo.push(dep);
            }
        }
    }
    seen.into_iter().collect()
}

#[test]
fn the_server_library_has_no_terminal_ui() {
    let lock: toml::Table = toml::from_str(&read(&root().join("Cargo.lock"))).expect("Cargo.lock parses");
    let deps = locked_dependencies(&lock, "queen");
    assert!(deps.iter().any(|d| d == "axum"), "the walk found queen's dependencies: {deps:?}");
    for ui in ["ratatui", "crossterm", "indicatif"] {
        assert!(!deps.iter().any(|d| d == ui), "queen depends on {ui}; terminal UI belongs in queen-cli");
    }
    let cli = locked_dependencies(&lock, "queen-cli");
    assert!(cli.iter().any(|d| d == "ratatui"), "queen-cli is where `top` lives");
}

#[test]
fn no_shared_crate_depends_on_a_bin_crate() {
    let bins: Vec<String> = members().into_iter().filter_map(|m| m.strip_prefix("bin/").map(str::to_string)).collect();
    assert!(bins.iter().any(|b| b == "queen"), "{bins:?}");
    for member in members().into_iter().filter(|m| m.starts_with("shared-crates/")) {
        let manifest: toml::Table =
            toml::from_str(&read(&root().join(&member).join("Cargo.toml"))).expect("manifest parses");
        for section in ["dependencies", "dev-dependencies", "build-dependencies"] {
            let Some(deps) = manifest.get(section).and_then(|d| d.as_table()) else { continue };
            for bin in &bins {
                assert!(!deps.contains_key(bin), "{member} depends on the bin crate {bin} ({section})");
            }
        }
    }
}
