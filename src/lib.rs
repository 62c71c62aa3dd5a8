//! falcon-vmray-connector: a second opinion from VMRay on every file CrowdStrike Falcon flags.
//!
//! Module map, in the order a run uses them:
//! - [`cli`], [`commands`] and [`config`]: what to do, and the validated settings.
//! - [`telemetry`] and [`shutdown`]: logs, and the signal that stops every wait.
//! - [`instance`]: one process per state file.
//! - [`downloads`]: the folder where samples wait, briefly, between Falcon and VMRay.
//! - [`private`]: files and folders only the connector's user may read.
//! - [`model`]: hashes, verdicts and the other shared types.
//! - [`ioc_filter`]: which network indicators may become Falcon IOCs.
//! - [`falcon`] and [`vmray`]: typed clients of the two APIs.
//! - [`pipeline`]: the loop and the cycle (collect, look up, download, submit, wait, plan, act).
//! - [`sim`]: the simulated Falcon and VMRay behind `demo` and the tests.
//! - [`state`]: the embedded store that makes every write-back happen once.
//! - [`demo`]: one real cycle against the simulator, for a first look.
//! - [`metrics`] and [`health`]: what an operator's monitoring scrapes and probes.
//! - [`check`]: the effective settings as `check` prints them.
pub mod check;
pub mod cli;
pub mod commands;
pub mod config;
pub mod demo;
pub mod downloads;
pub mod falcon;
pub mod health;
pub mod instance;
pub mod ioc_filter;
pub mod metrics;
pub mod model;
pub mod pipeline;
pub mod private;
pub mod shutdown;
pub mod sim;
pub mod state;
pub mod telemetry;
pub mod vmray;
