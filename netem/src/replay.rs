//! Turning the options a qdisc dump reports into options a create request accepts.
//!
//! Almost every qdisc dumps exactly what its init accepts, so the raw bytes are replayed
//! unchanged. Known exception: htb dumps `tc_htb_glob.version` as its full version
//! (`HTB_VER` = 0x30011 in `net/sched/sch_htb.c`) but init insists on the major version
//! only (`HTB_VER >> 16` = 3, what tc sends) and answers EINVAL otherwise.

/// `TCA_HTB_INIT` in `linux/pkt_sched.h`.
const TCA_HTB_INIT: u16 = 2;
const HTB_DUMPED_VERSION: u32 = 0x0003_0011;
const HTB_REQUEST_VERSION: u32 = HTB_DUMPED_VERSION >> 16;

/// The options to send when re-creating a qdisc of `kind` from its dumped `options`.
pub fn request_options(kind: &str, options: &[u8]) -> Vec<u8> {
    let mut bytes = options.to_vec();
    if kind == "htb" {
        fix_htb_version(&mut bytes);
    }
    bytes
}

/// Rewrites the version in the nested `TCA_HTB_INIT` attribute, if present.
fn fix_htb_version(bytes: &mut [u8]) {
    let mut offset = 0;
    while offset + 4 <= bytes.len() {
        let len = usize::from(u16::from_ne_bytes([bytes[offset], bytes[offset + 1]]));
        let kind = u16::from_ne_bytes([bytes[offset + 2], bytes[offset + 3]]) & 0x3fff;
        if len < 4 || offset + len > bytes.len() {
            return;
        }
        if kind == TCA_HTB_INIT && len >= 8 {
            let version = &mut bytes[offset + 4..offset + 8];
            if u32::from_ne_bytes([version[0], version[1], version[2], version[3]])
                == HTB_DUMPED_VERSION
            {
                version.copy_from_slice(&HTB_REQUEST_VERSION.to_ne_bytes());
            }
            return;
        }
        offset += (len + 3) & !3;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attribute(kind: u16, words: &[u32]) -> Vec<u8> {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&((4 + 4 * words.len()) as u16).to_ne_bytes());
        bytes.extend_from_slice(&kind.to_ne_bytes());
        for word in words {
            bytes.extend_from_slice(&word.to_ne_bytes());
        }
        bytes
    }

    #[test]
    fn htb_version_is_rewritten_for_requests() {
        let mut dumped = attribute(5, &[1000]); // TCA_HTB_DIRECT_QLEN first, to skip over
        dumped.extend(attribute(TCA_HTB_INIT, &[0x30011, 10, 0x10, 0, 0]));
        let mut expected = attribute(5, &[1000]);
        expected.extend(attribute(TCA_HTB_INIT, &[3, 10, 0x10, 0, 0]));
        assert_eq!(request_options("htb", &dumped), expected);
    }

    #[test]
    fn other_kinds_are_replayed_unchanged() {
        let dumped = attribute(TCA_HTB_INIT, &[0x30011, 10, 0x10, 0, 0]);
        assert_eq!(request_options("tbf", &dumped), dumped);
    }
}
