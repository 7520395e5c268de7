//! `cargo xtask schemathesis`: holds a real queen to its own OpenAPI document.
//!
//! Starts the built queen with all three tokens set, installs schemathesis (PyPI) into a
//! virtualenv under `target/` once, and lets it generate requests for a bounded time with
//! the admin token. It fails on any 5xx, any response that does not match the documented
//! schema (status, content type, headers, body), any request the schema forbids that the
//! queen accepts, and any call that works without its token.
//!
//! Left out, and why: the two SSE streams (endless responses), `POST /v1/jobs` (without
//! workers it is 503 by design), `POST /v1/cluster/shutdown` (it would stop the queen under
//! test); the `positive_data_acceptance` check (bodies the JSON schema allows but the
//! queen's validation refuses, like memory used above total, are 422 on purpose) and
//! `use_after_free` (`DELETE .../drain` cancels a drain; the record stays readable).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;

use crate::{Stopped, run, target_dir, wait_for};

/// Pinned so a new release cannot turn CI red on its own.
const SCHEMATHESIS: &str = "schemathesis==4.32.5";
const ADMIN: &str = "schemathesis-admin";

pub fn check(bin_dir: &Path, seconds: u32) -> anyhow::Result<()> {
    let tool = install()?;
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let data = target_dir().join("schemathesis-data");
    let _ = std::fs::remove_dir_all(&data);
    let queen = Command::new(bin_dir.join("queen"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(&data)
        .args(["--token", "schemathesis-cluster", "--admin-token", ADMIN, "--read-token", "schemathesis-read"])
        // Schemathesis makes the queen log thousands of refused drains and ACKs at warn.
        .env("RUST_LOG", "error")
        .spawn()
        .context("starting the queen")?;
    let queen = Stopped(queen);
    let base = format!("http://127.0.0.1:{port}");
    wait_for(port)?;
    run(Command::new(tool)
        .args(["run", &format!("{base}/v1/openapi.json"), "--url", &base])
        .args(["--header", &format!("Authorization: Bearer {ADMIN}")])
        .args(["--checks", "all", "--exclude-checks", "positive_data_acceptance,use_after_free"])
        .args(["--max-time", &seconds.to_string(), "--request-timeout", "5", "--no-color"])
        .args(["--exclude-path", "/v1/heartbeats/stream", "--exclude-path", "/v1/hives/{id}/commands"])
        .args(["--exclude-path", "/v1/jobs", "--exclude-name", "POST /v1/cluster/shutdown"])
        .args(["--seed", "20261124"]))?;
    drop(queen);
    Ok(())
}

/// The virtualenv's `schemathesis`, installed on first use.
fn install() -> anyhow::Result<PathBuf> {
    let venv = target_dir().join("schemathesis-venv");
    let tool = venv.join("bin/schemathesis");
    if tool.exists() {
        return Ok(tool);
    }
    let made = Command::new("python3").args(["-m", "venv"]).arg(&venv).status().is_ok_and(|s| s.success());
    if !made {
        // Debian splits venv out of python3.
        crate::web::ensure_apt(&["python3", "python3-venv"])?;
        run(Command::new("/usr/bin/python3").args(["-m", "venv"]).arg(&venv))?;
    }
    run(Command::new(venv.join("bin/pip")).args(["install", "--quiet", SCHEMATHESIS]))?;
    Ok(tool)
}
