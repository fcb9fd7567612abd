//! Prometheus metrics, served at `/metrics`: requests by route, method and
//! status with latency histograms, bytes in and out, policy decisions by
//! policy and outcome with evaluation time, policy reloads, storage bytes,
//! the served TLS certificate's expiry.
//! Labels never carry repository names or users, so cardinality stays small.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
    method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    policy: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PolicyLabels {
    policy: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LookupLabels {
    kind: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RunLabels {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RetentionLabels {
    outcome: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// No labels: a family of one series, which is absent until it is set (a
/// registry without TLS shows no certificate expiry rather than a zero).
type Unlabelled = Vec<(String, String)>;

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: HistogramFamily<RouteLabels>,
    bytes_in: Family<RouteLabels, Counter>,
    bytes_out: Family<RouteLabels, Counter>,
    decisions: Family<DecisionLabels, Counter>,
    evaluation: HistogramFamily<PolicyLabels>,
    reloads: Family<ReloadLabels, Counter>,
    lookups: Family<LookupLabels, Counter>,
    lookup_bytes: Counter,
    storage_bytes: Gauge,
    tls_expiry: Family<Unlabelled, Gauge>,
    gc_runs: Family<RunLabels, Counter>,
    gc_running: Gauge,
    gc_last_run: Gauge,
    gc_freed_bytes: Counter,
    retention: Family<RetentionLabels, Counter>,
}

fn request_buckets() -> Histogram {
    // 0.1 ms .. ~13 s
    Histogram::new(exponential_buckets(0.0001, 2.0, 18))
}

fn policy_buckets() -> Histogram {
    // 1 µs .. ~33 ms
    Histogram::new(exponential_buckets(0.000_001, 2.0, 16))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("portcullis");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = HistogramFamily::<RouteLabels>::new_with_constructor(request_buckets);
        let bytes_in = Family::<RouteLabels, Counter>::default();
        let bytes_out = Family::<RouteLabels, Counter>::default();
        let decisions = Family::<DecisionLabels, Counter>::default();
        let evaluation = HistogramFamily::<PolicyLabels>::new_with_constructor(policy_buckets);
        let reloads = Family::<ReloadLabels, Counter>::default();
        let lookups = Family::<LookupLabels, Counter>::default();
        let lookup_bytes = Counter::default();
        let storage_bytes = Gauge::default();
        let tls_expiry = Family::<Unlabelled, Gauge>::default();
        let gc_runs = Family::<RunLabels, Counter>::default();
        let gc_running = Gauge::default();
        let gc_last_run = Gauge::default();
        let gc_freed_bytes = Counter::default();
        let retention = Family::<RetentionLabels, Counter>::default();
        registry.register(
            "gc_runs",
            "gc runs (with retention, when configured) by result: ok, failed, skipped (another run held the lock)",
            gc_runs.clone(),
        );
        registry.register(
            "gc_running",
            "1 while this process runs gc or retention",
            gc_running.clone(),
        );
        registry.register(
            "gc_last_success_timestamp_seconds",
            "When this process last finished a gc run without error (Unix time)",
            gc_last_run.clone(),
        );
        registry.register(
            "gc_freed_bytes",
            "Bytes gc removed (blobs, upload sessions, staging files)",
            gc_freed_bytes.clone(),
        );
        registry.register(
            "retention",
            "What retention did by outcome: tag_deleted, manifest_deleted, refused (by a policy)",
            retention.clone(),
        );
        registry.register(
            "http_requests",
            "HTTP requests by route, method and status",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency",
            latency.clone(),
        );
        registry.register(
            "http_received_bytes",
            "Request body bytes received",
            bytes_in.clone(),
        );
        registry.register(
            "http_sent_bytes",
            "Response body bytes sent",
            bytes_out.clone(),
        );
        registry.register(
            "policy_decisions",
            "Policy decisions by policy and outcome",
            decisions.clone(),
        );
        registry.register(
            "policy_evaluation_duration_seconds",
            "Time one policy took to decide one request",
            evaluation.clone(),
        );
        registry.register(
            "policy_reloads",
            "Policy chain reloads by result",
            reloads.clone(),
        );
        registry.register(
            "policy_lookups",
            "Lookups made by policies, by kind (referrers, manifest, blob, verify) and outcome",
            lookups.clone(),
        );
        registry.register(
            "policy_lookup_bytes",
            "Bytes handed to policies by lookups",
            lookup_bytes.clone(),
        );
        registry.register(
            "storage_blob_bytes",
            "Bytes held in blobs",
            storage_bytes.clone(),
        );
        registry.register(
            "tls_certificate_expiry_timestamp_seconds",
            "When the served TLS certificate expires (its notAfter), in seconds since the Unix epoch",
            tls_expiry.clone(),
        );
        Self {
            registry,
            requests,
            latency,
            bytes_in,
            bytes_out,
            decisions,
            evaluation,
            reloads,
            lookups,
            lookup_bytes,
            storage_bytes,
            tls_expiry,
            gc_runs,
            gc_running,
            gc_last_run,
            gc_freed_bytes,
            retention,
        }
    }

    /// A gc run ended: `result` is `ok`, `failed` or `skipped`.
    pub fn record_gc_run(&self, result: &str, freed_bytes: u64) {
        self.gc_runs
            .get_or_create(&RunLabels {
                result: result.to_owned(),
            })
            .inc();
        self.gc_freed_bytes.inc_by(freed_bytes);
        if result == "ok" {
            let now = chrono::Utc::now().timestamp();
            self.gc_last_run.set(now);
        }
    }

    pub fn set_gc_running(&self, running: bool) {
        self.gc_running.set(i64::from(running));
    }

    /// `outcome`: `tag_deleted`, `manifest_deleted` or `refused`.
    pub fn record_retention(&self, outcome: &str, count: u64) {
        if count > 0 {
            self.retention
                .get_or_create(&RetentionLabels {
                    outcome: outcome.to_owned(),
                })
                .inc_by(count);
        }
    }

    pub fn record_request(
        &self,
        route: &str,
        method: &str,
        status: u16,
        bytes_in: u64,
        bytes_out: u64,
        elapsed: Duration,
    ) {
        let route_labels = RouteLabels {
            route: route.to_owned(),
            method: method.to_owned(),
        };
        self.requests
            .get_or_create(&RequestLabels {
                route: route.to_owned(),
                method: method.to_owned(),
                status: status.to_string(),
            })
            .inc();
        self.latency
            .get_or_create(&route_labels)
            .observe(elapsed.as_secs_f64());
        self.bytes_in.get_or_create(&route_labels).inc_by(bytes_in);
        self.bytes_out
            .get_or_create(&route_labels)
            .inc_by(bytes_out);
    }

    /// `outcome` is `allow`, `deny` or `failed`.
    pub fn record_decision(&self, policy: &str, outcome: &str, elapsed: Duration) {
        self.decisions
            .get_or_create(&DecisionLabels {
                policy: policy.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
        self.evaluation
            .get_or_create(&PolicyLabels {
                policy: policy.to_owned(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// One lookup a policy made: `kind` as in the contract, `outcome` `ok` or
    /// the contract's error name; `bytes` handed to the policy.
    pub fn record_lookup(&self, kind: &str, outcome: &str, bytes: u64) {
        self.lookups
            .get_or_create(&LookupLabels {
                kind: kind.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
        self.lookup_bytes.inc_by(bytes);
    }

    pub fn record_reload(&self, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        self.reloads
            .get_or_create(&ReloadLabels {
                result: result.to_owned(),
            })
            .inc();
    }

    pub fn set_storage_bytes(&self, bytes: u64) {
        self.storage_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// The served certificate's notAfter, as Unix seconds.
    pub fn set_tls_certificate_expiry(&self, not_after: i64) {
        self.tls_expiry
            .get_or_create(&Unlabelled::new())
            .set(not_after);
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        out
    }
}
