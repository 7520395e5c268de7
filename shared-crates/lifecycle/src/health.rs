//! `/healthz`, `/readyz` and `/metrics`, the same in every process.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use contract::{CheckReport, ReadinessReport, ReadinessStatus};
use prometheus_client::registry::Registry;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

type CheckFn = Box<dyn Fn() -> Result<String, String> + Send + Sync>;

/// Liveness, readiness and metrics of one process.
///
/// Readiness is "every registered check passes and the process is not draining": a
/// process whose real work is broken must say so here, not answer 200 forever.
pub struct Health {
    /// Set once at the start of a graceful stop; `/readyz` turns 503 before anything else
    /// happens, so load balancers and the queen stop sending work first.
    draining: AtomicBool,
    checks: Vec<(String, CheckFn)>,
    metrics: Registry,
}

impl Health {
    pub fn builder() -> HealthBuilder {
        HealthBuilder { checks: Vec::new(), metrics: Registry::default() }
    }

    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    pub fn readiness(&self) -> ReadinessReport {
        let checks: Vec<CheckReport> = self
            .checks
            .iter()
            .map(|(name, check)| {
                let started = Instant::now();
                let result = check();
                let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
                let (ok, detail) = match result {
                    Ok(d) => (true, d),
                    Err(d) => (false, d),
                };
                CheckReport { name: name.clone(), ok, latency_ms, detail }
            })
            .collect();
        let status = if self.is_draining() {
            ReadinessStatus::Draining
        } else if checks.iter().all(|c| c.ok) {
            ReadinessStatus::Ready
        } else {
            ReadinessStatus::Degraded
        };
        ReadinessReport { status, checks }
    }

    pub fn metrics_text(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.metrics) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }

    /// The three endpoints, ready to merge into a process's router.
    pub fn router(self: &Arc<Self>) -> Router {
        self.api_router().split_for_parts().0
    }

    /// The three endpoints with their OpenAPI description, for a process that publishes one.
    pub fn api_router(self: &Arc<Self>) -> OpenApiRouter {
        OpenApiRouter::new()
            .routes(routes!(healthz))
            .routes(routes!(readyz))
            .routes(routes!(metrics))
            .with_state(Arc::clone(self))
    }
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "health", security(()), responses((status = 200, description = "the process is alive")))]
async fn healthz() -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({"status": "ok"}))
}

/// Readiness: every check passes and the process is not draining.
#[utoipa::path(get, path = "/readyz", tag = "health", security(()), responses(
    (status = 200, description = "ready", body = ReadinessReport),
    (status = 503, description = "degraded or draining", body = ReadinessReport),
))]
async fn readyz(State(health): State<Arc<Health>>) -> impl IntoResponse {
    // Checks may touch a disk or a store (a probe write, free space): off the runtime that
    // serves requests.
    let report = match tokio::task::spawn_blocking(move || health.readiness()).await {
        Ok(report) => report,
        Err(e) => ReadinessReport {
            status: ReadinessStatus::Degraded,
            checks: vec![CheckReport {
                name: "checks".into(),
                ok: false,
                latency_ms: 0.0,
                detail: format!("the checks did not finish: {e}"),
            }],
        },
    };
    let code = if report.status == ReadinessStatus::Ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, axum::Json(report))
}

/// Prometheus metrics: OpenMetrics to a scraper that asks for it (Prometheus does), the
/// classic text format to everyone else (`curl`, `promtool check metrics`).
#[utoipa::path(get, path = "/metrics", tag = "health", security(()), responses(
    (status = 200, description = "metrics", content_type = "text/plain", body = String),
))]
async fn metrics(State(health): State<Arc<Health>>, headers: axum::http::HeaderMap) -> axum::response::Response {
    let body = health.metrics_text();
    let wants_openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    if wants_openmetrics {
        ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body).into_response()
    } else {
        ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], classic_text(&body)).into_response()
    }
}

/// OpenMetrics text as the classic Prometheus text format (0.0.4). The two differ, for
/// what this registry holds, in a counter's family name (OpenMetrics names the family
/// `x` and its sample `x_total`; the classic format names both `x_total`, and a reader of
/// it finds no help or type for a sample named otherwise), in `# UNIT` lines and in the
/// closing `# EOF`, which the classic format lacks.
pub fn classic_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "].into_iter().find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let name = if counters.contains(name) { format!("{name}_total") } else { name.to_string() };
                out.push_str(prefix);
                out.push_str(&name);
                if !tail.is_empty() {
                    out.push(' ');
                    out.push_str(tail);
                }
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

pub struct HealthBuilder {
    checks: Vec<(String, CheckFn)>,
    metrics: Registry,
}

impl HealthBuilder {
    /// A readiness check: `Ok(detail)` passes, `Err(detail)` degrades. Checks run on every
    /// `/readyz`, on a blocking thread: they may read a disk or ask a store, and must stay
    /// quick.
    pub fn check(mut self, name: &str, f: impl Fn() -> Result<String, String> + Send + Sync + 'static) -> Self {
        self.checks.push((name.to_string(), Box::new(f)));
        self
    }

    /// Where the process registers its metrics before the endpoint starts serving them.
    pub fn metrics(&mut self) -> &mut Registry {
        &mut self.metrics
    }

    pub fn build(self) -> Arc<Health> {
        Arc::new(Health { draining: AtomicBool::new(false), checks: self.checks, metrics: self.metrics })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use prometheus_client::metrics::counter::Counter;
    use tower::ServiceExt;

    use super::*;

    async fn get_status(router: &Router, path: &str) -> (StatusCode, String) {
        let resp =
            router.clone().oneshot(Request::get(path).body(Body::empty()).expect("request")).await.expect("infallible");
        let status = resp.status();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn readyz_follows_checks_and_draining() {
        let healthy = Arc::new(AtomicBool::new(true));
        let flag = Arc::clone(&healthy);
        let mut builder = Health::builder().check("store", move || {
            if flag.load(Ordering::SeqCst) { Ok("reachable".into()) } else { Err("unreachable".into()) }
        });
        let counter = Counter::<u64>::default();
        builder.metrics().register("apiary_test_things", "things", counter.clone());
        counter.inc();
        let health = builder.build();
        let router = health.router();

        let (status, body) = get_status(&router, "/readyz").await;
        assert_eq!(status, StatusCode::OK);
        let report: ReadinessReport = serde_json::from_str(&body).expect("report");
        assert_eq!(report.status, ReadinessStatus::Ready);
        assert_eq!(report.checks[0].detail, "reachable");

        healthy.store(false, Ordering::SeqCst);
        let (status, body) = get_status(&router, "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("\"degraded\""), "{body}");

        healthy.store(true, Ordering::SeqCst);
        health.set_draining();
        let (status, body) = get_status(&router, "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("\"draining\""), "{body}");

        assert_eq!(get_status(&router, "/healthz").await.0, StatusCode::OK, "liveness ignores readiness");
        let (_, metrics) = get_status(&router, "/metrics").await;
        assert!(metrics.contains("apiary_test_things_total 1"), "{metrics}");
    }

    #[test]
    fn the_classic_format_names_counter_families_as_their_samples() {
        let openmetrics = "# HELP jobs Jobs run.\n# TYPE jobs counter\njobs_total{outcome=\"ok\"} 3\n\
            # HELP up Whether it is up.\n# TYPE up gauge\nup 1\n\
            # HELP took Time taken.\n# TYPE took histogram\n# UNIT took seconds\ntook_bucket{le=\"+Inf\"} 1\ntook_sum 0.5\ntook_count 1\n# EOF\n";
        let classic = classic_text(openmetrics);
        assert_eq!(
            classic,
            "# HELP jobs_total Jobs run.\n# TYPE jobs_total counter\njobs_total{outcome=\"ok\"} 3\n\
             # HELP up Whether it is up.\n# TYPE up gauge\nup 1\n\
             # HELP took Time taken.\n# TYPE took histogram\ntook_bucket{le=\"+Inf\"} 1\ntook_sum 0.5\ntook_count 1\n"
        );
    }
}
