//! What a heartbeat may claim, decided without side effects: where the queen will dial
//! (a worker's address, which jobs are POSTed to), how far ahead an epoch may be, and
//! which claims stay bound to the node that made them first.
//!
//! A worker's address must name the machine it runs on: the address its heartbeat came
//! from, or its hive's host as the hive reported it. A loopback address only when the
//! worker calls from loopback itself, so no remote node can point the queen at a service
//! on the queen's own machine. A hive's address bounds its workers' addresses, so it is
//! held to the same rule, with loopback allowed (a hive whose endpoints are local only, the
//! default); the queen dials it only to read logs, and a loopback one only when the hive
//! says it runs on the queen's machine ([`dialable_hive`]).

use std::net::IpAddr;
use std::time::Duration;

use contract::{HiveHeartbeat, WorkerHeartbeat};

/// How far a heartbeat's epoch (microseconds since the Unix epoch at the sender's start)
/// may be ahead of the queen's clock. Clocks step (a day forward on a badly set machine,
/// the queen's an hour back): refusing such a node would kill it. A future epoch held
/// for a node costs that node nothing, since after three stale answers it moves to the
/// held epoch + 1; the bound only keeps an epoch far from the counter's end, where + 1
/// could no longer get past it.
pub const MAX_EPOCH_SKEW: Duration = Duration::from_secs(30 * 24 * 3600);

/// The host of an http(s) URL with nothing else in it that could redirect a call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Host {
    Ip(IpAddr),
    Name(String),
}

impl Host {
    fn is_loopback(&self) -> bool {
        match self {
            Host::Ip(ip) => ip.is_loopback(),
            Host::Name(n) => n.eq_ignore_ascii_case("localhost"),
        }
    }
}

/// `http://host[:port][/path]` or `https://...`, without user info (`http://a@b` reads
/// as host `b` to one parser and `a` to a human).
pub fn http_host(address: &str) -> Result<Host, String> {
    let url = reqwest::Url::parse(address).map_err(|e| format!("{address:?} is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("{address:?}: only http:// and https:// addresses are dialled"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!("{address:?}: no user info in an address"));
    }
    let host = url.host_str().filter(|h| !h.is_empty()).ok_or_else(|| format!("{address:?} names no host"))?;
    match host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
        Ok(ip) if ip.is_unspecified() => {
            Err(format!("{address:?}: an unspecified address cannot be dialled; bind (or advertise) a real one"))
        }
        Ok(ip) => Ok(Host::Ip(ip)),
        Err(_) => Ok(Host::Name(host.to_ascii_lowercase())),
    }
}

/// Where a heartbeat came from: the peer's address (`None` only for requests that never
/// crossed a socket: in-process tests), and whether that is this machine — a loopback
/// peer, or one whose address is the queen's own end of the connection (a process here
/// calling the queen's LAN address).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Origin {
    pub ip: Option<IpAddr>,
    pub this_machine: bool,
}

impl Origin {
    pub fn of(peer: Option<std::net::SocketAddr>, local: Option<std::net::SocketAddr>) -> Self {
        let ip = peer.map(|p| p.ip());
        let this_machine = match (ip, local) {
            (None, _) => true,
            (Some(p), _) if p.is_loopback() => true,
            (Some(p), Some(l)) => p == l.ip(),
            (Some(_), None) => false,
        };
        Self { ip, this_machine }
    }
}

fn same_machine(host: &Host, peer: Option<IpAddr>, hostname: &str) -> bool {
    match host {
        Host::Ip(ip) => peer == Some(*ip),
        Host::Name(n) => n.eq_ignore_ascii_case(hostname),
    }
}

/// A hive's address: its own machine (the peer, or its hostname), or loopback.
pub fn check_hive(hb: &HiveHeartbeat, from: Origin) -> Result<(), String> {
    let peer = from.ip;
    let host = http_host(&hb.address)?;
    if peer.is_none() || host.is_loopback() || same_machine(&host, peer, &hb.hostname) {
        return Ok(());
    }
    Err(format!(
        "address {:?} is neither where this heartbeat came from ({}) nor the hive's hostname {:?}",
        hb.address,
        peer.map_or_else(|| "?".into(), |p| p.to_string()),
        hb.hostname
    ))
}

/// Whether the queen may dial a hive at `address` (to read a replica's logs): a loopback
/// address only for a hive that names the queen's own machine, so a remote hive cannot
/// point the queen at a service on it; why not, in words an operator can act on.
pub fn dialable_hive(address: &str, hostname: &str, own_hostname: &str) -> Result<(), String> {
    let host = http_host(address)?;
    if host.is_loopback() && !hostname.eq_ignore_ascii_case(own_hostname) {
        return Err(format!(
            "it listens on loopback only ({address}) on another machine ({hostname}): give it a --listen address the queen can reach"
        ));
    }
    Ok(())
}

/// What the queen knows of a worker's hive: its address and hostname as it reported them.
pub struct HiveSeen<'a> {
    pub address: &'a str,
    pub hostname: &'a str,
}

/// A worker's address: the machine its heartbeat came from, or its hive's host.
pub fn check_worker(hb: &WorkerHeartbeat, from: Origin, hive: Option<HiveSeen<'_>>) -> Result<(), String> {
    let peer = from.ip;
    let host = http_host(&hb.address)?;
    if host.is_loopback() {
        return if from.this_machine {
            Ok(())
        } else {
            Err(format!(
                "address {:?} is loopback, but the worker calls from another machine ({})",
                hb.address,
                display(peer)
            ))
        };
    }
    if peer.is_none() || same_machine(&host, peer, "") {
        return Ok(());
    }
    if let Some(hive) = hive {
        let hive_host = http_host(hive.address).ok();
        if hive_host.as_ref() == Some(&host) || same_machine(&host, None, hive.hostname) {
            return Ok(());
        }
    }
    Err(format!(
        "address {:?} is neither where this heartbeat came from ({}) nor the host of hive {}",
        hb.address,
        display(peer),
        hb.hive_id
    ))
}

fn display(peer: Option<IpAddr>) -> String {
    peer.map_or_else(|| "?".into(), |p| p.to_string())
}

/// Why `next` may not replace `held` (a worker the queen holds as up): a worker id belongs
/// to the hive that reported it first, and within one epoch (one process) its kind and
/// address do not change. A restart (a new epoch) on the same hive may move its port.
pub fn worker_conflict(held: &WorkerHeartbeat, next: &WorkerHeartbeat) -> Option<String> {
    if held.hive_id != next.hive_id {
        return Some(format!(
            "{} is a worker of hive {} (still up); hive {} cannot claim it",
            held.id, held.hive_id, next.hive_id
        ));
    }
    if held.epoch == next.epoch && (held.kind != next.kind || held.address != next.address) {
        return Some(format!(
            "{}: kind and address are fixed for the life of a process (epoch {})",
            held.id, held.epoch
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use contract::{Epoch, NodeId, Seq, WorkerStatus};

    fn worker(address: &str) -> WorkerHeartbeat {
        WorkerHeartbeat {
            id: NodeId::sanitized("w1"),
            hive_id: NodeId::sanitized("h1"),
            epoch: Epoch(1),
            seq: Seq(1),
            version: "0".into(),
            status: WorkerStatus::Ready,
            kind: "echo".into(),
            address: address.into(),
            in_flight: 0,
            max_concurrent: 1,
            sent_at: time::OffsetDateTime::UNIX_EPOCH,
        }
    }

    fn ip(s: &str) -> Origin {
        let peer: Option<std::net::SocketAddr> = format!("{s}:40000").parse().ok();
        Origin::of(peer, "10.0.0.1:8500".parse().ok())
    }

    #[test]
    fn only_plain_http_urls_are_dialled() {
        assert_eq!(http_host("http://10.0.0.5:8080"), Ok(Host::Ip("10.0.0.5".parse().expect("ip"))));
        assert_eq!(http_host("https://Box-1.example:1/x"), Ok(Host::Name("box-1.example".into())));
        for bad in [
            "ftp://10.0.0.5",
            "file:///etc/passwd",
            "http://user@10.0.0.5",
            "10.0.0.5:80",
            "http://0.0.0.0:1",
            "gopher://x",
        ] {
            assert!(http_host(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_worker_points_the_queen_only_at_its_own_machine() {
        let hive = || Some(HiveSeen { address: "http://10.0.0.5:9000", hostname: "box-5" });
        let from = ip("10.0.0.7");
        assert!(check_worker(&worker("http://10.0.0.7:8080"), from, None).is_ok(), "where it called from");
        assert!(check_worker(&worker("http://10.0.0.5:8080"), from, hive()).is_ok(), "its hive's host");
        assert!(check_worker(&worker("http://box-5:8080"), from, hive()).is_ok(), "its hive's hostname");
        let refused = |address: &str| check_worker(&worker(address), from, hive()).is_err();
        assert!(refused("http://169.254.169.254/latest/meta-data"), "a cloud metadata service");
        assert!(refused("http://10.0.0.9:2379"), "another machine");
        assert!(refused("http://127.0.0.1:2379"), "the queen's own loopback, from a remote worker");
        assert!(refused("http://localhost:2379"));
        assert!(refused("http://internal.example:80"));
        assert!(check_worker(&worker("http://127.0.0.1:8080"), ip("127.0.0.1"), None).is_ok(), "a local worker");
        assert!(
            check_worker(&worker("http://127.0.0.1:8080"), ip("10.0.0.1"), None).is_ok(),
            "a worker on the queen's machine calling its LAN address"
        );
    }

    #[test]
    fn the_queen_dials_a_loopback_hive_only_on_its_own_machine() {
        assert_eq!(dialable_hive("http://127.0.0.1:7000", "queen-box", "queen-box"), Ok(()));
        assert_eq!(dialable_hive("http://10.0.0.7:7000", "other", "queen-box"), Ok(()));
        let remote = dialable_hive("http://127.0.0.1:7000", "other", "queen-box").expect_err("another machine");
        assert!(remote.contains("--listen"), "{remote}");
        assert!(dialable_hive("file:///etc/passwd", "queen-box", "queen-box").is_err());
    }

    #[test]
    fn a_hive_reports_its_own_machine_or_loopback() {
        let example: HiveHeartbeat = serde_json::from_str(contract::examples::HIVE_HEARTBEAT).expect("example");
        let hive =
            |address: &str| HiveHeartbeat { address: address.into(), hostname: "box-5".into(), ..example.clone() };
        let from = ip("10.0.0.5");
        assert!(check_hive(&hive("http://10.0.0.5:9000"), from).is_ok());
        assert!(check_hive(&hive("http://box-5:9000"), from).is_ok());
        assert!(check_hive(&hive("http://127.0.0.1:9000"), from).is_ok(), "local-only endpoints");
        assert!(check_hive(&hive("http://169.254.169.254"), from).is_err());
        assert!(check_hive(&hive("http://other-box:9000"), from).is_err());
    }

    #[test]
    fn a_worker_id_stays_with_its_hive_and_its_address_with_its_process() {
        let held = worker("http://10.0.0.7:8080");
        let stolen = WorkerHeartbeat { hive_id: NodeId::sanitized("h2"), seq: Seq(2), ..held.clone() };
        assert!(worker_conflict(&held, &stolen).is_some_and(|m| m.contains("hive h1")));
        let moved = WorkerHeartbeat { address: "http://10.0.0.7:9999".into(), seq: Seq(2), ..held.clone() };
        assert!(worker_conflict(&held, &moved).is_some());
        let rekinded = WorkerHeartbeat { kind: "sha256".into(), seq: Seq(2), ..held.clone() };
        assert!(worker_conflict(&held, &rekinded).is_some());
        let restarted = WorkerHeartbeat { epoch: Epoch(2), seq: Seq(1), ..moved };
        assert_eq!(worker_conflict(&held, &restarted), None, "a new process may listen elsewhere");
        assert_eq!(worker_conflict(&held, &WorkerHeartbeat { seq: Seq(2), ..held.clone() }), None);
    }
}
