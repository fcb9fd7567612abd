//! `repo-allowlist`: which repositories each action may touch.
//!
//! Settings: one pattern list per action; an action with no list is denied.
//! ```json
//! { "push": ["team-a/**"], "delete": ["team-a/**"], "pull": ["**"], "list": ["**"] }
//! ```

use std::sync::OnceLock;

use portcullis_patterns::PatternList;
use serde::Deserialize;

wit_bindgen::generate!({ path: "../../wit", world: "policy" });

use portcullis::policy::types::Action;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSettings {
    #[serde(default)]
    pull: Option<Vec<String>>,
    #[serde(default)]
    push: Option<Vec<String>>,
    #[serde(default)]
    delete: Option<Vec<String>>,
    #[serde(default)]
    list: Option<Vec<String>>,
}

pub struct Settings {
    rules: [(Action, Option<PatternList>); 4],
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
        let list = |p: Option<Vec<String>>, what: &str| {
            p.map(|p| PatternList::new(&p).map_err(|e| format!("settings.{what}: {e}")))
                .transpose()
        };
        Ok(Self {
            rules: [
                (Action::Pull, list(raw.pull, "pull")?),
                (Action::Push, list(raw.push, "push")?),
                (Action::Delete, list(raw.delete, "delete")?),
                (Action::List, list(raw.list, "list")?),
            ],
        })
    }

    pub fn decide(&self, action: Action, repository: &str) -> Decision {
        let name = action_name(action);
        let rule = self
            .rules
            .iter()
            .find(|(a, _)| action_name(*a) == name)
            .and_then(|(_, p)| p.as_ref());
        match rule {
            Some(patterns) if patterns.matches(repository) => Decision::Allow,
            Some(patterns) => Decision::Deny(format!(
                "{name} on repository {repository} is not allowed: {name} is allowed only on {}",
                patterns.describe()
            )),
            None => Decision::Deny(format!(
                "{name} is not allowed on any repository (repo-allowlist has no {name} rule)"
            )),
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
            Some(settings) => settings.decide(request.action, &request.repository),
            None => Decision::Deny("repo-allowlist was not initialised".into()),
        }
    }
}

export!(Policy);

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(d: Decision) -> bool {
        matches!(d, Decision::Allow)
    }

    #[test]
    fn push_only_to_team_a_pull_from_anything() {
        let s = Settings::parse(r#"{"push":["team-a/**"],"pull":["**"]}"#).unwrap();
        assert!(allowed(s.decide(Action::Push, "team-a/api")));
        assert!(allowed(s.decide(Action::Pull, "team-b/api")));
        match s.decide(Action::Push, "team-b/api") {
            Decision::Deny(m) => {
                assert!(m.contains("team-a/**") && m.contains("team-b/api"), "{m}")
            }
            Decision::Allow => panic!("push to team-b allowed"),
        }
        match s.decide(Action::Delete, "team-a/api") {
            Decision::Deny(m) => assert!(m.contains("no delete rule"), "{m}"),
            Decision::Allow => panic!("delete allowed without a rule"),
        }
    }

    #[test]
    fn bad_settings_are_refused() {
        assert!(Settings::parse(r#"{"psuh":["x"]}"#).is_err());
        assert!(Settings::parse(r#"{"push":[""]}"#).is_err());
        assert!(Settings::parse("42").is_err());
    }
}
