//! corral-agent: the only code that touches libvirt, `qemu-img` and `iptables` on a host.
//!
//! Layers, from the wire down: [`api`] (gRPC adapters) → [`agent::Agent`] and its logic
//! modules ([`domains`], [`bases`], [`volumes`], [`snapshots`], [`ports`], [`reconcile`]) →
//! side-effect traits ([`hypervisor::Hypervisor`], [`images::ImageTool`],
//! [`firewall::Firewall`]) with their real implementations.
pub mod agent;
pub mod api;
pub mod bases;
pub mod capture;
pub mod config;
pub mod convert;
pub mod disks;
pub mod domain_xml;
pub mod domains;
pub mod error;
pub mod events;
pub mod firewall;
pub mod fsx;
#[cfg(test)]
mod fuzz;
pub mod guest;
pub mod hypervisor;
pub mod images;
pub mod metrics;
pub mod migration;
pub mod ownership;
pub mod ports;
pub mod qcow2;
pub mod reconcile;
pub mod relocate;
pub mod restore;
pub mod screenshot;
pub mod server;
pub mod snapshots;
pub mod spice;
pub mod storage;
pub mod sync;
pub mod transfer;
pub mod validate;
pub mod volumes;
