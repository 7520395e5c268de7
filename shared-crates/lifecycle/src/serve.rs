//! Serving an axum app over plain TCP or TLS, with the limits every Apiary listener has.
//!
//! `axum::serve` exposes neither TLS nor hyper's header limits, so connections are driven
//! here with hyper directly: one task per connection, a handshake deadline, a header-read
//! deadline (a slowloris client holding a connection open with a trickle of header bytes
//! is dropped), a cap on header bytes, and a graceful stop that lets in-flight requests
//! finish.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::ConfigFileError;

/// A loaded certificate and key, shared by every connection.
pub type TlsConfig = Arc<rustls::ServerConfig>;

/// The limits of one listener; the defaults are what every Apiary process uses.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Serve HTTPS with this configuration instead of plain HTTP.
    pub tls: Option<TlsConfig>,
    /// Most bytes of request line plus headers; past it the connection gets 431 and closes.
    pub max_header_bytes: usize,
    /// Time a client has to send a complete request head once it starts one, to start
    /// one after connecting, and to start the next on a kept-alive connection (hyper runs
    /// one timer for all three). Clients must drop idle connections sooner: see
    /// `queen_client::POOL_IDLE`.
    pub header_timeout: Duration,
    /// Time a client has to finish the TLS handshake.
    pub handshake_timeout: Duration,
    /// Time in-flight requests get to finish once the server stops.
    pub stop_grace: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            tls: None,
            max_header_bytes: 16 * 1024,
            header_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            stop_grace: Duration::from_secs(10),
        }
    }
}

/// Loads a PEM certificate chain and private key into a TLS server configuration.
pub fn load_tls(cert: &Path, key: &Path) -> Result<TlsConfig, ConfigFileError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| ConfigFileError(format!("tls certificate {}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(ConfigFileError(format!("tls certificate {}: no certificate in the file", cert.display())));
    }
    let key =
        PrivateKeyDer::from_pem_file(key).map_err(|e| ConfigFileError(format!("tls key {}: {e}", key.display())))?;
    tls_config(certs, key).map_err(|e| ConfigFileError(format!("tls: {e}")))
}

/// A TLS server configuration from an in-memory chain and key (tests generate them).
pub fn tls_config(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<TlsConfig, rustls::Error> {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The listener's end of the connection a request came on (beside axum's `ConnectInfo`,
/// the peer's end): a peer whose address equals it calls from this machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalAddr(pub std::net::SocketAddr);

/// An HTTP server whose stop is separate from the process's stop: a process first turns
/// unready and drains while still answering `/readyz`, and only then stops serving.
pub struct HttpServer {
    stop: CancellationToken,
    handle: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl HttpServer {
    /// Serves `app` on `listener` over plain HTTP with the default limits.
    pub fn spawn(tasks: &TaskTracker, listener: TcpListener, app: axum::Router) -> Self {
        Self::spawn_with(tasks, listener, app, ServeOptions::default())
    }

    /// Serves `app` on `listener` as a task of `tasks`.
    pub fn spawn_with(tasks: &TaskTracker, listener: TcpListener, app: axum::Router, options: ServeOptions) -> Self {
        let stop = CancellationToken::new();
        let limit = options.max_header_bytes;
        let app = app.layer(axum::middleware::from_fn(move |req, next| limit_headers(limit, req, next)));
        let handle = tasks.spawn(accept_loop(listener, app, options, stop.clone()));
        Self { stop, handle }
    }

    /// Stops accepting connections, lets in-flight requests finish, and returns how
    /// serving ended.
    pub async fn stop(self) -> std::io::Result<()> {
        self.stop.cancel();
        self.handle.await.map_err(std::io::Error::other)?
    }
}

/// 431 with the JSON error body when the request line and headers exceed `limit` bytes.
async fn limit_headers(
    limit: usize,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    // Counted without allocating: this runs on every request, heartbeats included.
    let target = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    let size = req.method().as_str().len()
        + target
        + req.headers().iter().map(|(name, value)| name.as_str().len() + value.len() + 4).sum::<usize>();
    if size > limit {
        return crate::http::ApiError::new(
            axum::http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!("request line and headers are {size} bytes; the limit is {limit}"),
        )
        .into_response();
    }
    next.run(req).await
}

async fn accept_loop(
    listener: TcpListener,
    app: axum::Router,
    options: ServeOptions,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(options.header_timeout)
        // hyper checks its read buffer only when a head is still incomplete, so its cap is
        // loose; it guards memory, and `limit_headers` enforces the exact limit.
        .max_buf_size((options.max_header_bytes * 2).max(8192))
        .keep_alive(true);
    let acceptor = options.tls.clone().map(tokio_rustls::TlsAcceptor::from);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        // Each request carries both ends of its connection (the peer's as `axum::serve`
        // would give it), for the handlers that hold what a node claims against where it
        // called from.
        let local = tcp.local_addr().ok();
        let with_peer = tower::ServiceExt::map_request(
            app.clone(),
            move |mut req: axum::extract::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(axum::extract::ConnectInfo(peer));
                if let Some(local) = local {
                    req.extensions_mut().insert(LocalAddr(local));
                }
                req
            },
        );
        let service = TowerToHyperService::new(with_peer);
        let http = http.clone();
        let watcher = graceful.watcher();
        let acceptor = acceptor.clone();
        let handshake_timeout = options.handshake_timeout;
        tokio::spawn(async move {
            let served = match acceptor {
                None => watcher.watch(http.serve_connection(TokioIo::new(tcp), service)).await,
                Some(acceptor) => {
                    let tls = match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "tls handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "tls handshake timed out");
                            return;
                        }
                    };
                    watcher.watch(http.serve_connection(TokioIo::new(tls), service)).await
                }
            };
            if let Err(e) = served {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(options.stop_grace, graceful.shutdown()).await.is_err() {
        tracing::warn!(grace = ?options.stop_grace, "connections still open after the stop grace; dropping them");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Handlers see both ends of the connection their request came on.
    #[tokio::test]
    async fn every_request_carries_both_ends_of_its_connection() -> Result<(), Box<dyn std::error::Error>> {
        use axum::extract::ConnectInfo;
        use std::net::SocketAddr;
        let app = axum::Router::new().route(
            "/",
            axum::routing::get(
                |ConnectInfo(peer): ConnectInfo<SocketAddr>,
                 axum::Extension(LocalAddr(local)): axum::Extension<LocalAddr>| async move {
                    format!("{peer} {local}")
                },
            ),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let tasks = TaskTracker::new();
        let server = HttpServer::spawn(&tasks, listener, app);
        let (mine, answer) = tokio::task::spawn_blocking(move || -> std::io::Result<(SocketAddr, String)> {
            use std::io::{Read, Write};
            let mut conn = std::net::TcpStream::connect(addr)?;
            conn.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")?;
            let mut answer = String::new();
            conn.read_to_string(&mut answer)?;
            Ok((conn.local_addr()?, answer))
        })
        .await??;
        assert!(answer.ends_with(&format!("{mine} {addr}")), "{answer}");
        server.stop().await?;
        Ok(())
    }
}
