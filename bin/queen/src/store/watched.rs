//! `Watched`: the store as the queen holds it, remembering whether writes fail.

use time::OffsetDateTime;

use super::{Batch, JobRoute, Persisted, Store, StoreError};

/// A store that remembers whether its last write failed: readiness and the dashboard say
/// so (a queen whose disk is full, or whose etcd is down, answers its API with 503
/// `store_unavailable` and changes nothing), and the first write or probe that succeeds
/// again clears it.
pub struct Watched {
    inner: Box<dyn Store>,
    failing: std::sync::Mutex<Option<WriteFailure>>,
}

#[derive(Clone, Debug)]
pub struct WriteFailure {
    pub error: String,
    pub since: std::time::Instant,
}

impl WriteFailure {
    pub fn text(&self) -> String {
        format!(
            "store writes failing for {} s: {}; changes are refused (503 store_unavailable) until the store takes writes again",
            self.since.elapsed().as_secs(),
            self.error
        )
    }
}

impl Watched {
    pub fn new(inner: Box<dyn Store>) -> Self {
        Self { inner, failing: std::sync::Mutex::new(None) }
    }

    /// The write failure not yet followed by a successful write, if any.
    pub fn failure(&self) -> Option<WriteFailure> {
        self.failing.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn note<T>(&self, out: Result<T, StoreError>) -> Result<T, StoreError> {
        let mut failing = self.failing.lock().unwrap_or_else(|p| p.into_inner());
        match &out {
            Ok(_) => *failing = None,
            // A deposed leader's refused write says nothing about the store.
            Err(StoreError::NotLeader(_)) => {}
            Err(e) => {
                let since = failing.as_ref().map_or_else(std::time::Instant::now, |f| f.since);
                *failing = Some(WriteFailure { error: e.to_string(), since });
            }
        }
        out
    }
}

impl Store for Watched {
    fn load(&self) -> Result<Persisted, StoreError> {
        self.inner.load()
    }

    fn apply(&self, batch: &Batch) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        self.note(self.inner.apply(batch))
    }

    fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping()?;
        if self.failure().is_none() {
            return Ok(());
        }
        self.note(self.inner.probe())?;
        Ok(())
    }

    fn probe(&self) -> Result<(), StoreError> {
        self.note(self.inner.probe())
    }

    fn job_route(&self, key: &str) -> Result<Option<JobRoute>, StoreError> {
        self.inner.job_route(key)
    }

    fn put_job_route(&self, key: &str, route: &JobRoute) -> Result<(), StoreError> {
        self.note(self.inner.put_job_route(key, route))
    }

    fn forget_job_routes(&self, before: OffsetDateTime) -> Result<usize, StoreError> {
        self.note(self.inner.forget_job_routes(before))
    }

    fn next_term(&self) -> Result<u64, StoreError> {
        self.note(self.inner.next_term())
    }

    fn append_audit(&self, entry: &contract::AuditEntry) -> Result<u64, StoreError> {
        // A small append may fit where a deployment does not: its success proves too little
        // to clear a failure, its failure is one.
        let out = self.inner.append_audit(entry);
        if out.is_err() {
            return self.note(out);
        }
        out
    }

    fn audit(&self, limit: usize) -> Result<Vec<contract::AuditEntry>, StoreError> {
        self.inner.audit(limit)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use axum::http::Method;
    use serde_json::json;

    use super::*;
    use crate::store::testing::Flaky;
    use crate::testing;

    #[test]
    fn a_failed_write_is_remembered_until_one_succeeds() -> Result<(), StoreError> {
        let flaky = Arc::new(Flaky::default());
        let store = Watched::new(Box::new(Arc::clone(&flaky)));
        let batch = Batch { strategy: Some(contract::PlacementStrategy::RoundRobin), ..Default::default() };
        store.apply(&batch)?;
        assert!(store.failure().is_none());
        flaky.set_failing(true);
        assert!(store.apply(&batch).is_err());
        let first = store.failure().map(|f| f.since);
        assert!(store.apply(&batch).is_err());
        assert_eq!(store.failure().map(|f| f.since), first, "the failure dates from the first refused write");
        // Readiness probes with a write while the failure stands, and fails with it.
        assert!(store.ping().is_err());
        // An audit entry that fits proves too little to clear it.
        store.append_audit(&contract::AuditEntry {
            seq: 0,
            at: OffsetDateTime::UNIX_EPOCH,
            who: "t".into(),
            method: "POST".into(),
            path: "/".into(),
            status: 503,
            outcome: "store_unavailable".into(),
            queen: "q".into(),
        })?;
        assert!(store.failure().is_some());
        flaky.set_failing(false);
        store.ping()?;
        assert!(store.failure().is_none(), "a probe that writes clears it");
        Ok(())
    }

    /// A small tmpfs mounted for the test, unmounted (and its directory removed) on drop.
    struct SmallFs(std::path::PathBuf);

    impl SmallFs {
        /// `None` when this process may not mount (not root): said on stderr.
        fn mount(bytes: u64) -> anyhow::Result<Option<Self>> {
            let dir = std::env::temp_dir().join(format!(
                "queen-full-{}-{}",
                std::process::id(),
                contract::Epoch::for_new_process().0
            ));
            std::fs::create_dir_all(&dir)?;
            let out = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
                .arg(&dir)
                .output()?;
            if !out.status.success() {
                let _ = std::fs::remove_dir(&dir);
                let uid = std::process::Command::new("id").arg("-u").output()?;
                anyhow::ensure!(
                    String::from_utf8_lossy(&uid.stdout).trim() != "0",
                    "root could not mount a tmpfs: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                eprintln!("skipped: mounting a tmpfs needs root ({})", String::from_utf8_lossy(&out.stderr).trim());
                return Ok(None);
            }
            Ok(Some(Self(dir)))
        }

        /// Writes a file until the filesystem is full.
        fn fill(&self) -> anyhow::Result<std::path::PathBuf> {
            use std::io::Write;
            let path = self.0.join("filler");
            let mut file = std::fs::File::create(&path)?;
            let chunk = vec![0x55u8; 4096];
            loop {
                match file.write_all(&chunk).and_then(|()| file.sync_all()) {
                    Ok(()) => {}
                    Err(e) if e.raw_os_error() == Some(28) => return Ok(path),
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }

    impl Drop for SmallFs {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
            let _ = std::fs::remove_dir(&self.0);
        }
    }

    fn deployment(name: &str) -> String {
        // Large enough that it cannot hide in a page redb already has.
        let arg = "x".repeat(4000);
        json!({"name": name, "command": "/bin/true", "replicas": 0, "args": vec![arg; 16]}).to_string()
    }

    #[tokio::test]
    async fn a_queen_whose_disk_fills_refuses_changes_whole_and_recovers_by_itself() -> anyhow::Result<()> {
        let Some(fs) = SmallFs::mount(4 << 20)? else { return Ok(()) };
        let data = fs.0.join("data");
        let q = testing::queen(move |c| c.data_dir = Some(data))?;
        assert_eq!(q.call(Method::POST, "/v1/deployments", None, &deployment("before")).await.0, 201);
        let filler = fs.fill()?;

        // Every change is refused whole while the disk is full, with the one error code.
        let (status, body) = q.call(Method::POST, "/v1/deployments", None, &deployment("during")).await;
        assert_eq!(status, 503, "{body}");
        assert!(body.contains("store_unavailable"), "{body}");
        let (_, list) = q.call(Method::GET, "/v1/deployments", None, "").await;
        assert!(list.contains("\"before\"") && !list.contains("\"during\""), "nothing half-changed: {list}");
        let (status, ready) = q.call(Method::GET, "/readyz", None, "").await;
        assert_eq!(status, 503, "{ready}");
        assert!(ready.contains("store writes failing"), "{ready}");
        q.queen.publish_snapshot();
        let (_, snap) = q.call(Method::GET, "/v1/snapshot", None, "").await;
        assert!(snap.contains("store writes failing"), "the dashboard's banner says it: {snap}");

        // Room again: the queen takes writes with no restart.
        std::fs::remove_file(filler)?;
        let (status, ready) = q.call(Method::GET, "/readyz", None, "").await;
        assert_eq!(status, 200, "readiness recovers by itself: {ready}");
        assert_eq!(q.call(Method::POST, "/v1/deployments", None, &deployment("after")).await.0, 201);
        let (_, list) = q.call(Method::GET, "/v1/deployments", None, "").await;
        assert!(list.contains("\"after\"") && !list.contains("\"during\""), "{list}");
        drop(q);
        Ok(())
    }
}
