//! corral-coordinator: the one place users talk to.
//!
//! [`placement`] (pure scheduling), [`store`] (durable state behind a trait), [`operations`]
//! (durable long operations with streamed events), [`hosts`] (agent connections, heartbeats,
//! down detection), [`auth`] (tokens and roles), [`vms`] (the work of each operation) and
//! [`api`] (gRPC services).
pub mod access;
pub mod api;
pub mod auth;
#[cfg(test)]
mod backup_tests;
pub mod backups;
pub mod base_access;
pub mod clones;
pub mod config;
pub mod convert;
pub mod create;
pub mod db;
pub mod directory;
pub mod disks;
pub mod display;
pub mod door;
pub mod dry;
pub mod ensure;
pub mod error;
pub mod events;
#[cfg(test)]
mod fake;
#[cfg(test)]
mod fleet_tests;
#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod guest_tests;
pub mod guests;
pub mod hosts;
pub mod idle;
#[cfg(test)]
mod image_tests;
pub mod images;
pub mod leader;
pub mod lifecycle;
pub mod listings;
pub mod metrics;
pub mod moves;
pub mod names;
pub mod observed;
pub mod on_host;
pub mod operations;
pub mod orders;
pub mod placement;
pub mod placing;
pub mod plans;
pub mod pools;
pub mod reservations;
pub mod server;
pub mod snapshots;
pub mod starts;
pub mod states;
pub mod store;
pub mod transfers;
pub mod upkeep;
pub mod users;
pub mod views;
pub mod vms;
pub mod volatile;
