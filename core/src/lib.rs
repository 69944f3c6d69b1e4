//! Charon's pure core: the resource types and every decision the scheduler makes, as
//! functions of their inputs. Time and randomness are arguments, and nothing here does I/O
//! (the crate cannot: it depends on no async runtime and no Kubernetes client), so tests run
//! a year of schedules in milliseconds and the adapters in the `charon` crate only read,
//! apply and write.

pub mod admission;
pub mod archive;
pub mod backfill;
pub mod concurrency;
pub mod dependency;
pub mod instance;
pub mod job;
pub mod names;
pub mod observe;
pub mod partition;
pub mod pipeline;
pub mod quantity;
pub mod resources;
pub mod retry;
pub mod schedule;
pub mod shard;
pub mod slim;
pub mod status;
pub mod styx;
pub mod trigger;
pub mod validate;
pub mod workflow;
