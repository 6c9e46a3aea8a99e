//! Kubernetes operator for `Ec2Instance` (`k106.com/v1alpha1`).
//!
//! Rooms: `crd` (the API types), `decide` (pure decisions: observed + desired -> actions),
//! `reconcile` + `ec2` + `inventory` + `status` (the I/O shell), `operator` (wiring).

pub mod admin;
pub mod config;
pub mod crd;
pub mod decide;
pub mod ec2;
pub mod error;
pub mod events;
pub mod inventory;
pub mod metrics;
pub mod operator;
pub mod reconcile;
pub mod status;

#[cfg(test)]
pub mod fixtures;

pub use error::{Error, Result};
