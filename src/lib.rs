//! tollgate: Kubernetes-native LLM routing with budget- and health-driven rotation.
#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod api;
pub mod cmd;
pub mod config;
pub mod controller;
pub mod gateway;
pub mod kube_source;
pub mod local;
pub mod plan;
pub mod policy;
pub mod pricing;
pub mod render;
pub mod signals;
