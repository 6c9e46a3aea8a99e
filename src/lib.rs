//! Kubernetes operator for `Ec2Instance` (`k106.com/v1alpha1`).
//!
//! Read it top-down:
//! - the API types: `crd`;
//! - the pure core: `model` (instances, steps, tags) and `decide` (observed + desired -> steps),
//!   with `events` (reasons) and `error`; no I/O;
//! - the I/O shell: `ec2` (every EC2 call), `inventory` (the fleet poll), `status` (server-side
//!   apply), `recorder` (Events), `backoff`, `reconcile` (the thin loop that ties them together),
//!   and `orphans` (instances whose object is gone);
//! - the wiring: `operator`, `admin`, `metrics`, `config`, then `main`.

pub mod admin;
pub mod backoff;
pub mod config;
pub mod crd;
pub mod decide;
pub mod ec2;
pub mod error;
pub mod events;
pub mod inventory;
pub mod metrics;
pub mod model;
pub mod operator;
pub mod orphans;
pub mod reconcile;
pub mod recorder;
pub mod status;

#[cfg(test)]
pub mod fixtures;

pub use error::{Error, Result};
