//! The connections of Chaos Control's gRPC servers (the agent, and `chaosctl serve`'s
//! API): mTLS with certificate files that are read again while the server runs, and a
//! cap on the connections each listener holds.
//!
//! cert-manager renews a certificate before it expires, and the kubelet swaps the files
//! of the mounted secret. A server that read them once at start keeps presenting the old
//! certificate; once that expires, no client can connect any more. For the agent this
//! means no early revert of a running fault. So the files are read again at an interval,
//! and every new connection's handshake uses the last set that loaded completely.
//! Connections already open keep the session they negotiated.
//!
//! Every connection is a file descriptor: without a cap, anyone who can connect could
//! use up the descriptors a revert needs ([`limit`]).
//!
//! Who a caller is and what it may do ([`authz`]) comes from the client certificate
//! these connections verified.

pub mod authz;
mod config;
mod incoming;
pub mod limit;
mod metrics;
mod reload;

pub use config::{Pems, TlsError, TlsFiles, server_config};
pub use incoming::{HANDSHAKE_TIMEOUT, PlainConnection, TlsConnection, incoming, plain_incoming};
pub use limit::{ConnectionLimit, ConnectionMetrics, ConnectionPermit, Limited, accept};
pub use metrics::ReloadCounter;
pub use reload::{Reload, ReloadingTls, keep_reloading};
