//! `cargo xtask dist`: what an operator installs. A release build of the three binaries
//! (the queen with etcd support and the dashboard inside it) packed two ways:
//!
//! - `target/dist/apiary-<version>-<target>.tar.gz`: `bin/`, `share/man/man1`, shell
//!   completions, systemd units, example configs, the alert rules and Grafana dashboard,
//!   and `INSTALL.md`;
//! - `target/dist/apiary_<version>_<arch>.deb`: binaries in `/usr/bin`, units in
//!   `/usr/lib/systemd/system`, the `apiary` system user (sysusers), `/var/lib/apiary`,
//!   configs as conffiles in `/etc/apiary`.
//!
//! `--check` then tries both as an operator would: the queen from the tarball serves its
//! dashboard with no flags (with the build's copy of the dashboard moved away, so only the
//! one inside the binary can answer), the units pass `systemd-analyze verify`, and the .deb
//! installs into a throwaway root with dpkg (maintainer scripts included), then removes
//! and purges cleanly.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail, ensure};

use crate::{PACKAGES, cargo, root, run, target_dir, web};

#[derive(clap::Args)]
pub struct DistArgs {
    /// After building, install and try both artifacts.
    #[arg(long)]
    pub check: bool,
}

const VERSION: &str = env!("CARGO_PKG_VERSION");
const BINARIES: [&str; 3] = ["queen", "hive", "worker"];
const UNITS: [&str; 2] = ["apiary-queen.service", "apiary-hive.service"];
/// The example configs, in `deploy/config`; the .deb installs them as conffiles.
const CONFIGS: [&str; 4] = ["queen.toml", "hive.toml", "queen.env", "hive.env"];

pub struct Artifacts {
    pub tarball: PathBuf,
    pub deb: PathBuf,
    /// The tarball's unpacked tree.
    pub stage: PathBuf,
}

pub fn run_dist(args: DistArgs) -> anyhow::Result<()> {
    let artifacts = build()?;
    if args.check {
        check(&artifacts)?;
    }
    Ok(())
}

fn dist_dir() -> PathBuf {
    target_dir().join("dist")
}

fn release_bin_dir() -> PathBuf {
    target_dir().join("release")
}

fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("starting {:?}", cmd.get_program()))?;
    ensure!(out.status.success(), "{:?} failed: {}", cmd.get_program(), String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn host_triple() -> anyhow::Result<String> {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let info = output(Command::new(rustc).arg("-vV"))?;
    info.lines().find_map(|l| l.strip_prefix("host: ")).map(str::to_string).context("rustc -vV names no host")
}

fn deb_arch() -> anyhow::Result<String> {
    Ok(output(Command::new("dpkg").arg("--print-architecture"))?.trim().to_string())
}

fn copy(from: &Path, to: &Path) -> anyhow::Result<()> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::copy(from, to).with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", path.display()))
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// Man pages and completions, made by the binaries themselves from their clap definitions.
struct Docs {
    man_dir: PathBuf,
    /// (binary, shell, script)
    completions: Vec<(&'static str, &'static str, String)>,
}

fn docs(bin_dir: &Path, scratch: &Path) -> anyhow::Result<Docs> {
    let man_dir = scratch.join("man");
    let _ = std::fs::remove_dir_all(&man_dir);
    let mut completions = Vec::new();
    for bin in BINARIES {
        run(Command::new(bin_dir.join(bin)).args(["man", "--dir"]).arg(&man_dir))?;
        for shell in ["bash", "zsh", "fish"] {
            completions.push((bin, shell, output(Command::new(bin_dir.join(bin)).args(["completions", shell]))?));
        }
    }
    Ok(Docs { man_dir, completions })
}

fn man_pages(docs: &Docs) -> anyhow::Result<Vec<PathBuf>> {
    let mut pages: Vec<PathBuf> =
        std::fs::read_dir(&docs.man_dir)?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>()?;
    pages.sort();
    Ok(pages)
}

pub fn build() -> anyhow::Result<Artifacts> {
    let started = std::time::Instant::now();
    web::build()?;
    web::ensure_apt(&["protobuf-compiler"])?;
    let mut build = cargo();
    // The dashboard `xtask web` just laid out beside the release binaries, named
    // explicitly so that the build embeds exactly it.
    build.env("APIARY_DASHBOARD_DIR", release_bin_dir().join("dashboard"));
    build.args(["build", "--release", "--features", "queen/etcd"]);
    for p in PACKAGES {
        build.args(["-p", p]);
    }
    run(&mut build)?;
    let bin_dir = release_bin_dir();
    let dist = dist_dir();
    std::fs::create_dir_all(&dist)?;
    let docs = docs(&bin_dir, &dist)?;
    let tarball = tarball(&bin_dir, &docs)?;
    let deb = deb(&bin_dir, &docs)?;
    eprintln!("xtask dist: {} and {} after {:.0} s", tarball.display(), deb.display(), started.elapsed().as_secs_f64());
    let stage = dist.join(format!("apiary-{VERSION}-{}", host_triple()?));
    Ok(Artifacts { tarball, deb, stage })
}

fn tarball(bin_dir: &Path, docs: &Docs) -> anyhow::Result<PathBuf> {
    let name = format!("apiary-{VERSION}-{}", host_triple()?);
    let stage = dist_dir().join(&name);
    let _ = std::fs::remove_dir_all(&stage);
    let deploy = root().join("deploy");
    for bin in BINARIES {
        install_binary(&bin_dir.join(bin), &stage.join("bin").join(bin))?;
    }
    for page in man_pages(docs)? {
        copy(&page, &stage.join("share/man/man1").join(page.file_name().context("page name")?))?;
    }
    for (bin, shell, script) in &docs.completions {
        write(&stage.join("share/completions").join(shell).join(completion_name(bin, shell)), script)?;
    }
    for unit in UNITS {
        copy(&deploy.join("systemd").join(unit), &stage.join("systemd").join(unit))?;
    }
    for file in CONFIGS {
        copy(&deploy.join("config").join(file), &stage.join("config").join(file))?;
    }
    for file in ["prometheus/apiary-alerts.yml", "prometheus/apiary-alerts.test.yml", "grafana/apiary.json"] {
        copy(&deploy.join(file), &stage.join(file))?;
    }
    copy(&deploy.join("debian/sysusers.conf"), &stage.join("systemd/apiary.sysusers.conf"))?;
    copy(&root().join("deploy/INSTALL.md"), &stage.join("INSTALL.md"))?;
    let tarball = dist_dir().join(format!("{name}.tar.gz"));
    run(Command::new("tar")
        .arg("-C")
        .arg(dist_dir())
        .arg("-czf")
        .arg(&tarball)
        .args(["--owner=0", "--group=0"])
        .arg(&name))?;
    Ok(tarball)
}

/// A release binary without its symbols (a third of its size).
fn install_binary(from: &Path, to: &Path) -> anyhow::Result<()> {
    copy(from, to)?;
    run(Command::new("strip").arg(to))
}

/// Where each shell looks for a command's completions, by the file's name.
fn completion_name(bin: &str, shell: &str) -> String {
    match shell {
        "zsh" => format!("_{bin}"),
        "fish" => format!("{bin}.fish"),
        _ => bin.to_string(),
    }
}

fn completion_dir(shell: &str) -> &'static str {
    match shell {
        "zsh" => "usr/share/zsh/vendor-completions",
        "fish" => "usr/share/fish/vendor_completions.d",
        _ => "usr/share/bash-completion/completions",
    }
}

fn deb(bin_dir: &Path, docs: &Docs) -> anyhow::Result<PathBuf> {
    let arch = deb_arch()?;
    let root_dir = dist_dir().join("deb-root");
    let _ = std::fs::remove_dir_all(&root_dir);
    let deploy = root().join("deploy");
    for bin in BINARIES {
        install_binary(&bin_dir.join(bin), &root_dir.join("usr/bin").join(bin))?;
    }
    for unit in UNITS {
        copy(&deploy.join("systemd").join(unit), &root_dir.join("usr/lib/systemd/system").join(unit))?;
    }
    for page in man_pages(docs)? {
        let target = root_dir.join("usr/share/man/man1").join(page.file_name().context("page name")?);
        copy(&page, &target)?;
        run(Command::new("gzip").args(["-9n"]).arg(&target))?;
    }
    for (bin, shell, script) in &docs.completions {
        write(&root_dir.join(completion_dir(shell)).join(completion_name(bin, shell)), script)?;
    }
    for file in CONFIGS {
        let target = root_dir.join("etc/apiary").join(file);
        copy(&deploy.join("config").join(file), &target)?;
        // The env files hold tokens: not readable by others from the moment dpkg unpacks
        // them (postinst gives the configs the apiary group).
        set_mode(&target, if file.ends_with(".env") { 0o600 } else { 0o640 })?;
    }
    copy(&deploy.join("debian/sysusers.conf"), &root_dir.join("usr/lib/sysusers.d/apiary.conf"))?;
    for file in ["prometheus/apiary-alerts.yml", "grafana/apiary.json"] {
        copy(&deploy.join(file), &root_dir.join("usr/share/apiary").join(file))?;
    }
    write(
        &root_dir.join("usr/share/doc/apiary/copyright"),
        "Apiary, a cluster control plane.\nLicense: Apache-2.0\n On Debian systems the license is in /usr/share/common-licenses/Apache-2.0.\n",
    )?;
    std::fs::create_dir_all(root_dir.join("var/lib/apiary"))?;

    let control_dir = root_dir.join("DEBIAN");
    let installed_kib = output(Command::new("du").args(["-sk", "--exclude=DEBIAN"]).arg(&root_dir))?
        .split_whitespace()
        .next()
        .unwrap_or("0")
        .to_string();
    write(
        &control_dir.join("control"),
        &format!(
            "Package: apiary\nVersion: {VERSION}\nArchitecture: {arch}\nMaintainer: Apiary developers <apiary@example.org>\n\
             Installed-Size: {installed_kib}\nDepends: libc6 (>= 2.34), libgcc-s1\nRecommends: systemd\nSection: admin\nPriority: optional\n\
             Homepage: https://example.org/apiary\n\
             Description: cluster control plane for fleets of worker processes\n \
             A queen (the hub) knows which hives (one node agent per machine) and which\n \
             workers are alive, streams the cluster live to its web dashboard, places\n \
             deployments on hives and shuts the whole cluster down in order.\n"
        ),
    )?;
    let conffiles: String = CONFIGS.iter().map(|f| format!("/etc/apiary/{f}\n")).collect();
    write(&control_dir.join("conffiles"), &conffiles)?;
    for script in ["postinst", "prerm", "postrm"] {
        copy(&deploy.join("debian").join(script), &control_dir.join(script))?;
        set_mode(&control_dir.join(script), 0o755)?;
    }
    let deb = dist_dir().join(format!("apiary_{VERSION}_{arch}.deb"));
    run(Command::new("dpkg-deb").args(["--root-owner-group", "-Zxz", "--build"]).arg(&root_dir).arg(&deb))?;
    Ok(deb)
}

/// Moves a directory aside and puts it back however the check ends.
struct Aside {
    from: PathBuf,
    to: PathBuf,
}

impl Aside {
    fn new(from: PathBuf) -> anyhow::Result<Self> {
        let to = from.with_extension("aside");
        let _ = std::fs::remove_dir_all(&to);
        if from.exists() {
            std::fs::rename(&from, &to)?;
        }
        Ok(Self { from, to })
    }
}

impl Drop for Aside {
    fn drop(&mut self) {
        if self.to.exists() {
            let _ = std::fs::remove_dir_all(&self.from);
            let _ = std::fs::rename(&self.to, &self.from);
        }
    }
}

pub fn check(a: &Artifacts) -> anyhow::Result<()> {
    check_tarball(a)?;
    check_units()?;
    check_deb(a)?;
    eprintln!(
        "xtask dist --check: the tarball's queen serves its dashboard; the units verify; the .deb installs, removes and purges"
    );
    Ok(())
}

fn get(url: &str) -> anyhow::Result<(u16, String, Vec<u8>)> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(std::time::Duration::from_secs(10)))
        .http_status_as_error(false)
        .build()
        .into();
    let mut resp = agent.get(url).call()?;
    let kind = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let body = resp.body_mut().with_config().limit(64 << 20).read_to_vec()?;
    Ok((resp.status().as_u16(), kind, body))
}

fn check_tarball(a: &Artifacts) -> anyhow::Result<()> {
    let scratch = dist_dir().join("check-tarball");
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch)?;
    run(Command::new("tar").arg("-xzf").arg(&a.tarball).arg("-C").arg(&scratch))?;
    let top = scratch.join(a.stage.file_name().context("stage name")?);
    let queen = top.join("bin/queen");
    let version = output(Command::new(&queen).arg("--version"))?;
    ensure!(version.contains(VERSION), "queen --version says {version}");
    ensure!(output(Command::new(&queen).args(["completions", "bash"]))?.contains("_queen()"), "bash completions");
    for page in ["queen.1", "queen-serve.1", "hive.1", "worker.1"] {
        ensure!(top.join("share/man/man1").join(page).is_file(), "the tarball lacks {page}");
    }
    // Only the copy inside the binary can answer now.
    let _aside = Aside::new(release_bin_dir().join("dashboard"))?;
    let _aside_debug = Aside::new(web::dist_dir())?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let child = Command::new(&queen)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(scratch.join("data"))
        .env_remove("APIARY_UI_DIR")
        .env_remove("APIARY_CONFIG")
        .env("RUST_LOG", "warn")
        .spawn()
        .context("starting the tarball's queen")?;
    let _queen = crate::Stopped(child);
    crate::wait_for(port)?;
    let (status, _, page) = get(&format!("http://127.0.0.1:{port}/"))?;
    let page = String::from_utf8_lossy(&page);
    ensure!(status == 200 && page.contains("./pkg/web-ui.js"), "the queen serves no dashboard ({status}): {page}");
    let (status, kind, wasm) = get(&format!("http://127.0.0.1:{port}/pkg/web-ui_bg.wasm"))?;
    ensure!(status == 200 && kind == "application/wasm" && wasm.starts_with(b"\0asm"), "the wasm: {status} {kind}");
    eprintln!(
        "xtask dist --check: the tarball's queen serves the dashboard from inside itself ({} KiB wasm)",
        wasm.len() / 1024
    );
    Ok(())
}

fn have(program: &str) -> bool {
    Command::new(program).arg("--version").output().is_ok_and(|o| o.status.success())
}

/// `systemd-analyze verify` on the units. It resolves what they name on this machine, so
/// the copies it checks point at the packaged binaries (the only change); man pages are
/// not looked up (the packaged ones are not installed here).
fn check_units() -> anyhow::Result<()> {
    if !have("systemd-analyze") {
        eprintln!("xtask dist --check: no systemd-analyze here; the units are not verified");
        return Ok(());
    }
    let root_dir = dist_dir().join("deb-root");
    let scratch = dist_dir().join("check-units");
    let _ = std::fs::remove_dir_all(&scratch);
    let mut units = Vec::new();
    for unit in UNITS {
        let text = std::fs::read_to_string(root_dir.join("usr/lib/systemd/system").join(unit))?;
        let here = text.replace("=/usr/bin/", &format!("={}/usr/bin/", root_dir.display()));
        write(&scratch.join(unit), &here)?;
        units.push(scratch.join(unit));
    }
    let out = Command::new("systemd-analyze").args(["verify", "--man=no"]).args(&units).output()?;
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    ensure!(out.status.success() && said.trim().is_empty(), "systemd-analyze verify: {said}");
    Ok(())
}

fn check_deb(a: &Artifacts) -> anyhow::Result<()> {
    let target = dist_dir().join("check-root");
    let _ = std::fs::remove_dir_all(&target);
    for dir in ["var/lib/dpkg/info", "var/lib/dpkg/updates", "var/lib/dpkg/triggers", "etc"] {
        std::fs::create_dir_all(target.join(dir))?;
    }
    write(&target.join("var/lib/dpkg/status"), "")?;
    write(&target.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
    write(&target.join("etc/group"), "root:x:0:\n")?;
    for file in ["etc/shadow", "etc/gshadow"] {
        write(&target.join(file), "")?;
    }
    let dpkg = |args: &[&str]| -> anyhow::Result<String> {
        let mut cmd = Command::new("dpkg");
        cmd.arg(format!("--root={}", target.display())).args([
            "--force-script-chrootless",
            "--force-depends",
            "--log=/dev/null",
        ]);
        if !nix::unistd::Uid::effective().is_root() {
            cmd.arg("--force-not-root");
        }
        output(cmd.args(args))
    };
    let said = dpkg(&["-i", &a.deb.to_string_lossy()])?;
    ensure!(said.contains("systemctl enable --now apiary-queen"), "postinst ran: {said}");
    let version = output(Command::new(target.join("usr/bin/queen")).arg("--version"))?;
    ensure!(version.contains(VERSION), "installed queen --version: {version}");
    for file in [
        "usr/bin/hive",
        "usr/bin/worker",
        "usr/lib/systemd/system/apiary-queen.service",
        "usr/lib/systemd/system/apiary-hive.service",
        "usr/share/man/man1/queen-serve.1.gz",
        "usr/share/bash-completion/completions/queen",
        "usr/share/zsh/vendor-completions/_hive",
        "etc/apiary/queen.toml",
        "usr/share/apiary/prometheus/apiary-alerts.yml",
    ] {
        ensure!(target.join(file).exists(), "the .deb did not install /{file}");
    }
    let passwd = std::fs::read_to_string(target.join("etc/passwd"))?;
    let uid: u32 = passwd
        .lines()
        .find_map(|l| l.strip_prefix("apiary:"))
        .and_then(|rest| rest.split(':').nth(1)?.parse().ok())
        .with_context(|| format!("postinst made no apiary user: {passwd}"))?;
    use std::os::unix::fs::MetadataExt;
    let state = std::fs::metadata(target.join("var/lib/apiary"))?;
    ensure!(
        state.uid() == uid && state.mode() & 0o777 == 0o750,
        "/var/lib/apiary: uid {} mode {:o}",
        state.uid(),
        state.mode()
    );
    let env = std::fs::metadata(target.join("etc/apiary/queen.env"))?;
    ensure!(env.mode() & 0o777 == 0o600, "queen.env is readable by others: {:o}", env.mode());
    // Remove keeps the edited configs (conffiles); purge takes them too.
    dpkg(&["-r", "apiary"])?;
    ensure!(!target.join("usr/bin/queen").exists(), "remove left /usr/bin/queen");
    ensure!(target.join("etc/apiary/queen.toml").exists(), "remove took the config");
    dpkg(&["--purge", "apiary"])?;
    ensure!(!target.join("etc/apiary/queen.toml").exists(), "purge left the config");
    if target.join("usr/lib/systemd/system/apiary-queen.service").exists() {
        bail!("purge left the units");
    }
    Ok(())
}
