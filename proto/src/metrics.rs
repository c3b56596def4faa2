//! What both servers share of their Prometheus metrics: defining metrics in a registry with
//! the `corral_` prefix, rendering it as text, and serving `/metrics` (axum) on its own address.

use std::future::Future;
use std::net::SocketAddr;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Latency buckets (seconds) from a millisecond to five minutes.
pub const SECONDS: &[f64] = &[
    0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// A registry whose metrics are named `corral_...`, and helpers that define and register.
pub struct Defs(pub Registry);

impl Defs {
    pub fn new() -> prometheus::Result<Self> {
        Ok(Self(Registry::new_custom(Some("corral".into()), None)?))
    }

    pub fn counter(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> prometheus::Result<IntCounterVec> {
        let c = IntCounterVec::new(Opts::new(name, help), labels)?;
        self.0.register(Box::new(c.clone()))?;
        Ok(c)
    }

    pub fn histogram(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> prometheus::Result<HistogramVec> {
        let opts = HistogramOpts::new(name, help).buckets(SECONDS.to_vec());
        let h = HistogramVec::new(opts, labels)?;
        self.0.register(Box::new(h.clone()))?;
        Ok(h)
    }

    pub fn gauge(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> prometheus::Result<IntGaugeVec> {
        let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
        self.0.register(Box::new(g.clone()))?;
        Ok(g)
    }
}

/// gRPC requests by method and status code, and their latencies: the same in both servers.
pub struct Rpcs {
    count: IntCounterVec,
    seconds: HistogramVec,
}

impl Rpcs {
    /// `{prefix}rpc_requests_total` and `{prefix}rpc_duration_seconds` in `defs`.
    pub fn new(defs: &Defs, prefix: &str) -> prometheus::Result<Self> {
        Ok(Self {
            count: defs.counter(
                &format!("{prefix}rpc_requests_total"),
                "gRPC requests answered, by method and status code",
                &["method", "code"],
            )?,
            seconds: defs.histogram(
                &format!("{prefix}rpc_duration_seconds"),
                "gRPC requests' time to their answer, by method",
                &["method"],
            )?,
        })
    }

    /// A request to `method` answered with `code`, `started` at its arrival.
    pub fn observe(&self, method: &str, code: tonic::Code, started: std::time::Instant) {
        self.count
            .with_label_values(&[method, &format!("{code:?}")])
            .inc();
        self.seconds
            .with_label_values(&[method])
            .observe(started.elapsed().as_secs_f64());
    }
}

/// The registry's metrics as Prometheus text.
pub fn render(registry: &Registry) -> Result<String, String> {
    let mut out = Vec::new();
    TextEncoder::new()
        .encode(&registry.gather(), &mut out)
        .map_err(|e| e.to_string())?;
    String::from_utf8(out).map_err(|e| e.to_string())
}

/// Serves `GET /metrics` on `addr` with what `text` answers (an error: 503 with its message);
/// the address it bound (port 0 picks one).
pub async fn serve<F, Fut>(addr: SocketAddr, text: F) -> std::io::Result<SocketAddr>
where
    F: Fn() -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<String, String>> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let text = text.clone();
            async move {
                match text().await {
                    Ok(t) => (
                        axum::http::StatusCode::OK,
                        [("content-type", "text/plain; version=0.0.4")],
                        t,
                    ),
                    Err(e) => (
                        axum::http::StatusCode::SERVICE_UNAVAILABLE,
                        [("content-type", "text/plain")],
                        e,
                    ),
                }
            }
        }),
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics endpoint stopped");
        }
    });
    tracing::info!(%bound, "metrics served");
    Ok(bound)
}
