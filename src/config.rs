//! The configuration: built-in defaults < a TOML file < `PORTCULLIS_*` environment
//! variables (nested keys joined with `__`, e.g. `PORTCULLIS_STORAGE__ROOT`).
//!
//! This module only loads and checks values; it does not open files or sockets.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {0} does not exist")]
    Missing(PathBuf),
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address the registry listens on.
    pub listen: SocketAddr,
    pub storage: StorageConfig,
    pub limits: LimitsConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// Root of the Distribution-layout data directory (`docker/registry/v2` lives below it).
    pub root: PathBuf,
    /// Whether DELETE on manifests, tags and blobs is accepted (else 405 UNSUPPORTED).
    pub delete_enabled: bool,
    /// Upload sessions untouched for longer than this are removed by `gc`;
    /// blobs younger than this are never swept, so an image being pushed is safe.
    #[serde(with = "humantime_serde")]
    pub upload_max_age: Duration,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest manifest accepted on PUT, in bytes (the spec suggests 4 MiB).
    pub max_manifest_bytes: u64,
    /// Largest page `n` accepted for tag and catalog listings.
    pub max_page_size: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 5000)),
            storage: StorageConfig {
                root: PathBuf::from("./data"),
                delete_enabled: true,
                upload_max_age: Duration::from_secs(24 * 3600),
            },
            limits: LimitsConfig {
                max_manifest_bytes: 4 * 1024 * 1024,
                max_page_size: 10_000,
            },
        }
    }
}

impl Config {
    /// Loads defaults, then `file` if given, then the environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_with_env(file, Env::prefixed("PORTCULLIS_").split("__"))
    }

    fn load_with_env(file: Option<&Path>, env: Env) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::Missing(path.to_owned()));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        let config: Config = figment
            .merge(env)
            .extract()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> Result<(), ConfigError> {
        if self.limits.max_manifest_bytes == 0 {
            return Err(ConfigError::Invalid(
                "limits.max_manifest_bytes must be greater than 0".into(),
            ));
        }
        if self.limits.max_page_size == 0 {
            return Err(ConfigError::Invalid(
                "limits.max_page_size must be greater than 0".into(),
            ));
        }
        Ok(())
    }

    /// The effective configuration as TOML, for `portcullis config`.
    /// There are no secret-bearing keys yet; when there are, they are masked here.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_overrides_defaults_and_env_overrides_file() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "p.toml",
                "listen = \"127.0.0.1:6000\"\n[storage]\nroot = \"/srv/a\"\n",
            )?;
            jail.set_env("PORTCULLIS_STORAGE__ROOT", "/srv/b");
            let c = Config::load(Some(Path::new("p.toml"))).expect("config loads");
            assert_eq!(c.listen.port(), 6000);
            assert_eq!(c.storage.root, PathBuf::from("/srv/b"));
            assert_eq!(c.limits.max_manifest_bytes, 4 * 1024 * 1024);
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("bad.toml", "listn = \"x\"\n")?;
            let e = Config::load(Some(Path::new("bad.toml"))).unwrap_err();
            assert!(e.to_string().contains("listn"), "{e}");
            jail.create_file("bad2.toml", "listen = \"not an address\"\n")?;
            assert!(Config::load(Some(Path::new("bad2.toml"))).is_err());
            Ok(())
        });
    }
}
