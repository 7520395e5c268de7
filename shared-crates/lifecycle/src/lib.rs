//! What every Apiary process (queen, hive, worker) shares about its own life.
//!
//! - [`shutdown`]: one signal handler for SIGINT and SIGTERM that cancels the process's
//!   one cancellation tree; a second signal forces exit.
//! - [`health`]: `/healthz`, `/readyz` (named checks, 503 when degraded or draining) and
//!   `/metrics` (Prometheus text).
//! - [`http`]: the one JSON error type and a JSON extractor whose rejections use it.
//! - [`serve`]: plain or TLS listeners with header limits and deadlines.
//! - [`HumanDuration`]: `500ms`, `5s`, `2m` in flags, env and config files.

pub mod health;
pub mod http;
pub mod serve;
pub mod shutdown;

pub use serve::{HttpServer, ServeOptions};

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};

/// A duration written the way operators write them: `500ms`, `5s`, `2m`, `1h 30m`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HumanDuration(pub Duration);

impl FromStr for HumanDuration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        humantime::parse_duration(s.trim())
            .map(HumanDuration)
            .map_err(|e| format!("invalid duration {s:?} ({e}); write it like 500ms, 5s or 2m"))
    }
}

impl std::fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        humantime::format_duration(self.0).fmt(f)
    }
}

impl<'de> serde::Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl From<HumanDuration> for Duration {
    fn from(d: HumanDuration) -> Self {
        d.0
    }
}

/// A token whose value never reaches a log line: `Debug` prints `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// The value, for the one place that must send or compare it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether `presented` is this secret, in constant time: a wrong guess does not say
    /// how much of it was right.
    pub fn matches(&self, presented: &str) -> bool {
        subtle::ConstantTimeEq::ct_eq(self.0.as_bytes(), presented.as_bytes()).into()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl FromStr for Secret {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim().is_empty() { Err("a token cannot be empty".into()) } else { Ok(Self(s.trim().to_string())) }
    }
}

impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// Reads a TOML config file into `T`; the error names the file and the problem.
pub fn read_toml<T: serde::de::DeserializeOwned>(path: &std::path::Path) -> Result<T, ConfigFileError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| ConfigFileError(format!("cannot read {}: {e}", path.display())))?;
    toml::from_str(&text).map_err(|e| ConfigFileError(format!("{}: {e}", path.display())))
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigFileError(pub String);

/// Binds a listener with `SO_REUSEADDR`, so a restarted process can take its port back at
/// once instead of waiting out TIME_WAIT.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// This machine's name; the default id of a hive, and of the hive a worker belongs to, so
/// the two agree without configuration.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

type FilterHandle = tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>;

/// The log filter of this process, when [`init_tracing`] installed it; changed by
/// [`set_log_filter`] without a restart.
static LOG_FILTER: std::sync::OnceLock<FilterHandle> = std::sync::OnceLock::new();

/// Logs to stderr, filtered by `RUST_LOG` (default `info`) until [`set_log_filter`]
/// says otherwise.
pub fn init_tracing() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .try_init();
    if installed.is_ok() {
        let _ = LOG_FILTER.set(handle);
    }
}

/// Checks log filter directives (`info`, `warn,queen=debug`) without applying them.
pub fn check_log_filter(directives: &str) -> Result<(), String> {
    tracing_subscriber::EnvFilter::try_new(directives).map(drop).map_err(|e| format!("log filter {directives:?}: {e}"))
}

/// Replaces the log filter; `Ok(false)` when logging was not set up by [`init_tracing`]
/// (tests), so there is nothing to change.
pub fn set_log_filter(directives: &str) -> Result<bool, String> {
    let filter =
        tracing_subscriber::EnvFilter::try_new(directives).map_err(|e| format!("log filter {directives:?}: {e}"))?;
    match LOG_FILTER.get() {
        Some(handle) => handle.reload(filter).map(|()| true).map_err(|e| e.to_string()),
        None => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_like_operators_write_them() {
        assert_eq!("500ms".parse::<HumanDuration>(), Ok(HumanDuration(Duration::from_millis(500))));
        assert_eq!("5s".parse::<HumanDuration>(), Ok(HumanDuration(Duration::from_secs(5))));
        assert_eq!("2m".parse::<HumanDuration>(), Ok(HumanDuration(Duration::from_secs(120))));
        let err = "5 parsecs".parse::<HumanDuration>().expect_err("nonsense");
        assert!(err.contains("write it like"), "{err}");
    }
}
