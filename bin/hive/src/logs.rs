//! Each replica's stdout and stderr, kept in rotated files under the hive's log directory
//! and read back (tail, since, follow) for `GET /v1/logs/{replica}`.
//!
//! Layout: `<dir>/<replica>/current/{stdout,stderr}.log` (then `.log.1`, `.log.2`, ... the
//! older), and `previous/` the same for the instance before the last (re)start. One
//! record per line: `<RFC 3339 UTC time> <F|P> <bytes>\n`, `F` a whole line, `P` part of
//! one (flushed after a second without a newline, or at the end); the bytes are the
//! program's own, whatever they are, but for the newline that ends them. A line longer
//! than [`MAX_LINE`] keeps its first `MAX_LINE` bytes and a mark. Memory per stream is one
//! line buffer and one read buffer, however fast the program writes.

use std::collections::VecDeque;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use contract::{LogPolicy, LogQuery, LogStream, NodeId};
use time::OffsetDateTime;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Longest line kept whole; the rest of it is dropped.
pub const MAX_LINE: usize = 16 * 1024;
const CUT_MARK: &[u8] = b" [line cut]";
/// A partial line waits this long for its newline before it is written as it is.
const PARTIAL_AFTER: Duration = Duration::from_secs(1);
/// The read buffer and the write buffer of each stream: with a [`MAX_LINE`] line buffer,
/// all the memory a replica's stream costs its hive.
const IO_BUF: usize = 16 * 1024;
/// Most bytes one read answers with (the newest of what matches); `--follow` goes on.
pub const MAX_READ: usize = 4 * 1024 * 1024;

fn file_of(stream: LogStream) -> &'static str {
    match stream {
        LogStream::Stdout => "stdout.log",
        LogStream::Stderr => "stderr.log",
    }
}

/// Where a hive keeps its replicas' output, and how much by default.
#[derive(Clone, Debug)]
pub struct LogStore {
    pub dir: PathBuf,
    pub policy: LogPolicy,
}

impl LogStore {
    fn replica_dir(&self, replica: &NodeId) -> PathBuf {
        self.dir.join(replica.as_str())
    }

    /// Starts a new instance's logs: what `current` held becomes `previous`.
    pub fn begin(&self, replica: &NodeId) -> std::io::Result<PathBuf> {
        let dir = self.replica_dir(replica);
        let (current, previous) = (dir.join("current"), dir.join("previous"));
        if current.exists() {
            let _ = std::fs::remove_dir_all(&previous);
            std::fs::rename(&current, &previous)?;
        }
        std::fs::create_dir_all(&current)?;
        Ok(current)
    }

    /// Forgets a replica that is gone for good.
    pub fn remove(&self, replica: &NodeId) {
        let _ = std::fs::remove_dir_all(self.replica_dir(replica));
    }

    pub fn files(&self, replica: &NodeId, stream: LogStream, previous: bool) -> LogFiles {
        let instance = if previous { "previous" } else { "current" };
        LogFiles { base: self.replica_dir(replica).join(instance).join(file_of(stream)), files: self.policy.files }
    }
}

/// One stream's files of one instance, the newest first: `x.log`, `x.log.1`, ...
#[derive(Clone, Debug)]
pub struct LogFiles {
    base: PathBuf,
    /// How many rotations to look for (the policy's count, or more: a deployment may keep more).
    files: u32,
}

impl LogFiles {
    fn nth(&self, n: u32) -> PathBuf {
        if n == 0 { self.base.clone() } else { PathBuf::from(format!("{}.{n}", self.base.display())) }
    }

    pub fn exists(&self) -> bool {
        self.base.parent().is_some_and(Path::is_dir)
    }

    /// Oldest first.
    fn in_order(&self) -> impl Iterator<Item = PathBuf> + '_ {
        (0..self.files.max(LogPolicy::MAX_FILES)).rev().map(|n| self.nth(n)).filter(|p| p.is_file())
    }
}

/// Writes one stream's records into its files, rotating them by size.
struct Rotating {
    files: LogFiles,
    policy: LogPolicy,
    out: std::io::BufWriter<std::fs::File>,
    size: u64,
}

impl Rotating {
    fn open(files: LogFiles, policy: LogPolicy) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&files.base)?;
        let size = file.metadata()?.len();
        Ok(Self { files, policy, out: std::io::BufWriter::with_capacity(IO_BUF, file), size })
    }

    fn record(&mut self, kind: u8, bytes: &[u8], cut: bool) -> std::io::Result<()> {
        let stamp =
            OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
        let len = (stamp.len() + 3 + bytes.len() + if cut { CUT_MARK.len() } else { 0 } + 1) as u64;
        if self.size > 0 && self.size + len > self.policy.max_bytes {
            self.rotate()?;
        }
        self.out.write_all(stamp.as_bytes())?;
        self.out.write_all(&[b' ', kind, b' '])?;
        self.out.write_all(bytes)?;
        if cut {
            self.out.write_all(CUT_MARK)?;
        }
        self.out.write_all(b"\n")?;
        self.size += len;
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.out.flush()?;
        let keep = self.policy.files.max(1);
        let _ = std::fs::remove_file(self.files.nth(keep - 1));
        for n in (1..keep).rev() {
            let _ = std::fs::rename(self.files.nth(n - 1), self.files.nth(n));
        }
        let file = std::fs::OpenOptions::new().create(true).write(true).truncate(true).open(&self.files.base)?;
        self.out = std::io::BufWriter::with_capacity(IO_BUF, file);
        self.size = 0;
        Ok(())
    }
}

/// Copies what `from` writes into `files` until it closes (the process exited, with
/// whatever it had left in the pipe), then flushes.
pub async fn capture(mut from: impl AsyncRead + Unpin, files: LogFiles, policy: LogPolicy) -> std::io::Result<()> {
    let mut out = Rotating::open(files, policy)?;
    let mut buf = vec![0u8; IO_BUF];
    let mut line: Vec<u8> = Vec::with_capacity(1024);
    let mut cut = false;
    loop {
        let read = if line.is_empty() {
            Some(from.read(&mut buf).await?)
        } else {
            tokio::time::timeout(PARTIAL_AFTER, from.read(&mut buf)).await.ok().transpose()?
        };
        let n = match read {
            // A partial line waited long enough: out it goes, as a part.
            None => {
                out.record(b'P', &line, std::mem::take(&mut cut))?;
                line.clear();
                out.out.flush()?;
                continue;
            }
            Some(0) => break,
            Some(n) => n,
        };
        for piece in buf[..n].split_inclusive(|b| *b == b'\n') {
            let (text, ends) = match piece.split_last() {
                Some((b'\n', text)) => (text, true),
                _ => (piece, false),
            };
            let room = MAX_LINE - line.len();
            if text.len() > room {
                cut = true;
            }
            line.extend_from_slice(&text[..text.len().min(room)]);
            if ends {
                out.record(b'F', &line, std::mem::take(&mut cut))?;
                line.clear();
            }
        }
        out.out.flush()?;
    }
    if !line.is_empty() {
        out.record(b'P', &line, cut)?;
    }
    out.out.flush()
}

/// One record as read back.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Record {
    at: OffsetDateTime,
    whole: bool,
    bytes: Vec<u8>,
}

fn parse(line: &[u8]) -> Option<Record> {
    let mut parts = line.splitn(3, |b| *b == b' ');
    let at = std::str::from_utf8(parts.next()?).ok()?;
    let at = OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339).ok()?;
    let whole = match parts.next()? {
        b"F" => true,
        b"P" => false,
        _ => return None,
    };
    Some(Record { at, whole, bytes: parts.next().unwrap_or_default().to_vec() })
}

/// What to read of a stream, as the hive applies it.
#[derive(Clone, Debug, Default)]
pub struct Query {
    /// The last N lines only.
    pub tail: Option<usize>,
    /// Records written at or after this time only.
    pub since: Option<OffsetDateTime>,
    /// Each line starts with its RFC 3339 time.
    pub timestamps: bool,
}

impl From<&LogQuery> for Query {
    fn from(q: &LogQuery) -> Self {
        let ago =
            q.since_seconds.map(|s| OffsetDateTime::now_utc() - time::Duration::seconds(s.min(i64::MAX as u64) as i64));
        Self { tail: q.tail, since: q.since.or(ago), timestamps: q.timestamps }
    }
}

impl Query {
    fn render(&self, r: &Record, out: &mut Vec<u8>) {
        if self.timestamps {
            let stamp = r.at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
            out.extend_from_slice(stamp.as_bytes());
            out.push(b' ');
        }
        out.extend_from_slice(&r.bytes);
        if r.whole {
            out.push(b'\n');
        }
    }
}

/// The records a read answers with: the newest, at most `tail` lines and [`MAX_READ`] bytes.
#[derive(Default)]
struct Kept {
    records: VecDeque<Record>,
    bytes: usize,
    /// Whole lines held (a trailing part of one counts as one more).
    whole: usize,
}

impl Kept {
    fn lines(&self) -> usize {
        self.whole + usize::from(self.records.back().is_some_and(|r| !r.whole))
    }

    fn push(&mut self, r: Record, q: &Query) {
        self.bytes += r.bytes.len() + 1;
        self.whole += usize::from(r.whole);
        self.records.push_back(r);
        while q.tail.is_some_and(|t| self.lines() > t) || (self.bytes > MAX_READ && self.records.len() > 1) {
            self.drop_first_line();
        }
    }

    /// Drops the oldest line: its parts, up to the record that ends it.
    fn drop_first_line(&mut self) {
        while let Some(r) = self.records.pop_front() {
            self.bytes -= r.bytes.len() + 1;
            if r.whole {
                self.whole -= 1;
                return;
            }
        }
    }
}

/// What the files hold now that the query asks for, oldest first, and where the newest
/// file ended (for a follow to go on from).
pub fn read(files: &LogFiles, q: &Query) -> std::io::Result<(Vec<u8>, u64)> {
    let mut kept = Kept::default();
    for path in files.in_order() {
        let file = std::io::BufReader::new(std::fs::File::open(&path)?);
        for line in file.split(b'\n') {
            if let Some(r) = parse(&line?).filter(|r| q.since.is_none_or(|s| r.at >= s)) {
                kept.push(r, q);
            }
        }
    }
    let mut out = Vec::with_capacity(kept.bytes);
    for r in &kept.records {
        q.render(r, &mut out);
    }
    let end = std::fs::metadata(&files.base).map(|m| m.len()).unwrap_or(0);
    Ok((out, end))
}

/// What was written to the newest file past `offset`, in whole records: the bytes to
/// send and the offset to go on from. A file rotated away (shorter than the offset, or
/// another file now) is read again from its start.
pub fn read_on(files: &LogFiles, q: &Query, offset: u64, inode: &mut u64) -> std::io::Result<(Vec<u8>, u64)> {
    use std::io::{Read, Seek};
    use std::os::unix::fs::MetadataExt;
    let Ok(mut file) = std::fs::File::open(&files.base) else { return Ok((Vec::new(), offset)) };
    let meta = file.metadata()?;
    let offset = if meta.ino() != *inode || meta.len() < offset { 0 } else { offset };
    *inode = meta.ino();
    file.seek(std::io::SeekFrom::Start(offset))?;
    let mut fresh = Vec::new();
    file.take(MAX_READ as u64).read_to_end(&mut fresh)?;
    // Only whole records: a record being written is taken next time.
    let whole = fresh.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    fresh.truncate(whole);
    let mut out = Vec::new();
    for line in fresh.split(|b| *b == b'\n') {
        if let Some(r) = parse(line).filter(|r| q.since.is_none_or(|s| r.at >= s)) {
            q.render(&r, &mut out);
        }
    }
    Ok((out, offset + whole as u64))
}

pub fn inode(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).map(|m| m.ino()).unwrap_or(0)
}

/// Who may read logs on this hive, and from where it reads them.
pub struct LogAccess {
    /// `None`: this hive keeps no output (`--log-dir off`).
    pub store: Option<LogStore>,
    /// What the queen presents: this hive's own node token (made from the cluster token
    /// when the hive holds that). `None`: no token, so only callers on this machine.
    pub expected: Option<lifecycle::Secret>,
    /// Ends follows when the hive stops.
    pub stop: tokio_util::sync::CancellationToken,
}

impl LogAccess {
    pub fn new(store: Option<LogStore>, token: Option<&lifecycle::Secret>, hive: &NodeId) -> Self {
        let expected = token.map(|t| {
            let own = t.expose();
            let own = if own.starts_with("hive:") {
                own.to_string()
            } else {
                queen_client::node_token::hive_token(own, hive)
            };
            lifecycle::Secret::new(own)
        });
        Self { store, expected, stop: Default::default() }
    }
}

/// How often a follow looks for more.
const FOLLOW_EVERY: Duration = Duration::from_millis(250);

pub fn router(access: std::sync::Arc<LogAccess>) -> axum::Router {
    axum::Router::new().route(contract::paths::HIVE_LOGS, axum::routing::get(serve)).with_state(access)
}

async fn serve(
    axum::extract::State(access): axum::extract::State<std::sync::Arc<LogAccess>>,
    axum::extract::Path(replica): axum::extract::Path<String>,
    lifecycle::http::QueryParams(q): lifecycle::http::QueryParams<LogQuery>,
    req: axum::extract::Request,
) -> Result<axum::response::Response, lifecycle::http::ApiError> {
    use lifecycle::http::ApiError;
    let peer = req.extensions().get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|c| c.0.ip());
    let allowed = match &access.expected {
        Some(expected) => lifecycle::http::bearer(req.headers()).is_some_and(|p| expected.matches(p)),
        None => peer.is_some_and(|ip| ip.is_loopback()),
    };
    if !allowed {
        return Err(ApiError::new(
            axum::http::StatusCode::UNAUTHORIZED,
            "unauthorized",
            "logs are read through the queen, which presents this hive's token",
        ));
    }
    q.validate().map_err(|e| ApiError::bad_request("invalid_query", e.to_string()))?;
    let replica = NodeId::new(replica).map_err(|e| ApiError::bad_request("invalid_id", e.to_string()))?;
    let Some(store) = &access.store else {
        return Err(ApiError::not_found(
            "this hive keeps no replica output (--log-dir off): it goes to the hive's own",
        ));
    };
    let files = store.files(&replica, q.stream, q.previous);
    if !files.exists() {
        let which = if q.previous { "no previous instance of" } else { "no output kept of" };
        return Err(ApiError::not_found(format!("{which} {replica} on this hive")));
    }
    let applied = Query::from(&q);
    let (first, end) = {
        let (files, applied) = (files.clone(), applied.clone());
        tokio::task::spawn_blocking(move || read(&files, &applied))
            .await
            .map_err(|e| ApiError::new(axum::http::StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
            .map_err(|e| ApiError::new(axum::http::StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
    };
    let mut response = if !q.follow {
        axum::response::Response::new(axum::body::Body::from(first))
    } else {
        let offset = end;
        let inode = inode(&files.base);
        let stop = access.stop.clone();
        // From here on, only what is new: the whole of a rotated-to file, not `tail` again.
        let on = Query { tail: None, ..applied };
        let state = (files, on, offset, inode, stop);
        let more = futures_util::stream::unfold(state, |(files, q, mut offset, mut ino, stop)| async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return None,
                    _ = tokio::time::sleep(FOLLOW_EVERY) => {}
                }
                let (f, qq, at, mut seen) = (files.clone(), q.clone(), offset, ino);
                let read =
                    tokio::task::spawn_blocking(move || read_on(&f, &qq, at, &mut seen).map(|r| (r, seen))).await;
                let Ok(Ok(((bytes, next), seen))) = read else { return None };
                (offset, ino) = (next, seen);
                if !bytes.is_empty() {
                    return Some((
                        Ok::<_, std::io::Error>(axum::body::Bytes::from(bytes)),
                        (files, q, offset, ino, stop),
                    ));
                }
            }
        });
        let head = futures_util::stream::once(async move { Ok::<_, std::io::Error>(axum::body::Bytes::from(first)) });
        axum::response::Response::new(axum::body::Body::from_stream(futures_util::StreamExt::chain(head, more)))
    };
    let headers = response.headers_mut();
    headers.insert(axum::http::header::CONTENT_TYPE, axum::http::HeaderValue::from_static("application/octet-stream"));
    headers.insert(axum::http::header::CACHE_CONTROL, axum::http::HeaderValue::from_static("no-store"));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(tag: &str, policy: LogPolicy) -> LogStore {
        let dir = std::env::temp_dir().join(format!("hive-logs-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        LogStore { dir, policy }
    }

    fn replica() -> NodeId {
        NodeId::sanitized("web-0")
    }

    async fn write(store: &LogStore, bytes: &[u8]) -> LogFiles {
        let files = store.files(&replica(), LogStream::Stdout, false);
        let (mut tx, rx) = tokio::io::duplex(1024);
        let capturing = tokio::spawn(capture(rx, files.clone(), store.policy));
        tokio::io::AsyncWriteExt::write_all(&mut tx, bytes).await.expect("write");
        drop(tx);
        capturing.await.expect("joined").expect("captured");
        files
    }

    #[tokio::test]
    async fn output_is_kept_as_written_binary_and_long_lines_included() {
        let store = store("binary", LogPolicy::default());
        store.begin(&replica()).expect("begin");
        let long = vec![b'x'; MAX_LINE + 100];
        let mut bytes = b"one\n\xff\x00\x1b[31mtwo\n".to_vec();
        bytes.extend_from_slice(&long);
        bytes.extend_from_slice(b"\nno newline at the end");
        let files = write(&store, &bytes).await;
        let (all, _) = read(&files, &Query::default()).expect("read");
        let mut expected = b"one\n\xff\x00\x1b[31mtwo\n".to_vec();
        expected.extend_from_slice(&long[..MAX_LINE]);
        expected.extend_from_slice(CUT_MARK);
        expected.extend_from_slice(b"\nno newline at the end");
        assert_eq!(all, expected);
        let (tail, _) = read(&files, &Query { tail: Some(1), ..Default::default() }).expect("read");
        assert_eq!(tail, b"no newline at the end", "the last line, partial as it is");
        let (tail, _) = read(&files, &Query { tail: Some(2), ..Default::default() }).expect("read");
        assert!(tail.ends_with(b" [line cut]\nno newline at the end") && tail.len() < MAX_LINE + 100);
        let later = Query { since: Some(OffsetDateTime::now_utc() + time::Duration::hours(1)), ..Default::default() };
        assert_eq!(read(&files, &later).expect("read").0, b"");
        let _ = std::fs::remove_dir_all(&store.dir);
    }

    #[tokio::test]
    async fn files_rotate_by_size_and_a_restart_keeps_the_previous_instance() {
        let policy = LogPolicy { max_bytes: LogPolicy::MIN_BYTES, files: 3 };
        let store = store("rotate", policy);
        store.begin(&replica()).expect("begin");
        let lines: String = (0..10_000).map(|i| format!("line {i:05}\n")).collect();
        let files = write(&store, lines.as_bytes()).await;
        let sizes: Vec<u64> = (0..4).map(|n| std::fs::metadata(files.nth(n)).map(|m| m.len()).unwrap_or(0)).collect();
        assert!(sizes[..3].iter().all(|s| *s > 0 && *s <= policy.max_bytes), "{sizes:?}");
        assert_eq!(sizes[3], 0, "no fourth file");
        let (kept, _) = read(&files, &Query::default()).expect("read");
        let kept = String::from_utf8(kept).expect("text");
        assert!(kept.ends_with("line 09999\n") && !kept.contains("line 00000\n"), "the newest kept, the oldest gone");
        let numbers: Vec<u32> = kept.lines().filter_map(|l| l.strip_prefix("line ")?.parse().ok()).collect();
        assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "in order, nothing missing in between");

        store.begin(&replica()).expect("restart");
        write(&store, b"second instance\n").await;
        let now = read(&store.files(&replica(), LogStream::Stdout, false), &Query::default()).expect("read").0;
        assert_eq!(now, b"second instance\n");
        let before =
            read(&store.files(&replica(), LogStream::Stdout, true), &Query { tail: Some(1), ..Default::default() });
        assert_eq!(before.expect("read").0, b"line 09999\n");
        let _ = std::fs::remove_dir_all(&store.dir);
    }

    #[test]
    fn the_queen_is_told_apart_by_the_hives_own_node_token() {
        let hive = NodeId::sanitized("h1");
        let store = || Some(LogStore { dir: std::env::temp_dir(), policy: LogPolicy::default() });
        let by_cluster = LogAccess::new(store(), Some(&lifecycle::Secret::new("c")), &hive);
        let node = queen_client::node_token::hive_token("c", &hive);
        let by_node = LogAccess::new(store(), Some(&lifecycle::Secret::new(node.clone())), &hive);
        for access in [&by_cluster, &by_node] {
            let expected = access.expected.as_ref().expect("a token");
            assert!(expected.matches(&node), "what the queen presents");
            assert!(!expected.matches("c"), "not the cluster token itself, which every node may hold");
            let other = queen_client::node_token::hive_token("c", &NodeId::sanitized("h2"));
            assert!(!expected.matches(&other), "not another hive's");
        }
        assert!(LogAccess::new(store(), None, &hive).expected.is_none(), "no token: loopback callers only");
    }

    #[tokio::test]
    async fn a_follow_goes_on_where_the_read_ended_and_across_a_rotation() {
        let store = store("follow", LogPolicy { max_bytes: LogPolicy::MIN_BYTES, files: 2 });
        store.begin(&replica()).expect("begin");
        let files = write(&store, b"first\n").await;
        let (_, mut offset) = read(&files, &Query::default()).expect("read");
        let mut ino = inode(&files.base);
        write(&store, b"second\n").await;
        let (more, next) = read_on(&files, &Query::default(), offset, &mut ino).expect("read on");
        assert_eq!(more, b"second\n");
        offset = next;
        let filler: String = (0..5_000).map(|i| format!("filler {i}\n")).collect();
        write(&store, filler.as_bytes()).await;
        let (more, _) = read_on(&files, &Query::default(), offset, &mut ino).expect("read on");
        let more = String::from_utf8(more).expect("text");
        assert!(more.ends_with("filler 4999\n"), "the rotated-to file is read from its start");
        let _ = std::fs::remove_dir_all(&store.dir);
    }
}
