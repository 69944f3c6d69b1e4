//! Charon: a Kubernetes-native batch scheduler.
//!
//! Every decision lives in the pure core, [`charon_core`]; this crate holds what talks to the
//! world: the kube-runtime adapters ([`controller`]), the entry points (`charon operator`,
//! `charon dev`, the user commands) and the CLI.

pub mod actions;
pub mod cli;
pub mod controller;
pub mod crd;
pub mod dev;
pub mod import;
pub mod logstore;
pub mod operator;
pub mod preview;
pub mod telemetry;
pub mod throttle;
pub mod ui;
pub mod user;
