//! chaos-agent: resolves targets on this node and applies faults that it reverts by
//! itself at their deadline, on request, when their lease lapses, at shutdown, and
//! at the next start after a crash (from the journal).

/// Shared with `chaosctl serve`'s API.
pub use chaos_tls::authz;
pub mod blockdev;
pub mod capabilities;
pub mod clock;
pub mod descriptors;
pub mod dns;
pub mod error;
pub mod faults;
pub mod fill_file;
pub mod journal;
pub mod metrics;
pub mod mounts;
pub mod procfs;
pub mod protect;
pub mod registry;
pub mod resolve;
pub mod runtime;
pub mod service;
pub mod stressor;
pub mod sys;
pub mod target;
pub mod tls;
pub mod validate;
