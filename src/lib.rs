//! Charon: a Kubernetes-native batch scheduler.
//!
//! The crate is split into a pure core (schedule math, partitions, names, the resource types)
//! that takes the current time as an argument, and thin adapters that talk to Kubernetes.

pub mod backfill;
pub mod cli;
pub mod concurrency;
pub mod controller;
pub mod crd;
pub mod dev;
pub mod instance;
pub mod job;
pub mod names;
pub mod observe;
pub mod operator;
pub mod partition;
pub mod preview;
pub mod resources;
pub mod retry;
pub mod schedule;
pub mod telemetry;
pub mod trigger;
pub mod user;
pub mod validate;
pub mod workflow;
