//! Quantities as people type them, shared by the command line's flags and the
//! experiment file.

pub mod duration;
pub mod rate;
pub mod size;
