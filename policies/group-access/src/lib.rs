//! `group-access`: which groups may do what, where.
//!
//! Settings: grants per group, plus grants for anonymous callers and for every
//! authenticated user whatever their groups. A request is allowed when one of
//! the caller's grants names its action and matches its repository.
//! ```json
//! {
//!   "groups": {
//!     "devs":   [{ "repositories": ["team-a/**"], "actions": ["pull", "push", "list"] }],
//!     "admins": [{ "repositories": ["**"], "actions": ["pull", "push", "delete", "list"] }]
//!   },
//!   "authenticated": [{ "repositories": ["**"], "actions": ["pull", "list"] }],
//!   "anonymous": [{ "repositories": ["public/**"], "actions": ["pull"] }]
//! }
//! ```

use std::collections::BTreeMap;
use std::sync::OnceLock;

use portcullis_patterns::PatternList;
use serde::Deserialize;

wit_bindgen::generate!({ path: "../../wit", world: "policy" });

use portcullis::policy::types::{Action, Identity};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGrant {
    repositories: Vec<String>,
    actions: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSettings {
    #[serde(default)]
    groups: BTreeMap<String, Vec<RawGrant>>,
    #[serde(default)]
    authenticated: Vec<RawGrant>,
    #[serde(default)]
    anonymous: Vec<RawGrant>,
}

struct Grant {
    repositories: PatternList,
    actions: Vec<String>,
}

impl Grant {
    fn parse(raw: RawGrant, whose: &str) -> Result<Self, String> {
        for a in &raw.actions {
            if !matches!(a.as_str(), "pull" | "push" | "delete" | "list") {
                return Err(format!(
                    "{whose}: unknown action {a:?} (use pull, push, delete, list)"
                ));
            }
        }
        Ok(Self {
            repositories: PatternList::new(&raw.repositories)
                .map_err(|e| format!("{whose}: {e}"))?,
            actions: raw.actions,
        })
    }

    fn allows(&self, action: &str, repository: &str) -> bool {
        self.actions.iter().any(|a| a == action) && self.repositories.matches(repository)
    }
}

pub struct Settings {
    groups: BTreeMap<String, Vec<Grant>>,
    authenticated: Vec<Grant>,
    anonymous: Vec<Grant>,
}

fn action_name(action: Action) -> &'static str {
    match action {
        Action::Pull => "pull",
        Action::Push => "push",
        Action::Delete => "delete",
        Action::List => "list",
    }
}

impl Settings {
    pub fn parse(json: &str) -> Result<Self, String> {
        let raw: RawSettings = serde_json::from_str(json).map_err(|e| format!("settings: {e}"))?;
        let grants = |list: Vec<RawGrant>, whose: &str| {
            list.into_iter()
                .map(|g| Grant::parse(g, whose))
                .collect::<Result<Vec<_>, _>>()
        };
        let mut groups = BTreeMap::new();
        for (group, list) in raw.groups {
            let parsed = grants(list, &format!("groups.{group}"))?;
            groups.insert(group, parsed);
        }
        Ok(Self {
            groups,
            authenticated: grants(raw.authenticated, "authenticated")?,
            anonymous: grants(raw.anonymous, "anonymous")?,
        })
    }

    pub fn decide(&self, action: Action, repository: &str, identity: &Identity) -> Decision {
        let action = action_name(action);
        let Some(user) = &identity.subject else {
            return if self.anonymous.iter().any(|g| g.allows(action, repository)) {
                Decision::Allow
            } else {
                Decision::Deny(format!(
                    "anonymous {action} of {repository} is not allowed; log in"
                ))
            };
        };
        let by_group = identity
            .groups
            .iter()
            .filter_map(|g| self.groups.get(g))
            .flatten();
        if self
            .authenticated
            .iter()
            .chain(by_group)
            .any(|g| g.allows(action, repository))
        {
            return Decision::Allow;
        }
        let groups = if identity.groups.is_empty() {
            "no groups".to_string()
        } else {
            format!("groups {}", identity.groups.join(", "))
        };
        Decision::Deny(format!(
            "user {user} ({groups}) may not {action} {repository}"
        ))
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
            Some(s) => s.decide(request.action, &request.repository, &request.identity),
            None => Decision::Deny("group-access was not initialised".into()),
        }
    }
}

export!(Policy);

#[cfg(test)]
mod tests {
    use super::*;

    const SETTINGS: &str = r#"{
        "groups": {
            "devs": [{"repositories": ["team-a/**"], "actions": ["pull", "push", "list"]}],
            "admins": [{"repositories": ["**"], "actions": ["pull", "push", "delete", "list"]}]
        },
        "authenticated": [{"repositories": ["**"], "actions": ["pull"]}],
        "anonymous": [{"repositories": ["public/**"], "actions": ["pull"]}]
    }"#;

    fn who(user: Option<&str>, groups: &[&str]) -> Identity {
        Identity {
            subject: user.map(str::to_owned),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }

    #[test]
    fn groups_decide_who_pushes_where() {
        let s = Settings::parse(SETTINGS).unwrap();
        let alice = who(Some("alice"), &["devs"]);
        let carol = who(Some("carol"), &[]);
        assert!(matches!(
            s.decide(Action::Push, "team-a/api", &alice),
            Decision::Allow
        ));
        assert!(matches!(
            s.decide(Action::Pull, "team-b/api", &carol),
            Decision::Allow
        ));
        match s.decide(Action::Push, "team-b/api", &alice) {
            Decision::Deny(m) => assert_eq!(m, "user alice (groups devs) may not push team-b/api"),
            Decision::Allow => panic!("alice pushed to team-b"),
        }
        assert!(matches!(
            s.decide(
                Action::Delete,
                "team-a/api",
                &who(Some("root"), &["admins"])
            ),
            Decision::Allow
        ));
    }

    #[test]
    fn anonymous_callers_get_only_their_grants() {
        let s = Settings::parse(SETTINGS).unwrap();
        let anon = who(None, &[]);
        assert!(matches!(
            s.decide(Action::Pull, "public/x", &anon),
            Decision::Allow
        ));
        assert!(matches!(
            s.decide(Action::Pull, "team-a/x", &anon),
            Decision::Deny(_)
        ));
    }

    #[test]
    fn unknown_actions_are_refused() {
        let bad = r#"{"anonymous": [{"repositories": ["**"], "actions": ["pul"]}]}"#;
        match Settings::parse(bad) {
            Err(e) => assert!(e.contains("pul"), "{e}"),
            Ok(_) => panic!("unknown action accepted"),
        }
    }
}
