//! Prometheus metrics of the agent (issue 12, item 1): RPCs by method and code with their
//! latencies (counted in `api::run`, the one handler shape), volume sync bytes sent, skipped
//! and received, and domains by state read from libvirt when scraped; served on
//! `metrics_listen` (off when unset).

use std::net::SocketAddr;
use std::sync::{Arc, LazyLock, Weak};
use std::time::Instant;

use corral_proto::metrics::{Defs, Rpcs};
use prometheus::{IntCounterVec, IntGaugeVec, Registry};

use crate::agent::Agent;
use crate::error::{AgentError, Result};

struct Metrics {
    registry: Registry,
    rpcs: Rpcs,
    sync_bytes: IntCounterVec,
    domains: IntGaugeVec,
}

impl Metrics {
    fn new() -> prometheus::Result<Self> {
        let d = Defs::new()?;
        Ok(Self {
            rpcs: Rpcs::new(&d, "agent_")?,
            sync_bytes: d.counter(
                "agent_sync_bytes_total",
                "Volume sync bytes: data sent, data the peer had (skipped), wire, received",
                &["what"],
            )?,
            domains: d.gauge("agent_domains", "Domains by state", &["state"])?,
            registry: d.0,
        })
    }
}

static METRICS: LazyLock<Option<Metrics>> = LazyLock::new(|| match Metrics::new() {
    Ok(m) => Some(m),
    Err(e) => {
        tracing::error!(error = %e, "metrics could not be defined; none are kept");
        None
    }
});

/// An RPC answered with `code` after `started`.
pub fn rpc(method: &str, code: tonic::Code, started: Instant) {
    if let Some(m) = METRICS.as_ref() {
        m.rpcs.observe(method, code, started);
    }
}

/// A volume this agent sent.
pub fn sent(data: u64, skipped: u64, wire: u64) {
    if let Some(m) = METRICS.as_ref() {
        m.sync_bytes.with_label_values(&["sent"]).inc_by(data);
        m.sync_bytes.with_label_values(&["skipped"]).inc_by(skipped);
        m.sync_bytes.with_label_values(&["wire"]).inc_by(wire);
    }
}

/// A volume this agent received.
pub fn received(written: u64) {
    if let Some(m) = METRICS.as_ref() {
        m.sync_bytes
            .with_label_values(&["received"])
            .inc_by(written);
    }
}

impl Agent {
    /// Every metric as Prometheus text, domains counted now.
    pub fn metrics_text(&self) -> Result<String> {
        let Some(m) = METRICS.as_ref() else {
            return Ok(String::new());
        };
        m.domains.reset();
        for name in self.hv.names()? {
            if let Ok(s) = self.hv.state(&name) {
                m.domains.with_label_values(&[s.as_str()]).inc();
            }
        }
        corral_proto::metrics::render(&m.registry)
            .map_err(|e| AgentError::internal(format!("metrics: {e}")))
    }
}

/// Serves `/metrics` on `addr` while the agent lives.
pub async fn serve(agent: &Arc<Agent>, addr: SocketAddr) -> Result<SocketAddr> {
    let me: Weak<Agent> = Arc::downgrade(agent);
    corral_proto::metrics::serve(addr, move || {
        let me = me.clone();
        async move {
            let Some(a) = me.upgrade() else {
                return Err("the agent stopped".to_string());
            };
            a.blocking(|a| a.metrics_text())
                .await
                .map_err(|e| e.to_string())
        }
    })
    .await
    .map_err(|e| AgentError::invalid(format!("metrics listen {addr}: {e}")))
}
