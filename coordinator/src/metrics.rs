//! Prometheus metrics (issue 12, item 1): counters and histograms moved where things happen
//! (an operation ends, an RPC answers, a transfer ends), gauges read from the coordinator's
//! state when scraped (hosts, VMs, operations by state, reservations), served as Prometheus
//! text on `metrics_listen` (off when unset).

use std::net::SocketAddr;
use std::sync::{Arc, LazyLock, Weak};
use std::time::Instant;

use corral_proto::metrics::{Defs, Rpcs};
use prometheus::{HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Registry};

use crate::error::{CoordError, Result};
use crate::vms::Coordinator;

/// Every metric of the process.
pub struct Metrics {
    registry: Registry,
    ops: IntCounterVec,
    op_seconds: HistogramVec,
    rpcs: Rpcs,
    transfer_bytes: IntCounterVec,
    hosts: IntGaugeVec,
    vms: IntGaugeVec,
    ops_now: IntGaugeVec,
    reservations: IntGauge,
    pools: IntGaugeVec,
    placement: HistogramVec,
}

impl Metrics {
    fn new() -> prometheus::Result<Self> {
        let d = Defs::new()?;
        let registry = d.0.clone();
        let reservations = IntGauge::new(
            "reservations",
            "Capacity reservations held for operations placing VMs",
        )?;
        registry.register(Box::new(reservations.clone()))?;
        Ok(Self {
            ops: d.counter(
                "operations_total",
                "Operations ended, by kind and outcome",
                &["kind", "outcome"],
            )?,
            op_seconds: d.histogram(
                "operation_duration_seconds",
                "Operations' time from submission to their end, by kind",
                &["kind"],
            )?,
            rpcs: Rpcs::new(&d, "")?,
            transfer_bytes: d.counter(
                "transfer_bytes_total",
                "Bytes the agents' volume sync sent, as data and on the wire",
                &["what"],
            )?,
            hosts: d.gauge("hosts", "Hosts by state", &["state"])?,
            vms: d.gauge("vms", "VMs by observed state", &["state"])?,
            ops_now: d.gauge(
                "operations",
                "Unfinished operations by state (queued, running)",
                &["state"],
            )?,
            pools: d.gauge(
                "pool_clones",
                "Pools by base: the size asked (target, start) and clones made, making, running, ready",
                &["base", "what"],
            )?,
            placement: {
                let opts = prometheus::HistogramOpts::new(
                    "placement_seconds",
                    "Placement: the decision over every host (decide), and with the store reads \
                     it needs (total)",
                )
                .buckets(vec![
                    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                    0.1,
                ]);
                let h = HistogramVec::new(opts, &["part"])?;
                registry.register(Box::new(h.clone()))?;
                h
            },
            reservations,
            registry,
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

/// An operation ended.
pub fn operation(kind: &str, outcome: &str, created_ms: i64) {
    if let Some(m) = METRICS.as_ref() {
        m.ops.with_label_values(&[kind, outcome]).inc();
        let secs = (crate::store::now_ms() - created_ms).max(0) as f64 / 1000.0;
        m.op_seconds.with_label_values(&[kind]).observe(secs);
    }
}

/// An RPC answered with `code` after `started`.
pub fn rpc(method: &str, code: tonic::Code, started: Instant) {
    if let Some(m) = METRICS.as_ref() {
        m.rpcs.observe(method, code, started);
    }
}

/// A placement took `secs` (`part`: decide or total).
pub fn placement(part: &str, secs: f64) {
    if let Some(m) = METRICS.as_ref() {
        m.placement.with_label_values(&[part]).observe(secs);
    }
}

/// A transfer between agents ended: its data and wire bytes.
pub fn transfer(data: u64, wire: u64) {
    if let Some(m) = METRICS.as_ref() {
        m.transfer_bytes.with_label_values(&["data"]).inc_by(data);
        m.transfer_bytes.with_label_values(&["wire"]).inc_by(wire);
    }
}

impl Coordinator {
    /// Every metric as Prometheus text, the gauges read now.
    pub async fn metrics_text(&self) -> Result<String> {
        let Some(m) = METRICS.as_ref() else {
            return Ok(String::new());
        };
        let mut hosts = std::collections::BTreeMap::<&str, i64>::new();
        for s in ["up", "down", "unknown", "disabled"] {
            hosts.insert(s, 0);
        }
        for (_, status, live) in self.hosts.statuses()? {
            let state = if status.record.as_ref().is_some_and(|r| !r.enabled) {
                "disabled"
            } else {
                match live {
                    crate::hosts::Liveness::Up => "up",
                    crate::hosts::Liveness::Down => "down",
                    crate::hosts::Liveness::Unknown => "unknown",
                }
            };
            *hosts.entry(state).or_default() += 1;
        }
        for (s, n) in hosts {
            m.hosts.with_label_values(&[s]).set(n);
        }
        let (vms, ops, pools, members) = self
            .blocking(|s| {
                Ok((
                    s.vm_states()?,
                    s.operations(true)?,
                    s.base_pools()?,
                    s.pool_vms()?,
                ))
            })
            .await?;
        m.pools.reset();
        for (base, size) in pools {
            let p = self.status_of(&base, size, &members);
            for (what, n) in [
                ("target", p.size.clones),
                ("start", p.size.start),
                ("made", p.made),
                ("making", p.making),
                ("running", p.running),
                ("ready", p.ready),
            ] {
                m.pools
                    .with_label_values(&[base.as_str(), what])
                    .set(i64::from(n));
            }
        }
        m.vms.reset();
        for (state, n) in &vms {
            let state = state.strip_prefix("DOMAIN_STATE_").unwrap_or(state);
            m.vms
                .with_label_values(&[state.to_lowercase().as_str()])
                .add(i64::try_from(*n).unwrap_or(i64::MAX));
        }
        m.ops_now.reset();
        for s in ["queued", "running"] {
            m.ops_now.with_label_values(&[s]).set(0);
        }
        for o in &ops {
            m.ops_now.with_label_values(&[o.state.as_str()]).inc();
        }
        m.reservations.set(self.reservations.held() as i64);
        corral_proto::metrics::render(&m.registry)
            .map_err(|e| CoordError::Internal(format!("metrics: {e}")))
    }

    /// Serves `/metrics` on `addr` until the coordinator goes (it holds a weak reference).
    pub async fn serve_metrics(self: &Arc<Self>, addr: SocketAddr) -> Result<SocketAddr> {
        let me: Weak<Self> = Arc::downgrade(self);
        corral_proto::metrics::serve(addr, move || {
            let me = me.clone();
            async move {
                match me.upgrade() {
                    Some(c) => c.metrics_text().await.map_err(|e| e.to_string()),
                    None => Err("the coordinator stopped".to_string()),
                }
            }
        })
        .await
        .map_err(|e| CoordError::Invalid(format!("metrics listen {addr}: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use crate::fake::Kit;
    use crate::orders::CloneOrder;

    /// The value of one sample (`name` with every label in `labels`), 0 when absent.
    fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
        let lines = text.lines().map(|l| Ok(l.to_string()));
        let scrape = prometheus_parse::Scrape::parse(lines).unwrap();
        scrape
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => 0.0,
            })
            .sum()
    }

    #[tokio::test]
    async fn a_clone_moves_the_counters_and_the_text_parses() {
        let kit = Kit::new(2).await;
        kit.base("web", None, &["h1"]).await;
        let before = kit.coord.metrics_text().await.unwrap();
        let done = |t: &str| {
            sample(
                t,
                "corral_operations_total",
                &[("kind", "clone"), ("outcome", "succeeded")],
            )
        };
        let order = CloneOrder {
            base: "web".into(),
            name: "m1".into(),
            ..Default::default()
        };
        let op = kit.coord.clone_vm(&kit.alice, order).await.unwrap();
        kit.end(&op.id).await;
        let after = kit.coord.metrics_text().await.unwrap();
        assert!(done(&after) >= done(&before) + 1.0, "{after}");
        assert_eq!(
            sample(&after, "corral_hosts", &[("state", "up")]),
            2.0,
            "{after}"
        );
        assert_eq!(sample(&after, "corral_vms", &[]), 1.0, "{after}");
        assert!(
            after.contains("corral_operation_duration_seconds_bucket{kind=\"clone\""),
            "{after}"
        );
        assert!(
            after.contains("# TYPE corral_operations_total counter"),
            "{after}"
        );

        // A pool's fill: the size asked and the clones made and running.
        let size = crate::store::PoolSize {
            clones: 2,
            start: 1,
        };
        kit.coord
            .set_base_pool(&kit.admin, "web", size)
            .await
            .unwrap();
        kit.coord.manage_pools().await.unwrap();
        for op in kit.coord.ops.list(true).await.unwrap() {
            kit.end(&op.id).await;
        }
        let text = kit.coord.metrics_text().await.unwrap();
        let pool = |what| {
            sample(
                &text,
                "corral_pool_clones",
                &[("base", "web"), ("what", what)],
            )
        };
        assert_eq!((pool("target"), pool("start")), (2.0, 1.0), "{text}");
        assert_eq!(
            (pool("made"), pool("running"), pool("making")),
            (2.0, 1.0, 0.0),
            "{text}"
        );
    }
}
