//! Containment of a replica's whole process tree in a cgroup (v2) of its own.
//!
//! A process group alone loses a grandchild that calls `setsid` (or changes group), and a
//! parent-death signal reaches only the direct child: both would let a replica's children
//! outlive it, or the hive. A cgroup holds every descendant whatever it does, so the hive
//! kills a replica's tree by killing its cgroup (`cgroup.kill`), and a hive that was
//! `kill -9`ed kills, when it starts again, whatever its previous run left in its cgroups.
//!
//! Layout: `<cgroup2 mount><the hive's own cgroup>/<name>/<replica>.tree`, where `name` is the
//! hive's `cgroup` setting (`apiary-hive-<id>` by default; under systemd the unit needs
//! `Delegate=yes`). No controller is enabled by the hive: this is for membership. Where a
//! replica's cgroup has the cpu and memory controllers anyway, its limits are written there
//! ([`Cgroups::limit`]); elsewhere the supervisor watches its memory ([`Cgroups::memory`]).
//! Processes join their cgroup themselves before running anything (a `sh` that writes
//! its own pid, then `exec`s), so not even a program that forks at once can escape.
//! Where there is no writable cgroup2 (an old kernel, a container without it), the hive
//! says so and keeps to process groups.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The hive's cgroup, holding one child cgroup per replica.
#[derive(Debug)]
pub struct Cgroups {
    root: PathBuf,
}

impl Cgroups {
    /// Makes (or finds) `<mount><own cgroup>/<name>`; says why when it cannot.
    pub fn open(name: &str) -> Result<Self, String> {
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            return Err(format!("cgroup name {name:?} must be one plain path component"));
        }
        let (_, base) = base()?;
        let root = base.join(name);
        std::fs::create_dir_all(&root).map_err(|e| format!("cannot create {}: {e}", root.display()))?;
        if !root.join("cgroup.procs").exists() {
            return Err(format!("{} is not a cgroup", root.display()));
        }
        Ok(Self { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn dir(&self, group: &str) -> PathBuf {
        // Suffixed, so no group name can meet one of the kernel's `cgroup.*` files.
        self.root.join(format!("{group}.tree"))
    }

    /// A command that runs `program args` inside cgroup `group` (made if missing): it
    /// joins first, then becomes the program (same pid, so a parent-death signal set
    /// later still applies).
    pub fn command(&self, group: &str, program: &std::ffi::OsStr) -> std::io::Result<tokio::process::Command> {
        let dir = self.dir(group);
        std::fs::create_dir_all(&dir)?;
        let mut cmd = tokio::process::Command::new("/bin/sh");
        // `$0` is the cgroup's procs file and "$@" the program with its arguments. A failed
        // join leaves the process in the hive's cgroup, still in its own process group.
        cmd.arg("-c").arg(r#"{ echo $$ > "$0"; } 2>/dev/null; exec "$@""#).arg(dir.join("cgroup.procs")).arg(program);
        Ok(cmd)
    }

    /// Whether process `pid` is in cgroup `group` now.
    #[cfg(test)]
    pub fn holds(&self, group: &str, pid: u32) -> bool {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/cgroup")) else { return false };
        let Ok((mount, _)) = base() else { return false };
        own_cgroup(&text).is_some_and(|path| mount.join(path.trim_start_matches('/')) == self.dir(group))
    }

    /// SIGKILLs every process in cgroup `group`; how many there were.
    pub fn kill(&self, group: &str) -> usize {
        kill_all(&self.dir(group))
    }

    /// Removes cgroup `group` once it is empty; true when it is gone.
    /// Sets cgroup `group`'s CPU and memory limits where its controllers are enabled (the
    /// files exist only then; a hive whose own cgroup holds processes cannot enable them
    /// beneath it, which is the usual case). Whether the memory limit is the kernel's now.
    pub fn limit(&self, group: &str, cpu_millis: u64, memory_bytes: u64) -> bool {
        let dir = self.dir(group);
        if cpu_millis > 0 && dir.join("cpu.max").exists() {
            // `quota period`: cpu_millis thousandths of a core per 100 ms.
            let _ = std::fs::write(dir.join("cpu.max"), format!("{} 100000", cpu_millis * 100));
        }
        memory_bytes > 0 && std::fs::write(dir.join("memory.max"), memory_bytes.to_string()).is_ok()
    }

    /// The memory cgroup `group` uses: the kernel's count where the memory controller is
    /// on, else the resident memory of each of its processes, summed.
    pub fn memory(&self, group: &str) -> u64 {
        let dir = self.dir(group);
        if let Some(n) = std::fs::read_to_string(dir.join("memory.current")).ok().and_then(|t| t.trim().parse().ok()) {
            return n;
        }
        pids(&dir).into_iter().filter_map(|p| u32::try_from(p).ok()).map(resident).sum()
    }

    pub fn remove(&self, group: &str) -> bool {
        let dir = self.dir(group);
        !dir.exists() || std::fs::remove_dir(&dir).is_ok()
    }

    /// Kills and removes what an earlier run of this hive left behind (it was killed
    /// before it could stop its replicas' trees); how many processes that was.
    pub fn clear_leftovers(&self) -> usize {
        let Ok(entries) = std::fs::read_dir(&self.root) else { return 0 };
        let groups: Vec<PathBuf> = entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect();
        let killed = groups.iter().map(|dir| kill_all(dir)).sum();
        for dir in &groups {
            remove_when_empty(dir, Duration::from_secs(2));
        }
        killed
    }

    /// Removes the hive's own cgroup on its way out, once every replica's is gone.
    pub fn close(&self) {
        let _ = self.clear_leftovers();
        remove_when_empty(&self.root, Duration::from_secs(1));
    }
}

/// The cgroup2 mount and this process's own cgroup in it.
fn base() -> Result<(PathBuf, PathBuf), String> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| format!("no mountinfo: {e}"))?;
    let mount = cgroup2_mount(&mountinfo).ok_or("no cgroup2 filesystem is mounted")?;
    let own = std::fs::read_to_string("/proc/self/cgroup").map_err(|e| format!("no /proc/self/cgroup: {e}"))?;
    let own = own_cgroup(&own).ok_or("this process is in no cgroup2 cgroup")?;
    let base = mount.join(own.trim_start_matches('/'));
    Ok((mount, base))
}

/// Kills and removes every hive cgroup beside this process whose name starts with
/// `prefix`: how a test harness cleans up after hives it killed.
pub fn clear_all(prefix: &str) {
    let Ok((_, base)) = base() else { return };
    let Ok(entries) = std::fs::read_dir(&base) else { return };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(prefix) && entry.path().is_dir() {
            Cgroups { root: entry.path() }.close();
        }
    }
}

/// A process's resident memory in bytes (0 once it is gone).
pub fn resident(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib =
        status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next()?.parse().ok());
    kib.unwrap_or(0u64) * 1024
}

fn pids(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

fn kill_all(dir: &Path) -> usize {
    let found = pids(dir);
    if found.is_empty() {
        return 0;
    }
    // One write kills the whole tree, processes forking meanwhile included (Linux 5.14);
    // before that, each process in turn.
    if std::fs::write(dir.join("cgroup.kill"), "1").is_err() {
        for pid in &found {
            let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
        }
    }
    found.len()
}

/// A killed cgroup empties as its processes finish dying; it can be removed only then.
fn remove_when_empty(dir: &Path, within: Duration) {
    let deadline = std::time::Instant::now() + within;
    while std::fs::remove_dir(dir).is_err() && dir.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Where the cgroup2 filesystem is mounted, from `/proc/self/mountinfo` text (on a
/// hybrid system it is `/sys/fs/cgroup/unified`).
fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // `id parent major:minor root mount-point options [optional...] - fstype source super`
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        left.split_whitespace().nth(4).map(PathBuf::from)
    })
}

/// This process's cgroup2 path, from `/proc/<pid>/cgroup` text (the `0::` line).
fn own_cgroup(text: &str) -> Option<&str> {
    text.lines().find_map(|l| l.strip_prefix("0::"))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn the_cgroup2_mount_and_own_path_are_read_from_proc() {
        let hybrid = "24 30 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n\
                      25 24 0:23 / /sys/fs/cgroup/unified rw,nosuid shared:5 - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup2_mount(hybrid), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        assert_eq!(cgroup2_mount("24 30 0:22 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n"), None);
        assert_eq!(
            own_cgroup("4:memory:/x\n0::/system.slice/apiary-hive.service\n"),
            Some("/system.slice/apiary-hive.service")
        );
        assert_eq!(own_cgroup("4:memory:/x\n"), None);
        assert!(Cgroups::open("a/b").is_err() && Cgroups::open("..").is_err() && Cgroups::open("").is_err());
    }

    /// Cgroups for a test under a name no other test uses; `None` (said) where this
    /// machine has no writable cgroup2.
    pub(crate) fn for_test(tag: &str) -> Option<Cgroups> {
        match Cgroups::open(&format!("apiary-test-{tag}-{}", std::process::id())) {
            Ok(c) => Some(c),
            Err(why) => {
                eprintln!("skipped: no writable cgroup2 here ({why})");
                None
            }
        }
    }

    /// Whether `pid` is gone (a zombie waiting for a parent that is not ours counts).
    pub(crate) fn dead(pid: i32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map_or(true, |stat| stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z')))
    }

    pub(crate) async fn until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(std::time::Instant::now() < deadline, "timed out waiting until {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn a_later_run_kills_what_a_killed_hive_left_in_its_cgroups() {
        let Some(first) = for_test("leftovers") else { return };
        // A tree whose parent has gone and whose members left its process group: the state
        // a `kill -9`ed hive leaves when a replica's grandchild ignored the parent's death.
        let pidfile = std::env::temp_dir().join(format!("hive-orphan-{}", std::process::id()));
        let mut tree = first.command("web-0", std::ffi::OsStr::new("sh")).expect("command");
        let script = format!("setsid sleep 600 & echo $! > {}; wait", pidfile.display());
        let child = tree.arg("-c").arg(script).spawn().expect("spawned");
        let mut orphan = 0;
        until("the grandchild's pid is written", || {
            orphan = std::fs::read_to_string(&pidfile).ok().and_then(|t| t.trim().parse().ok()).unwrap_or(0);
            orphan > 0
        })
        .await;
        let _ = std::fs::remove_file(&pidfile);
        assert!(first.holds("web-0", orphan as u32), "the grandchild joined with its parent");
        std::mem::forget(child);
        assert!(!dead(orphan));

        let again = Cgroups::open(first.root().file_name().and_then(|n| n.to_str()).expect("name")).expect("reopened");
        assert!(again.clear_leftovers() >= 2, "the shell and the sleep it left");
        until("the orphan is dead", || dead(orphan)).await;
        again.close();
        assert!(!again.root().exists(), "the hive's cgroup is removed on its way out");
    }
}
