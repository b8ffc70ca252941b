//! Reaching the agents and the cluster: the mTLS client, the fleet called in bounded
//! parallel, the certificates, and the optional Kubernetes API.

pub mod certs;
pub mod client;
pub mod fleet;
pub mod kube_api;
