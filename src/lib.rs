//! Portcullis: an OCI Distribution v1.1 registry.
//!
//! `reference` parses names at the edge, `api` speaks HTTP, `identity` says who
//! is asking, `network` finds the real client behind proxies, `policy` decides
//! what they may do, `storage` owns the on-disk layout, `config` loads
//! settings, `maintenance` runs retention and gc, `ui` serves the web pages
//! under `/ui/`, `server` ties them to a listener.

pub mod api;
pub mod config;
pub mod identity;
pub mod maintenance;
pub mod metrics;
pub mod network;
pub mod policy;
pub mod proxy;
pub mod reference;
pub mod server;
pub mod storage;
pub mod tls;
pub mod ui;
