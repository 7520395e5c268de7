//! The etcd store: the queen's durable state under `<prefix>/state/`, job routes under
//! `<prefix>/jobs/`, every write one transaction fenced on the leader key.

use super::*;

fn decode<T: serde::de::DeserializeOwned>(key: &str, value: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(value).map_err(|e| StoreError::Corrupt(format!("{key}: {e}")))
}

fn encode<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// Keys per page to start with; a page too large for one answer is asked again halved.
const PAGE: i64 = 512;

/// The first key after every key that starts with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // All 0xff: to the end of the keyspace.
    vec![0]
}

/// Whether etcd's answer was refused for its size (the client takes 4 MiB at most).
fn too_large(e: &etcd_client::Error) -> bool {
    // gRPC's codes: RESOURCE_EXHAUSTED (8) from the server, OUT_OF_RANGE (11) from the
    // client's decoder.
    matches!(e, etcd_client::Error::GRpcStatus(s) if matches!(s.code() as i32, 8 | 11))
}

/// Every key under `prefix`, in pages read at one revision: one answer is capped in size,
/// and the state (a deployment may carry a megabyte of arguments) or tens of thousands of
/// job routes pass that cap.
async fn range_all(mut c: Client, prefix: String) -> Result<Vec<etcd_client::KeyValue>, StoreError> {
    let end = prefix_end(prefix.as_bytes());
    let mut start = prefix.into_bytes();
    let (mut out, mut revision, mut limit) = (Vec::new(), 0, PAGE);
    loop {
        let options = GetOptions::new().with_range(end.clone()).with_limit(limit).with_revision(revision);
        match c.get(start.clone(), Some(options)).await {
            Ok(mut resp) => {
                if revision == 0 {
                    revision = resp.header().map_or(0, |h| h.revision());
                }
                let more = resp.more();
                let kvs = resp.take_kvs();
                if let Some(last) = kvs.last() {
                    start = last.key().to_vec();
                    start.push(0);
                }
                out.extend(kvs);
                if !more {
                    return Ok(out);
                }
            }
            Err(e) if limit > 1 && too_large(&e) => limit /= 2,
            Err(e) => return Err(backend(e)),
        }
    }
}

impl Store for Peer {
    fn load(&self) -> Result<Persisted, StoreError> {
        let kvs = self.call(range_all(self.client.clone(), self.keys.state.clone()))?;
        let mut out = Persisted::default();
        for kv in kvs {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let Some(rest) = key.strip_prefix(&self.keys.state) else { continue };
            let value = kv.value();
            match rest.split_once('/') {
                Some(("deployments", name)) => {
                    let id = NodeId::new(name).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                    out.deployments.insert(id, decode::<DeploymentRecord>(&key, value)?);
                }
                Some(("assignments", name)) => {
                    let id = NodeId::new(name).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                    out.assignments.insert(id, decode(&key, value)?);
                }
                Some(("meta", "strategy")) => out.strategy = Some(decode(&key, value)?),
                Some(("meta", "shutdown")) => out.shutdown = Some(decode(&key, value)?),
                Some(("meta", "ineligible")) => out.ineligible = decode(&key, value)?,
                Some(("meta", "drains")) => out.drains = decode(&key, value)?,
                _ => tracing::warn!(%key, "unknown key under the state prefix; ignored"),
            }
        }
        Ok(out)
    }

    /// Fenced (see [`Peer::fenced`]).
    fn apply(&self, batch: &Batch) -> Result<(), StoreError> {
        let mut ops = Vec::new();
        for d in &batch.put_deployments {
            ops.push(TxnOp::put(self.state_key("deployments", d.spec.name.as_str()), encode(d)?, None));
        }
        for name in &batch.delete_deployments {
            ops.push(TxnOp::delete(self.state_key("deployments", name.as_str()), None));
        }
        for a in &batch.put_assignments {
            ops.push(TxnOp::put(self.state_key("assignments", a.key().as_str()), encode(a)?, None));
        }
        for w in &batch.delete_assignments {
            ops.push(TxnOp::delete(self.state_key("assignments", w.as_str()), None));
        }
        if let Some(s) = batch.strategy {
            ops.push(TxnOp::put(self.state_key("meta", "strategy"), encode(&s)?, None));
        }
        if let Some(s) = &batch.shutdown {
            ops.push(TxnOp::put(self.state_key("meta", "shutdown"), encode(s)?, None));
        }
        if let Some(set) = &batch.ineligible {
            ops.push(TxnOp::put(self.state_key("meta", "ineligible"), encode(set)?, None));
        }
        if let Some(drains) = &batch.drains {
            ops.push(TxnOp::put(self.state_key("meta", "drains"), encode(drains)?, None));
        }
        self.fenced(ops)
    }

    fn ping(&self) -> Result<(), StoreError> {
        let mut c = self.client.clone();
        let key = self.keys.election.clone();
        self.call(
            async move { c.get(key, Some(GetOptions::new().with_count_only())).await.map(|_| ()).map_err(backend) },
        )
    }

    fn job_route(&self, key: &str) -> Result<Option<JobRoute>, StoreError> {
        let mut c = self.client.clone();
        let full = format!("{}{key}", self.keys.jobs);
        let kvs = self.call(async move { Ok(c.get(full, None).await.map_err(backend)?.take_kvs()) })?;
        kvs.first().map(|kv| decode(&format!("job {key}"), kv.value())).transpose()
    }

    fn put_job_route(&self, key: &str, route: &JobRoute) -> Result<(), StoreError> {
        self.fenced(vec![TxnOp::put(format!("{}{key}", self.keys.jobs), encode(route)?, None)])
    }

    fn forget_job_routes(&self, before: OffsetDateTime) -> Result<usize, StoreError> {
        let kvs = self.call(range_all(self.client.clone(), self.keys.jobs.clone()))?;
        // A record that does not decode is dropped too: it could only stop a retry.
        let ops: Vec<TxnOp> = kvs
            .iter()
            .filter(|kv| serde_json::from_slice::<JobRoute>(kv.value()).map_or(true, |r| r.at < before))
            .map(|kv| TxnOp::delete(kv.key().to_vec(), None))
            .collect();
        let removed = ops.len();
        self.fenced(ops)?;
        Ok(removed)
    }

    /// The term this queen leads in: its leader key's revision, which etcd never gives out
    /// twice.
    fn next_term(&self) -> Result<u64, StoreError> {
        Ok(self.fence()?.1.max(0) as u64)
    }

    /// Fenced: only the leader answers admin calls, so only it appends.
    fn append_audit(&self, entry: &contract::AuditEntry) -> Result<u64, StoreError> {
        let seq = self.audit(1)?.last().map_or(0, |e| e.seq) + 1;
        let entry = contract::AuditEntry { seq, ..entry.clone() };
        let mut ops = vec![TxnOp::put(format!("{}{seq:020}", self.keys.audit), encode(&entry)?, None)];
        if let Some(old) = seq.checked_sub(crate::store::AUDIT_KEPT) {
            ops.push(TxnOp::delete(format!("{}{old:020}", self.keys.audit), None));
        }
        self.fenced(ops)?;
        Ok(seq)
    }

    fn audit(&self, limit: usize) -> Result<Vec<contract::AuditEntry>, StoreError> {
        let mut c = self.client.clone();
        let prefix = self.keys.audit.clone();
        let options = GetOptions::new()
            .with_prefix()
            .with_sort(SortTarget::Key, SortOrder::Descend)
            .with_limit(limit.min(i64::MAX as usize) as i64);
        let kvs = self.call(async move { Ok(c.get(prefix, Some(options)).await.map_err(backend)?.take_kvs()) })?;
        let mut out = kvs
            .iter()
            .map(|kv| decode(&String::from_utf8_lossy(kv.key()), kv.value()))
            .collect::<Result<Vec<contract::AuditEntry>, _>>()?;
        out.reverse();
        Ok(out)
    }
}

impl Peer {
    /// Applied only while this queen's leader key is still the one it won. More writes
    /// than one etcd transaction allows go in several, each fenced; they are the desired
    /// state, so a leader that dies between two leaves a state the next reconcile completes.
    fn fenced(&self, mut ops: Vec<TxnOp>) -> Result<(), StoreError> {
        if ops.is_empty() {
            return Ok(());
        }
        let (key, term) = self.fence()?;
        let mut chunks = Vec::new();
        while !ops.is_empty() {
            let rest = ops.split_off(ops.len().min(OPS_PER_TXN));
            chunks.push(std::mem::replace(&mut ops, rest));
        }
        let mut c = self.client.clone();
        self.call(async move {
            for chunk in chunks {
                let txn =
                    Txn::new().when([Compare::create_revision(key.clone(), CompareOp::Equal, term)]).and_then(chunk);
                if !c.txn(txn).await.map_err(backend)?.succeeded() {
                    return Err(StoreError::NotLeader(format!("fenced: term {term} is over, another queen leads")));
                }
            }
            Ok(())
        })
    }
}
