//! `tag-immutability`: tags that, once pushed, never move and are never deleted.
//!
//! Settings: which tags (patterns with `!` exclusions) in which repositories.
//! ```json
//! { "tags": ["v*", "!*-rc*"], "repositories": ["**"], "exempt_groups": ["admins"] }
//! ```
//! Break-glass: members of an `exempt_groups` group may move or delete an
//! immutable tag (a leaked release); every such action is logged at INFO
//! with who did it.
//! A re-push of the same digest to an immutable tag is allowed (clients
//! re-push manifests routinely); a different digest, a DELETE of the tag, or a
//! DELETE by digest of a manifest an immutable tag points to is denied.

use std::sync::OnceLock;

use portcullis_patterns::PatternList;
use serde::Deserialize;

wit_bindgen::generate!({ path: "../../wit", world: "policy" });

use portcullis::policy::types::{Action, Reference, ResourceKind};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSettings {
    tags: Vec<String>,
    #[serde(default = "everywhere")]
    repositories: Vec<String>,
    #[serde(default)]
    exempt_groups: Vec<String>,
}

fn everywhere() -> Vec<String> {
    vec!["**".into()]
}

pub struct Settings {
    tags: PatternList,
    repositories: PatternList,
    exempt_groups: Vec<String>,
}

impl Settings {
    pub fn parse(json: &str) -> Result<Self, String> {
        let raw: RawSettings = serde_json::from_str(json).map_err(|e| format!("settings: {e}"))?;
        let tags = PatternList::new(&raw.tags).map_err(|e| format!("settings.tags: {e}"))?;
        if tags.is_empty() {
            return Err("settings.tags: name at least one tag pattern, e.g. [\"v*\"]".into());
        }
        Ok(Self {
            tags,
            repositories: PatternList::new(&raw.repositories)
                .map_err(|e| format!("settings.repositories: {e}"))?,
            exempt_groups: raw.exempt_groups,
        })
    }

    /// The decision, with the break-glass exemption applied: a denial for a
    /// member of an exempt group is an allow, and a log line.
    pub fn decide(&self, request: &Request) -> Decision {
        match self.rule(request) {
            Decision::Deny(reason) => {
                let exempt = request
                    .identity
                    .groups
                    .iter()
                    .find(|g| self.exempt_groups.contains(g));
                match exempt {
                    Some(group) => {
                        #[cfg(target_arch = "wasm32")]
                        portcullis::policy::log::log(
                            portcullis::policy::log::Level::Info,
                            &format!(
                                "break-glass: {} (group {group}) allowed past immutability: {reason}",
                                request.identity.subject.as_deref().unwrap_or("anonymous")
                            ),
                        );
                        let _ = (group, reason);
                        Decision::Allow
                    }
                    None => Decision::Deny(reason),
                }
            }
            allow => allow,
        }
    }

    fn rule(&self, request: &Request) -> Decision {
        if request.resource != ResourceKind::Manifest
            || !self.repositories.matches(&request.repository)
        {
            return Decision::Allow;
        }
        let repo = &request.repository;
        match (&request.action, &request.reference) {
            (Action::Push, Some(Reference::Tag(tag))) if self.tags.matches(tag) => {
                let new = request.manifest.as_ref().map(|m| m.digest.as_str());
                match (&request.current_digest, new) {
                    (Some(current), Some(new)) if current != new => Decision::Deny(format!(
                        "tag {tag} in {repo} is immutable: it points to {current}; push under a new tag instead"
                    )),
                    _ => Decision::Allow,
                }
            }
            (Action::Delete, Some(Reference::Tag(tag)))
                if self.tags.matches(tag) && request.current_digest.is_some() =>
            {
                Decision::Deny(format!(
                    "tag {tag} in {repo} is immutable and cannot be deleted"
                ))
            }
            (Action::Delete, Some(Reference::Digest(digest))) => {
                match request.digest_tags.iter().find(|t| self.tags.matches(t)) {
                    Some(tag) => Decision::Deny(format!(
                        "manifest {digest} in {repo} is the immutable tag {tag} and cannot be deleted"
                    )),
                    None => Decision::Allow,
                }
            }
            _ => Decision::Allow,
        }
    }
}

static SETTINGS: OnceLock<Settings> = OnceLock::new();

struct Policy;

impl Guest for Policy {
    fn validate_settings(settings: String) -> Result<(), String> {
        Settings::parse(&settings).map(|_| ())
    }

    fn init(settings: String) -> Result<(), String> {
        let parsed = Settings::parse(&settings)?;
        SETTINGS
            .set(parsed)
            .map_err(|_| "init called twice".to_string())
    }

    fn evaluate(request: Request) -> Decision {
        match SETTINGS.get() {
            Some(s) => s.decide(&request),
            None => Decision::Deny("tag-immutability was not initialised".into()),
        }
    }
}

export!(Policy);

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis::policy::types::{Identity, Manifest};

    fn push(tag: &str, current: Option<&str>, new: &str) -> Request {
        Request {
            action: Action::Push,
            resource: ResourceKind::Manifest,
            repository: "team-a/api".into(),
            reference: Some(Reference::Tag(tag.into())),
            identity: Identity {
                subject: Some("alice".into()),
                groups: vec![],
            },
            client_ip: "127.0.0.1".into(),
            manifest: Some(Manifest {
                media_type: "application/vnd.oci.image.manifest.v1+json".into(),
                digest: new.into(),
                size: 100,
                artifact_type: None,
                subject: None,
                annotations: vec![],
                image: None,
                children: vec![],
            }),
            current_digest: current.map(str::to_owned),
            digest_tags: vec![],
            mount_from: None,
            now: 0,
        }
    }

    fn settings() -> Settings {
        Settings::parse(r#"{"tags": ["v*", "!*-rc*"]}"#).unwrap()
    }

    #[test]
    fn same_digest_repush_is_allowed_other_digest_denied() {
        let s = settings();
        assert!(matches!(
            s.decide(&push("v1.2.0", None, "sha256:a")),
            Decision::Allow
        ));
        assert!(matches!(
            s.decide(&push("v1.2.0", Some("sha256:a"), "sha256:a")),
            Decision::Allow
        ));
        match s.decide(&push("v1.2.0", Some("sha256:a"), "sha256:b")) {
            Decision::Deny(m) => assert!(m.contains("v1.2.0") && m.contains("sha256:a"), "{m}"),
            Decision::Allow => panic!("immutable tag moved"),
        }
        assert!(matches!(
            s.decide(&push("v1.3.0-rc1", Some("sha256:a"), "sha256:b")),
            Decision::Allow
        ));
        assert!(matches!(
            s.decide(&push("latest", Some("sha256:a"), "sha256:b")),
            Decision::Allow
        ));
    }

    #[test]
    fn deletes_of_immutable_tags_are_denied() {
        let s = settings();
        let mut r = push("v1.2.0", Some("sha256:a"), "sha256:a");
        r.action = Action::Delete;
        r.manifest = None;
        assert!(matches!(s.decide(&r), Decision::Deny(_)));
        r.reference = Some(Reference::Digest("sha256:a".into()));
        r.current_digest = None;
        r.digest_tags = vec!["latest".into(), "v1.2.0".into()];
        assert!(matches!(s.decide(&r), Decision::Deny(_)));
        r.digest_tags = vec!["latest".into()];
        assert!(matches!(s.decide(&r), Decision::Allow));
    }

    #[test]
    fn exempt_groups_may_break_glass_and_others_may_not() {
        let s = Settings::parse(r#"{"tags": ["v*"], "exempt_groups": ["admins"]}"#).unwrap();
        let mut r = push("v1.2.0", Some("sha256:a"), "sha256:b");
        r.identity.groups = vec!["devs".into()];
        assert!(matches!(s.decide(&r), Decision::Deny(_)));
        r.identity.groups = vec!["admins".into(), "devs".into()];
        assert!(matches!(s.decide(&r), Decision::Allow));
        r.action = Action::Delete;
        r.manifest = None;
        assert!(matches!(s.decide(&r), Decision::Allow));
    }
}
