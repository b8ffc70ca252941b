//! chaosctl: the command line and controller of Chaos Control.

pub mod certs;
pub mod client;
pub mod duration;
pub mod output;
