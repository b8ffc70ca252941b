//! Claims on interfaces: one fault of this agent per interface and direction.

use std::collections::HashSet;
use std::sync::{Mutex, PoisonError};

use chaos_netem::NetnsId;

/// Interfaces (namespace, ifindex) that a fault of this agent holds, so that two
/// requests cannot stack netem on the same interface (the second would replace the
/// first's qdisc and the first's revert would remove the second's).
static CLAIMED: Mutex<Option<HashSet<ClaimKey>>> = Mutex::new(None);

/// (namespace, its cookie, ifindex, ingress?): egress and ingress use different qdiscs.
/// With the cookie, a namespace that took the inode of one that died under a fault is
/// not mistaken for it.
pub(super) type ClaimKey = (NetnsId, Option<u64>, u32, bool);

/// Holds an interface for one fault; released when the fault is dropped.
#[derive(Debug)]
pub(super) struct Claim {
    key: ClaimKey,
}

impl Claim {
    pub(super) fn take(key: ClaimKey) -> Option<Claim> {
        let inserted = CLAIMED
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert_with(HashSet::new)
            .insert(key);
        // Built only after the lock is released: a Claim that is dropped locks CLAIMED.
        inserted.then(|| Claim { key })
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut claimed = CLAIMED.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(set) = claimed.as_mut() {
            set.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_are_exclusive_and_released_on_drop() {
        let key = (NetnsId { dev: 7, ino: 99 }, Some(41), 3, false);
        let first = Claim::take(key).unwrap();
        assert!(Claim::take(key).is_none());
        // A newer namespace at the same inode (another cookie) is another interface.
        let successor = Claim::take((NetnsId { dev: 7, ino: 99 }, Some(42), 3, false));
        assert!(successor.is_some());
        drop(first);
        assert!(Claim::take(key).is_some());
    }
}
