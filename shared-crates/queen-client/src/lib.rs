//! A typed client for the queen's HTTP API, and the heartbeat loop that hives and workers
//! share (first beat at once, then the queen's interval with ±10 % jitter, capped jittered
//! exponential backoff while the queen is unreachable).

mod heartbeat;
pub mod node_token;

pub use heartbeat::{Beat, Heartbeater, Stamp, jittered, retry_policy};

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use contract::{
    ApiErrorBody, Assignment, CommandAck, DeploymentPatch, DeploymentSpec, DeploymentStatus, DrainRequest, DrainStatus,
    HiveCommand, HiveSummary, NodeEvent, NodeId, PlacementStrategy, Snapshot, StrategyBody, WorkerSummary, paths,
};
use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// A stream that says nothing for this long is dead; the queen comments every 15 s.
const STREAM_READ_TIMEOUT: Duration = Duration::from_secs(45);

/// Default address of the queen (DESIGN 10).
pub const DEFAULT_QUEEN_URL: &str = "http://127.0.0.1:8500";

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid queen url {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("invalid CA certificate: {0}")]
    InvalidCa(String),
    #[error("queen unreachable: {0}")]
    Transport(#[from] reqwest::Error),
    #[error("stream broke: {0}")]
    Stream(String),
    #[error("queen answered {status}: {code}: {message}")]
    Api { status: u16, code: String, message: String },
    #[error("not following the redirect to {target}: {reason}")]
    Redirect { target: String, reason: String },
}

/// Cheap to clone; every call has a timeout.
#[derive(Clone, Debug)]
pub struct QueenClient {
    http: reqwest::Client,
    /// For long-lived streams: no total timeout, but a read timeout well past the queen's
    /// keep-alive comments, so a dead connection is noticed.
    streams: reqwest::Client,
    /// For a log follow, which may be quiet as long as its replica is: no read timeout;
    /// TCP keep-alives notice a dead connection.
    follows: reqwest::Client,
    queens: Arc<Queens>,
    token: Option<String>,
}

/// The queens a node may talk to, and which one it talks to now; shared by every clone of
/// a client, so the heartbeat loop's failover moves the control channel along with it.
#[derive(Debug)]
struct Queens {
    /// Given at start, plus any leader a follower pointed to.
    urls: std::sync::RwLock<Vec<String>>,
    current: AtomicUsize,
}

impl Queens {
    fn urls(&self) -> std::sync::RwLockReadGuard<'_, Vec<String>> {
        self.urls.read().unwrap_or_else(|p| p.into_inner())
    }

    fn len(&self) -> usize {
        self.urls().len()
    }

    /// Talks to `base` from now on (the leader a follower redirected to).
    fn point_at(&self, base: &str) {
        let mut urls = self.urls.write().unwrap_or_else(|p| p.into_inner());
        let i = match urls.iter().position(|u| u == base) {
            Some(i) => i,
            None => {
                urls.push(base.to_string());
                urls.len() - 1
            }
        };
        self.current.store(i, Ordering::Relaxed);
    }
}

/// What a client does with a 307 from `current` to `target`.
#[derive(Debug, PartialEq, Eq)]
enum Follow {
    /// A queen it was given (or a leader it checked before).
    Yes,
    /// Unknown: follow only if a queen it knows reports `target` as the leader.
    IfLeader,
    No(String),
}

/// The rules for following a redirect, which carries the token along: same scheme (never
/// from https down to http), and to a queen the client knows.
fn judge(current: &str, target: &str, known: &[String]) -> Follow {
    let scheme = |u: &str| u.split_once("://").map(|(s, _)| s.to_string());
    match (scheme(current).as_deref(), scheme(target).as_deref()) {
        (Some("https"), Some("http")) => return Follow::No("it goes from https down to plain http".into()),
        (a, b) if a != b => return Follow::No("it changes the scheme".into()),
        _ => {}
    }
    if known.iter().any(|k| k == target) { Follow::Yes } else { Follow::IfLeader }
}

/// `scheme://host:port` of a redirect's target.
fn base_of(location: &str) -> Option<String> {
    let url = reqwest::Url::parse(location).ok()?;
    let host = url.host_str()?;
    let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
    Some(format!("{}://{host}{port}", url.scheme()))
}

/// Redirects followed for one call: a follower to the leader, perhaps once more during
/// an election.
const MAX_REDIRECTS: usize = 3;

/// How long a client keeps an idle connection for reuse. Apiary's servers close a
/// kept-alive connection that has not started its next request within their header
/// timeout (10 s: hyper's header-read timer runs while the connection waits), and a request
/// sent on a connection just as the server closes it fails with "connection closed before
/// message completed", which is not safe to retry for a POST. Dropping idle connections
/// well before the server does leaves no such moment; a client's idle clock starts after
/// the server's (once the response has arrived), so its connections are always younger.
pub const POOL_IDLE: Duration = Duration::from_secs(8);

/// A `reqwest` client builder whose TLS uses ring and whose pool never keeps a connection
/// past [`POOL_IDLE`]. Every HTTP client in Apiary starts here: reqwest is built without
/// a crypto provider of its own (aws-lc-rs needs a long C build), so one has to be
/// installed before any client is built.
pub fn http_builder() -> reqwest::ClientBuilder {
    static PROVIDER: std::sync::Once = std::sync::Once::new();
    PROVIDER.call_once(|| {
        // Err only means another provider was installed first; that one serves as well.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
    reqwest::Client::builder().pool_idle_timeout(POOL_IDLE)
}

/// A plain client with no timeouts of its own (tests and one-off calls).
pub fn http() -> reqwest::Client {
    http_builder().build().unwrap_or_else(|e| panic!("building an HTTP client without options cannot fail: {e}"))
}

impl QueenClient {
    pub fn new(base: &str, token: Option<String>, timeout: Duration) -> Result<Self, ClientError> {
        Self::with_ca(base, token, timeout, None)
    }

    /// The client a hive or worker uses: its queen(s), its token, its CA, and a 5 s timeout
    /// per call (heartbeats are small; a queen slower than that is treated as away).
    pub fn for_node(queens: &str, token: Option<&str>, ca: Option<&std::path::Path>) -> Result<Self, ClientError> {
        Self::with_ca(queens, token.map(str::to_string), Duration::from_secs(5), ca)
    }

    /// Like [`QueenClient::new`], trusting only the PEM certificate(s) in the file `ca`
    /// for an `https` queen (a private CA or a self-signed certificate). `base` may list
    /// several queens, comma-separated; the client uses one at a time and
    /// [`QueenClient::fail_over`] moves to the next.
    pub fn with_ca(
        base: &str,
        token: Option<String>,
        timeout: Duration,
        ca: Option<&std::path::Path>,
    ) -> Result<Self, ClientError> {
        let mut urls = Vec::new();
        for one in base.split(',').map(str::trim).filter(|u| !u.is_empty()) {
            let trimmed = one.trim_end_matches('/');
            let url = reqwest::Url::parse(trimmed)
                .map_err(|e| ClientError::InvalidUrl { url: one.into(), reason: e.to_string() })?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(ClientError::InvalidUrl { url: one.into(), reason: "scheme must be http or https".into() });
            }
            urls.push(trimmed.to_string());
        }
        if urls.is_empty() {
            return Err(ClientError::InvalidUrl { url: base.into(), reason: "no queen URL given".into() });
        }
        let roots = match ca {
            Some(path) => {
                let invalid = |why: String| ClientError::InvalidCa(format!("{}: {why}", path.display()));
                let pem = std::fs::read(path).map_err(|e| invalid(e.to_string()))?;
                let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| invalid(e.to_string()))?;
                if certs.is_empty() {
                    return Err(invalid("no PEM certificate in the file".into()));
                }
                Some(certs)
            }
            None => None,
        };
        let with_roots = |b: reqwest::ClientBuilder| match &roots {
            Some(certs) => b.tls_certs_only(certs.iter().cloned()),
            None => b,
        };
        // Redirects are followed here, not by reqwest: reqwest drops the Authorization
        // header on a redirect to another port, and the client should remember the leader.
        let http = with_roots(http_builder())
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(3)))
            .build()?;
        let streams = with_roots(http_builder())
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(timeout.min(Duration::from_secs(3)))
            .read_timeout(STREAM_READ_TIMEOUT)
            .build()?;
        let follows = with_roots(http_builder())
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(timeout.min(Duration::from_secs(3)))
            .tcp_keepalive(Duration::from_secs(15))
            .build()?;
        Ok(Self {
            http,
            streams,
            follows,
            queens: Arc::new(Queens { urls: std::sync::RwLock::new(urls), current: AtomicUsize::new(0) }),
            token,
        })
    }

    /// The queen this client talks to now.
    pub fn base_url(&self) -> String {
        let urls = self.queens.urls();
        let i = self.queens.current.load(Ordering::Relaxed) % urls.len();
        urls[i].clone()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url())
    }

    /// Moves to the next queen in the list (after the current one stopped answering);
    /// `false` when there is only one.
    pub fn fail_over(&self) -> bool {
        let urls = self.queens.urls();
        if urls.len() < 2 {
            return false;
        }
        let next = (self.queens.current.fetch_add(1, Ordering::Relaxed) + 1) % urls.len();
        tracing::warn!(queen = %urls[next], "failing over to the next queen");
        true
    }

    /// Sends one call: to the leader if a follower answers with a redirect (and from then
    /// on), and — for reads — to the next queen if this one does not answer at all.
    async fn send(
        &self,
        client: &reqwest::Client,
        method: reqwest::Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<reqwest::Response, ClientError> {
        let read = method == reqwest::Method::GET;
        let (mut redirects, mut tries) = (0, self.queens.len());
        loop {
            let mut req = client.request(method.clone(), self.url(path));
            if let Some(body) = &body {
                req = req.header(reqwest::header::CONTENT_TYPE, "application/json").body(body.clone());
            }
            if path == paths::HEARTBEAT_STREAM || path.ends_with("/commands") {
                req = req.header(reqwest::header::ACCEPT, "text/event-stream");
            }
            match self.authorize(req).send().await {
                Ok(resp) if resp.status() == reqwest::StatusCode::TEMPORARY_REDIRECT && redirects < MAX_REDIRECTS => {
                    let leader =
                        resp.headers().get(reqwest::header::LOCATION).and_then(|v| v.to_str().ok()).and_then(base_of);
                    let Some(leader) = leader else { return Ok(resp) };
                    self.may_follow(&leader).await?;
                    tracing::info!(%leader, "redirected to the leading queen");
                    self.queens.point_at(&leader);
                    redirects += 1;
                }
                Ok(resp) => return Ok(resp),
                Err(e) if read && tries > 1 && self.fail_over() => {
                    tracing::debug!(error = %e, "queen unreachable; trying the next");
                    tries -= 1;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Whether a redirect to `target` may be followed (see [`judge`]); for a queen not in
    /// the client's list, the queen it talks to now must report `target` as the leader.
    async fn may_follow(&self, target: &str) -> Result<(), ClientError> {
        let current = self.base_url();
        let refused = |reason: String| ClientError::Redirect { target: target.to_string(), reason };
        let known = self.queens.urls().clone();
        match judge(&current, target, &known) {
            Follow::Yes => Ok(()),
            Follow::No(reason) => Err(refused(reason)),
            Follow::IfLeader => {
                // Asked without following anything: any queen answers this itself.
                let req = self.http.get(format!("{current}{}", paths::CLUSTER_LEADER));
                let info: contract::LeaderInfo = Self::decode(self.authorize(req).send().await?).await?;
                let reported = info.leader.and_then(|l| base_of(&l.url));
                if reported.as_deref() == Some(target) {
                    Ok(())
                } else {
                    Err(refused(format!(
                        "it is not in this client's list of queens, and {current} reports {} as the leader",
                        reported.unwrap_or_else(|| "nobody".into())
                    )))
                }
            }
        }
    }

    fn json_body<B: Serialize + ?Sized>(body: &B) -> Result<Vec<u8>, ClientError> {
        serde_json::to_vec(body).map_err(|e| ClientError::Api {
            status: 0,
            code: "unencodable".into(),
            message: e.to_string(),
        })
    }

    fn authorize(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    async fn decode<R: DeserializeOwned>(resp: reqwest::Response) -> Result<R, ClientError> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp.json().await?);
        }
        let text = resp.text().await.unwrap_or_default();
        let (code, message) = match serde_json::from_str::<ApiErrorBody>(&text) {
            Ok(body) => (body.code, body.message),
            Err(_) => ("unexpected".to_string(), text),
        };
        Err(ClientError::Api { status: status.as_u16(), code, message })
    }

    pub async fn post_json<B: Serialize + ?Sized, R: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<R, ClientError> {
        let resp = self.send(&self.http, reqwest::Method::POST, path, Some(Self::json_body(body)?)).await?;
        Self::decode(resp).await
    }

    /// Any method with a JSON body and a JSON answer.
    pub async fn send_json<B: Serialize + ?Sized, R: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: &B,
    ) -> Result<R, ClientError> {
        let resp = self.send(&self.http, method, path, Some(Self::json_body(body)?)).await?;
        Self::decode(resp).await
    }

    pub async fn deploy(&self, spec: &DeploymentSpec) -> Result<DeploymentStatus, ClientError> {
        self.post_json(paths::DEPLOYMENTS, spec).await
    }

    pub async fn deployments(&self) -> Result<Vec<DeploymentStatus>, ClientError> {
        self.get_json(paths::DEPLOYMENTS).await
    }

    pub async fn scale(&self, name: &str, replicas: u32) -> Result<DeploymentStatus, ClientError> {
        self.patch(name, &DeploymentPatch { replicas: Some(replicas), ..Default::default() }).await
    }

    /// Changes a deployment; a change of what its replicas run rolls out.
    pub async fn patch(&self, name: &str, patch: &DeploymentPatch) -> Result<DeploymentStatus, ClientError> {
        let path = format!("{}/{name}", paths::DEPLOYMENTS);
        self.send_json(reqwest::Method::PATCH, &path, patch).await
    }

    /// Restarts every replica of a deployment, rolling (new instance up before old stops).
    pub async fn restart(&self, name: &str) -> Result<DeploymentStatus, ClientError> {
        self.post_json(&format!("{}/{name}/restart", paths::DEPLOYMENTS), &serde_json::json!({})).await
    }

    /// A replica's output (see `contract::LogQuery`): the answer, to read as it comes.
    pub async fn logs(&self, replica: &str, query: &contract::LogQuery) -> Result<reqwest::Response, ClientError> {
        let path = format!("{}?{}", paths::REPLICA_LOGS.replace("{name}", replica), query.to_query_string());
        let client = if query.follow { &self.follows } else { &self.http };
        let resp = self.send(client, reqwest::Method::GET, &path, None).await?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        Err(Self::decode::<serde_json::Value>(resp).await.err().unwrap_or(ClientError::Api {
            status: 0,
            code: "unexpected".into(),
            message: "logs refused".into(),
        }))
    }

    pub async fn undeploy(&self, name: &str) -> Result<(), ClientError> {
        self.delete(&format!("{}/{name}", paths::DEPLOYMENTS)).await
    }

    /// A DELETE whose success has no body.
    pub async fn delete(&self, path: &str) -> Result<(), ClientError> {
        let resp = self.send(&self.http, reqwest::Method::DELETE, path, None).await?;
        if resp.status().is_success() {
            return Ok(());
        }
        Self::decode::<serde_json::Value>(resp).await.map(|_| ())
    }

    pub async fn strategy(&self) -> Result<PlacementStrategy, ClientError> {
        Ok(self.get_json::<StrategyBody>(paths::STRATEGY).await?.strategy)
    }

    pub async fn set_strategy(&self, strategy: PlacementStrategy) -> Result<(), ClientError> {
        self.send_json::<_, StrategyBody>(reqwest::Method::PUT, paths::STRATEGY, &StrategyBody { strategy }).await?;
        Ok(())
    }

    /// An operator's drain: the hive stays ineligible until an operator says otherwise.
    pub async fn drain(&self, hive: &NodeId, deadline: Option<Duration>) -> Result<DrainStatus, ClientError> {
        let req = DrainRequest { deadline_ms: deadline.map(|d| d.as_millis() as u64), on_shutdown: false };
        self.post_json(&format!("{}/{hive}/drain", paths::HIVES), &req).await
    }

    /// A hive's own drain as it stops: eligible again once it comes back.
    pub async fn drain_on_shutdown(&self, hive: &NodeId, deadline: Duration) -> Result<DrainStatus, ClientError> {
        let req = DrainRequest { deadline_ms: Some(deadline.as_millis() as u64), on_shutdown: true };
        self.post_json(&format!("{}/{hive}/drain", paths::HIVES), &req).await
    }

    pub async fn drain_status(&self, hive: &NodeId) -> Result<DrainStatus, ClientError> {
        self.get_json(&format!("{}/{hive}/drain", paths::HIVES)).await
    }

    pub async fn assignments(&self) -> Result<Vec<Assignment>, ClientError> {
        self.get_json(paths::ASSIGNMENTS).await
    }

    /// A POST whose success has no body (204).
    pub async fn post_no_content<B: Serialize + ?Sized>(&self, path: &str, body: &B) -> Result<(), ClientError> {
        let resp = self.send(&self.http, reqwest::Method::POST, path, Some(Self::json_body(body)?)).await?;
        if resp.status().is_success() {
            return Ok(());
        }
        Self::decode::<serde_json::Value>(resp).await.map(|_| ())
    }

    /// `event` payloads of the SSE stream at `path`, decoded. Ends when the connection
    /// does; the caller reconnects if it wants to.
    async fn sse<T: DeserializeOwned>(
        &self,
        path: &str,
        event: &'static str,
    ) -> Result<impl futures_util::Stream<Item = Result<T, ClientError>> + use<T>, ClientError> {
        let resp = self.send(&self.streams, reqwest::Method::GET, path, None).await?;
        if !resp.status().is_success() {
            return Err(Self::decode::<serde_json::Value>(resp).await.err().unwrap_or(ClientError::Api {
                status: 0,
                code: "unexpected".into(),
                message: "stream refused".into(),
            }));
        }
        Ok(resp.bytes_stream().eventsource().filter_map(move |e| async move {
            match e {
                Ok(e) if e.event == event => Some(serde_json::from_str(&e.data).map_err(|err| ClientError::Api {
                    status: 200,
                    code: "bad_event".into(),
                    message: err.to_string(),
                })),
                Ok(_) => None,
                Err(e) => Some(Err(ClientError::Stream(e.to_string()))),
            }
        }))
    }

    /// The hive's control channel: commands as the queen sends them.
    pub async fn commands(
        &self,
        hive: &NodeId,
    ) -> Result<impl futures_util::Stream<Item = Result<HiveCommand, ClientError>> + use<>, ClientError> {
        self.sse(&format!("{}/{hive}/commands", paths::HIVES), "command").await
    }

    /// The cluster snapshots, as the dashboard gets them; the last one before the queen
    /// stops is delivered before the stream ends.
    pub async fn snapshots(
        &self,
    ) -> Result<impl futures_util::Stream<Item = Result<Snapshot, ClientError>> + use<>, ClientError> {
        self.sse(paths::HEARTBEAT_STREAM, "heartbeat").await
    }

    pub async fn ack(&self, hive: &NodeId, ack: &CommandAck) -> Result<(), ClientError> {
        self.post_no_content(&format!("{}/{hive}/acks", paths::HIVES), ack).await
    }

    /// A read; one that gets no answer at all is tried on the next queen in the list, so
    /// a command line given every queen works while any one of them does.
    pub async fn get_json<R: DeserializeOwned>(&self, path: &str) -> Result<R, ClientError> {
        Self::decode(self.send(&self.http, reqwest::Method::GET, path, None).await?).await
    }

    pub async fn snapshot(&self) -> Result<Snapshot, ClientError> {
        self.get_json(paths::SNAPSHOT).await
    }

    pub async fn leader(&self) -> Result<contract::LeaderInfo, ClientError> {
        self.get_json(paths::CLUSTER_LEADER).await
    }

    pub async fn hives(&self) -> Result<Vec<HiveSummary>, ClientError> {
        self.get_json(paths::HIVES).await
    }

    pub async fn workers(&self) -> Result<Vec<WorkerSummary>, ClientError> {
        self.get_json(paths::WORKERS).await
    }

    pub async fn hive(&self, id: &str) -> Result<HiveSummary, ClientError> {
        self.get_json(&format!("{}/{id}", paths::HIVES)).await
    }

    pub async fn worker(&self, id: &str) -> Result<WorkerSummary, ClientError> {
        self.get_json(&format!("{}/{id}", paths::WORKERS)).await
    }

    pub async fn hive_events(&self, id: &str) -> Result<Vec<NodeEvent>, ClientError> {
        self.get_json(&format!("{}/{id}/events", paths::HIVES)).await
    }

    pub async fn worker_events(&self, id: &str) -> Result<Vec<NodeEvent>, ClientError> {
        self.get_json(&format!("{}/{id}/events", paths::WORKERS)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_keep_the_scheme_and_go_to_known_queens() {
        let known = vec!["https://q1:8500".to_string(), "https://q2:8500".to_string()];
        assert_eq!(judge("https://q1:8500", "https://q2:8500", &known), Follow::Yes);
        assert_eq!(judge("https://q1:8500", "https://q9:8500", &known), Follow::IfLeader, "ask the cluster first");
        assert!(
            matches!(judge("https://q1:8500", "http://q2:8500", &known), Follow::No(r) if r.contains("down to plain http"))
        );
        assert!(matches!(judge("http://q1:8500", "https://q2:8500", &["http://q1:8500".into()]), Follow::No(_)));
    }

    #[test]
    fn a_list_of_queens_is_used_in_turn() {
        let client = QueenClient::new("http://a:1/, http://b:2", None, Duration::from_secs(1)).expect("valid");
        let clone = client.clone();
        assert_eq!(client.url("/x"), "http://a:1/x");
        assert!(client.fail_over());
        assert_eq!(clone.url("/x"), "http://b:2/x", "every clone follows the failover");
        assert!(client.fail_over());
        assert_eq!(client.base_url(), "http://a:1", "and round again");
        let single = QueenClient::new("http://a:1", None, Duration::from_secs(1)).expect("valid");
        assert!(!single.fail_over());
        assert!(matches!(
            QueenClient::new("http://a:1,ftp://b", None, Duration::from_secs(1)),
            Err(ClientError::InvalidUrl { .. })
        ));
        assert!(matches!(QueenClient::new(" , ", None, Duration::from_secs(1)), Err(ClientError::InvalidUrl { .. })));
    }
}
