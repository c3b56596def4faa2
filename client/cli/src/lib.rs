//! `corral`, the command-line tool: parsing, dispatch and output over
//! [`corral_client`] (which library users take without clap, indicatif or rcgen).
//!
//! `cli` holds the command tree and the agent commands, `coord_cli` the coordinator's,
//! `pki` the certificate commands.

pub mod backups;
pub mod cli;
pub mod coord_cli;
pub mod events;
pub mod guest;
pub mod images;
pub mod pki;
pub mod plans;
pub mod ports;
