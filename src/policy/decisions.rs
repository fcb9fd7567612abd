//! The decision log: one JSON line per decision of the chain (denials only,
//! or all), with the request's facts as the contract showed them (never a
//! credential: the contract carries none), the deciding policy, the outcome,
//! the reason, what audit-mode policies would have denied and the time taken.
//! Written to a file or stderr, and kept in a bounded in-memory ring per
//! replica (the web page's "recent decisions"). `portcullis policy replay`
//! reads the lines back.

use std::collections::VecDeque;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use super::bindings::portcullis::policy::types as wit;
use super::chain::Verdict;
use super::request::JsonRequest;
use crate::config::{DecisionLogConfig, DecisionRecord};

/// How the chain decided.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Judgement {
    /// `allow`, `deny`, `failed` or `unavailable`.
    pub outcome: String,
    /// The policy that decided (none for an allow).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Judgement {
    pub fn of(verdict: &Verdict) -> Self {
        let (outcome, policy, reason) = match verdict {
            Verdict::Allow => ("allow", None, None),
            Verdict::Deny { policy, reason } => ("deny", Some(policy), Some(reason)),
            Verdict::Failed { policy, reason } => ("failed", Some(policy), Some(reason)),
            Verdict::Unavailable { policy } => ("unavailable", Some(policy), None),
        };
        Self {
            outcome: outcome.into(),
            policy: policy.cloned(),
            reason: reason.cloned(),
        }
    }
}

/// What an audit-mode policy would have denied.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Audited {
    pub policy: String,
    pub reason: String,
}

/// One logged decision.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Decision {
    /// RFC 3339, UTC.
    pub time: String,
    #[serde(flatten)]
    pub judgement: Judgement,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audit: Vec<Audited>,
    pub micros: u64,
    pub request: JsonRequest,
    /// Facts left out to keep the line within `max_line_bytes`, each with
    /// the SHA-256 of its JSON: a replay of this line is not exact.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub omitted: Vec<(String, String)>,
}

impl Decision {
    pub fn new(
        request: &wit::Request,
        judgement: Judgement,
        audited: Vec<(String, String)>,
        took: Duration,
    ) -> Self {
        let mut decision = Self {
            time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            judgement,
            audit: audited
                .into_iter()
                .map(|(policy, reason)| Audited { policy, reason })
                .collect(),
            micros: u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
            request: JsonRequest::from_wit(request),
            omitted: Vec::new(),
        };
        decision.omit_secrets();
        decision
    }

    /// An image's environment, command and entrypoint often carry secrets
    /// baked in: they are always written as their digest, never in clear.
    fn omit_secrets(&mut self) {
        let Some(config) = self
            .request
            .manifest
            .as_mut()
            .and_then(|m| m.image.as_mut())
            .and_then(|i| i.config.as_mut())
        else {
            return;
        };
        for (field, list) in [
            ("manifest.image.config.env", &mut config.env),
            ("manifest.image.config.cmd", &mut config.cmd),
            ("manifest.image.config.entrypoint", &mut config.entrypoint),
        ] {
            if !list.is_empty() {
                let digest = list.digest();
                list.clear_all();
                self.omitted.push((field.to_owned(), digest));
            }
        }
    }

    /// The JSON line, at most `max` bytes: large facts are replaced by their
    /// digest, biggest first, until it fits; then the reason is cut.
    pub fn to_line(&mut self, max: usize) -> String {
        let mut line = serde_json::to_string(self).unwrap_or_default();
        while line.len() > max {
            if !self.omit_largest() {
                break;
            }
            line = serde_json::to_string(self).unwrap_or_default();
        }
        if line.len() > max {
            if let Some(reason) = &mut self.judgement.reason {
                let keep = reason.len().saturating_sub(line.len() - max + 16);
                let mut end = keep;
                while !reason.is_char_boundary(end) {
                    end -= 1;
                }
                reason.truncate(end);
                reason.push_str(" [cut]");
                line = serde_json::to_string(self).unwrap_or_default();
            }
        }
        line
    }

    /// Replaces the largest list of facts by its digest; false when none is left.
    fn omit_largest(&mut self) -> bool {
        fn size<T: Serialize>(v: &T) -> usize {
            serde_json::to_vec(v).map_or(0, |b| b.len())
        }
        fn digest<T: Serialize>(v: &T) -> String {
            let bytes = serde_json::to_vec(v).unwrap_or_default();
            format!("sha256:{}", hex::encode(sha2::Sha256::digest(&bytes)))
        }
        let Some(m) = self.request.manifest.as_mut() else {
            return false;
        };
        let mut candidates: Vec<(usize, &'static str)> = vec![
            (size(&m.annotations), "manifest.annotations"),
            (size(&m.children), "manifest.children"),
        ];
        if let Some(image) = &m.image {
            candidates.push((size(&image.layers), "manifest.image.layers"));
            if let Some(c) = &image.config {
                candidates.push((size(&c.labels), "manifest.image.config.labels"));
                candidates.push((size(&c.env), "manifest.image.config.env"));
                candidates.push((size(&c.entrypoint), "manifest.image.config.entrypoint"));
                candidates.push((size(&c.cmd), "manifest.image.config.cmd"));
            }
        }
        candidates.retain(|(n, _)| *n > 2);
        let Some((_, field)) = candidates.into_iter().max_by_key(|(n, _)| *n) else {
            return false;
        };
        let hash = match field {
            "manifest.annotations" => {
                let h = digest(&m.annotations);
                m.annotations.clear();
                h
            }
            "manifest.children" => {
                let h = digest(&m.children);
                m.children.clear();
                h
            }
            _ => {
                let Some(image) = m.image.as_mut() else {
                    return false;
                };
                if field == "manifest.image.layers" {
                    let h = digest(&image.layers);
                    image.layers.clear();
                    h
                } else {
                    let Some(c) = image.config.as_mut() else {
                        return false;
                    };
                    let list: &mut dyn ErasedClear = match field {
                        "manifest.image.config.labels" => &mut c.labels,
                        "manifest.image.config.env" => &mut c.env,
                        "manifest.image.config.entrypoint" => &mut c.entrypoint,
                        _ => &mut c.cmd,
                    };
                    let h = list.digest();
                    list.clear_all();
                    h
                }
            }
        };
        self.omitted.push((field.to_owned(), hash));
        true
    }
}

/// A list of facts that can be digested and emptied.
trait ErasedClear {
    fn digest(&self) -> String;
    fn clear_all(&mut self);
}

impl<T: Serialize> ErasedClear for Vec<T> {
    fn digest(&self) -> String {
        let bytes = serde_json::to_vec(self).unwrap_or_default();
        format!("sha256:{}", hex::encode(sha2::Sha256::digest(&bytes)))
    }
    fn clear_all(&mut self) {
        self.clear();
    }
}

/// Lines waiting for the writer thread; past that, lines are dropped (and
/// counted in the log) rather than stall requests behind a slow file or pipe.
const QUEUED_LINES: usize = 4096;

/// Where decisions go.
pub struct DecisionLog {
    record: DecisionRecord,
    max_line: usize,
    sink: Option<std::sync::mpsc::SyncSender<String>>,
    dropped: Arc<std::sync::atomic::AtomicU64>,
    ring: Mutex<VecDeque<Arc<Decision>>>,
    capacity: usize,
}

/// Writes queued lines; after a gap, a line saying how many were dropped.
fn write_lines(
    lines: std::sync::mpsc::Receiver<String>,
    mut out: Box<dyn Write + Send>,
    dropped: Arc<std::sync::atomic::AtomicU64>,
) {
    use std::sync::atomic::Ordering;
    for line in lines {
        let lost = dropped.swap(0, Ordering::Relaxed);
        if lost > 0 {
            let note = serde_json::json!({
                "time": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                "dropped": lost,
            });
            let _ = writeln!(out, "{note}");
        }
        if let Err(e) = writeln!(out, "{line}") {
            tracing::warn!(error = %e, "cannot write the decision log");
        }
    }
}

impl DecisionLog {
    /// Opens the log a config asks for (the file is created mode 0600 and
    /// appended to).
    pub fn open(config: &DecisionLogConfig) -> std::io::Result<Self> {
        let sink: Option<Box<dyn Write + Send>> = match config.path.as_deref() {
            None => None,
            Some(p) if p == Path::new("-") => Some(Box::new(std::io::stderr())),
            Some(p) => {
                use std::os::unix::fs::OpenOptionsExt;
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o600)
                    .open(p)?;
                Some(Box::new(std::io::LineWriter::new(file)))
            }
        };
        let dropped = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let sink = match sink {
            Some(out) => {
                let (tx, rx) = std::sync::mpsc::sync_channel(QUEUED_LINES);
                let counter = Arc::clone(&dropped);
                std::thread::Builder::new()
                    .name("decision-log".into())
                    .spawn(move || write_lines(rx, out, counter))?;
                Some(tx)
            }
            None => None,
        };
        Ok(Self {
            record: config.record,
            max_line: usize::try_from(config.max_line_bytes.as_u64())
                .unwrap_or(usize::MAX)
                .max(1024),
            sink,
            dropped,
            ring: Mutex::new(VecDeque::new()),
            capacity: config.ring,
        })
    }

    /// Whether a decision with this verdict is recorded.
    pub fn wants(&self, verdict: &Verdict, audited: bool) -> bool {
        match self.record {
            DecisionRecord::Off => false,
            DecisionRecord::All => true,
            DecisionRecord::Denials => audited || !matches!(verdict, Verdict::Allow),
        }
    }

    pub fn record(&self, mut decision: Decision) {
        let line = decision.to_line(self.max_line);
        if let Some(sink) = &self.sink {
            if sink.try_send(line).is_err() {
                self.dropped
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        if self.capacity > 0 {
            let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
            if ring.len() >= self.capacity {
                ring.pop_front();
            }
            ring.push_back(Arc::new(decision));
        }
    }

    /// The most recent decisions, newest first, that `filter` keeps.
    pub fn recent(&self, limit: usize, filter: impl Fn(&Decision) -> bool) -> Vec<Arc<Decision>> {
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        ring.iter()
            .rev()
            .filter(|d| filter(d))
            .take(limit)
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::request::JsonRequest;

    fn request_with(annotations: usize, env: usize) -> wit::Request {
        let json = serde_json::json!({
            "action": "push", "resource": "manifest", "repository": "team/app",
            "reference": { "tag": "v1" },
            "manifest": {
                "media-type": "application/vnd.oci.image.manifest.v1+json",
                "digest": format!("sha256:{}", "a".repeat(64)),
                "annotations": (0..annotations).map(|i| (format!("k{i}"), "v".repeat(100))).collect::<Vec<_>>(),
                "image": { "config": { "env": (0..env).map(|i| format!("E{i}={}", "x".repeat(100))).collect::<Vec<_>>() } }
            }
        });
        serde_json::from_value::<JsonRequest>(json)
            .expect("a request")
            .into_wit()
    }

    #[test]
    fn lines_stay_within_the_cap_by_replacing_the_largest_facts_with_digests() {
        let judgement = Judgement {
            outcome: "deny".into(),
            policy: Some("p".into()),
            reason: Some("r".repeat(3000)),
        };
        let mut decision = Decision::new(
            &request_with(500, 200),
            judgement,
            Vec::new(),
            Duration::from_micros(5),
        );
        let line = decision.to_line(4096);
        assert!(line.len() <= 4096, "{} bytes", line.len());
        let parsed: Decision = serde_json::from_str(&line).expect("the line parses back");
        let omitted: Vec<&str> = parsed.omitted.iter().map(|(f, _)| f.as_str()).collect();
        assert!(omitted.contains(&"manifest.annotations"), "{omitted:?}");
        assert!(parsed.omitted.iter().all(|(_, d)| d.starts_with("sha256:")));
        assert_eq!(parsed.request.repository, "team/app");
    }

    #[test]
    fn an_images_env_never_reaches_the_log_in_clear() {
        let mut decision = Decision::new(
            &request_with(0, 3),
            Judgement {
                outcome: "deny".into(),
                policy: Some("p".into()),
                reason: None,
            },
            Vec::new(),
            Duration::from_micros(1),
        );
        let line = decision.to_line(1 << 20);
        assert!(!line.contains("E0="), "{line}");
        assert!(line.contains("manifest.image.config.env"), "{line}");
    }

    #[test]
    fn small_decisions_are_written_whole() {
        let mut decision = Decision::new(
            &request_with(2, 2),
            Judgement {
                outcome: "allow".into(),
                policy: None,
                reason: None,
            },
            vec![("audited".into(), "would deny".into())],
            Duration::from_micros(5),
        );
        let line = decision.to_line(16 << 10);
        let parsed: Decision = serde_json::from_str(&line).expect("parses");
        // Only the env, always by digest.
        let omitted: Vec<&str> = parsed.omitted.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(omitted, ["manifest.image.config.env"]);
        assert_eq!(parsed.audit[0].policy, "audited");
        assert_eq!(
            parsed.request.manifest.map(|m| m.annotations.len()),
            Some(2)
        );
    }
}
