//! Thin helpers to send one rtnetlink request and collect its answers, keeping the
//! kernel's errno so callers can classify failures.

use futures::StreamExt;
use netlink_packet_core::{NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::RouteNetlinkMessage;
use rtnetlink::Handle;

/// A failed netlink request: the kernel's errno (positive, e.g. `libc::ENOENT`), or `None`
/// when the request never reached the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireError {
    pub errno: Option<i32>,
    pub message: String,
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.errno {
            Some(errno) => write!(
                f,
                "{} (errno {errno}: {})",
                self.message,
                nix::errno::Errno::from_raw(errno).desc()
            ),
            None => write!(f, "{}", self.message),
        }
    }
}

async fn send(
    handle: &Handle,
    message: RouteNetlinkMessage,
    flags: u16,
) -> Result<Vec<RouteNetlinkMessage>, WireError> {
    let mut request = NetlinkMessage::from(message);
    request.header.flags = flags;
    let mut handle = handle.clone();
    let mut responses = handle.request(request).map_err(|err| WireError {
        errno: None,
        message: err.to_string(),
    })?;
    let mut answers = Vec::new();
    while let Some(response) = responses.next().await {
        match response.payload {
            NetlinkPayload::InnerMessage(inner) => answers.push(inner),
            NetlinkPayload::Error(error) => {
                // An error message with code 0 is the ACK.
                if let Some(code) = error.code {
                    return Err(WireError {
                        errno: Some(code.get().abs()),
                        message: "the kernel refused the request".into(),
                    });
                }
            }
            NetlinkPayload::Done(_) | NetlinkPayload::Noop | NetlinkPayload::Overrun(_) => {}
            _ => {}
        }
    }
    Ok(answers)
}

/// A dump request (`NLM_F_DUMP`): every answer message.
pub async fn dump(
    handle: &Handle,
    message: RouteNetlinkMessage,
) -> Result<Vec<RouteNetlinkMessage>, WireError> {
    send(handle, message, NLM_F_REQUEST | NLM_F_DUMP).await
}

/// A get request (no dump): the kernel answers with the one object asked for, or an error.
pub async fn get(
    handle: &Handle,
    message: RouteNetlinkMessage,
) -> Result<Vec<RouteNetlinkMessage>, WireError> {
    send(handle, message, NLM_F_REQUEST).await
}

/// A change request with an ACK; `flags` are e.g. `NLM_F_CREATE | NLM_F_REPLACE`.
pub async fn change(
    handle: &Handle,
    message: RouteNetlinkMessage,
    flags: u16,
) -> Result<(), WireError> {
    send(handle, message, NLM_F_REQUEST | NLM_F_ACK | flags)
        .await
        .map(|_| ())
}

impl std::error::Error for WireError {}
