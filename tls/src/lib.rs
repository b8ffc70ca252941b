//! mTLS for Chaos Control's gRPC servers (the agent, and `chaosctl serve`'s API), with
//! certificate files that are read again while the server runs.
//!
//! cert-manager renews a certificate before it expires, and the kubelet swaps the files
//! of the mounted secret. A server that read them once at start keeps presenting the old
//! certificate; once that expires, no client can connect any more. For the agent this
//! means no early revert of a running fault. So the files are read again at an interval,
//! and every new connection's handshake uses the last set that loaded completely.
//! Connections already open keep the session they negotiated.

mod config;
mod incoming;
mod metrics;
mod reload;

pub use config::{Pems, TlsError, TlsFiles, server_config};
pub use incoming::{HANDSHAKE_TIMEOUT, incoming};
pub use metrics::ReloadCounter;
pub use reload::{Reload, ReloadingTls, keep_reloading};
