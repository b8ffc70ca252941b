//! What the journal records of a network fault: the namespace and the interface to put
//! back. Restarted agents read records that older agents wrote, so the serialized form
//! only ever grows by fields that old records may lack.

use chaos_netem::ingress::IngressRedirect;
use chaos_netem::{NetnsId, QdiscSnapshot};
use serde::{Deserialize, Serialize};

/// A network namespace as the journal records it: the process it was found through
/// (pid + start time, so a reused pid is not mistaken for it), its nsfs identity, which
/// finds it again through any other process or bind mount holding it, and its cookie,
/// which tells whether what is found there is still it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetnsRef {
    pub pid: u32,
    pub start_time: u64,
    pub id: NetnsId,
    /// `SO_NETNS_COOKIE` of the namespace: never given to another namespace in this
    /// boot, where the inode in `id` is handed to the next namespace once this one is
    /// gone. Absent in records of agents before it was kept (and on kernels before
    /// 5.14): such a record is matched by `id` alone, the nsfs device and inode, as
    /// those agents did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<u64>,
}

/// One interface to put back: the journal's content for network faults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QdiscRestore {
    pub netns: NetnsRef,
    pub ifindex: u32,
    pub snapshot: QdiscSnapshot,
    /// Ingress faults: the redirect and ifb to remove (the root is not touched then).
    /// Absent in records of agents before ingress existed, which were all egress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<IngressRedirect>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_records_without_a_cookie_still_read() {
        // What agents before the cookie wrote.
        let old = r#"{"pid":12,"start_time":34,"id":{"dev":4,"ino":4026532178}}"#;
        let netns: NetnsRef = serde_json::from_str(old).unwrap();
        assert_eq!(netns.cookie, None);
        assert_eq!(netns.id.ino, 4_026_532_178);
        let new = NetnsRef {
            cookie: Some(9),
            ..netns
        };
        let text = serde_json::to_string(&new).unwrap();
        assert!(text.contains(r#""cookie":9"#), "{text}");
        assert_eq!(serde_json::from_str::<NetnsRef>(&text).unwrap(), new);
    }
}
