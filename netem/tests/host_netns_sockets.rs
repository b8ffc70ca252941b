//! Sockets made inside another network namespace by the socket maker ([`make_socket_in`]):
//! they belong to that namespace (its cookie, its loopback) and not to ours. Root only; the
//! throwaway namespace is removed on drop.

mod common;

use std::net::{Ipv4Addr, UdpSocket};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use chaos_netem::{NetnsError, NetnsHandle, OpenNetns, make_socket_in, socket_netns_cookie};
use common::TestNetns;

fn udp_on_loopback() -> std::io::Result<OwnedFd> {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(OwnedFd::from(socket))
}

#[tokio::test]
async fn a_udp_socket_made_in_a_namespace_lives_there() -> Result<()> {
    let netns = TestNetns::empty("sockets")?;
    netns.ip(&["link", "set", "lo", "up"])?;
    let open = OpenNetns::open(&netns.path())?;

    let theirs = UdpSocket::from(make_socket_in(&open, Box::new(udp_on_loopback)).await?);
    let ours = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
    let their_cookie = socket_netns_cookie(&theirs)?.context("kernel without SO_NETNS_COOKIE")?;
    assert_ne!(Some(their_cookie), socket_netns_cookie(&ours)?);
    // The route socket made the same way (NetnsHandle::open_in) is in the same namespace.
    let handle = NetnsHandle::open_in(&open).await?;
    assert_eq!(handle.cookie(), Some(their_cookie));

    // Bound on the namespace's loopback: it answers from a client in there, and its port
    // is not ours (a datagram sent to it from our namespace does not arrive).
    let port = theirs.local_addr()?.port();
    theirs.set_read_timeout(Some(Duration::from_millis(500)))?;
    let client = UdpSocket::from(make_socket_in(&open, Box::new(udp_on_loopback)).await?);
    client.send_to(b"inside", (Ipv4Addr::LOCALHOST, port))?;
    let mut buffer = [0u8; 16];
    let (len, from) = theirs.recv_from(&mut buffer)?;
    assert_eq!(&buffer[..len], b"inside");
    assert_eq!(from, client.local_addr()?);

    ours.send_to(b"outside", (Ipv4Addr::LOCALHOST, port))?;
    let error = theirs
        .recv_from(&mut buffer)
        .expect_err("a datagram from our namespace reached theirs");
    assert!(matches!(
        error.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    ));
    // Our namespace's socket table (this thread never left it) does not list it.
    let ours_table = std::fs::read_to_string("/proc/thread-self/net/udp")?;
    let entry = format!("0100007F:{port:04X}");
    assert!(
        !ours_table.contains(&entry),
        "{entry} in our namespace:\n{ours_table}"
    );

    // A TCP listener made in there takes connections from a client made in there too.
    let listener = std::net::TcpListener::from(
        make_socket_in(
            &open,
            Box::new(|| {
                Ok(OwnedFd::from(std::net::TcpListener::bind((
                    Ipv4Addr::LOCALHOST,
                    0,
                ))?))
            }),
        )
        .await?,
    );
    let address = listener.local_addr()?;
    let connect = make_socket_in(
        &open,
        Box::new(move || {
            let stream = std::net::TcpStream::connect_timeout(&address, Duration::from_secs(2))?;
            Ok(OwnedFd::from(stream))
        }),
    )
    .await?;
    let (accepted, peer) = listener.accept()?;
    assert_eq!(peer, std::net::TcpStream::from(connect).local_addr()?);
    assert_eq!(socket_netns_cookie(&accepted)?, Some(their_cookie));

    // A failing maker is reported as such, and the maker thread is still usable after it.
    let refused = make_socket_in(
        &open,
        Box::new(|| Err(std::io::Error::from_raw_os_error(nix::libc::EACCES))),
    )
    .await;
    assert!(
        matches!(refused, Err(NetnsError::MakeSocket { .. })),
        "{refused:?}"
    );
    let again = UdpSocket::from(make_socket_in(&open, Box::new(udp_on_loopback)).await?);
    assert_eq!(socket_netns_cookie(&again)?, Some(their_cookie));

    // And it went home: a socket made afterwards in our namespace (through the maker,
    // entering our own namespace) has our cookie.
    let home = OpenNetns::open(Path::new("/proc/self/ns/net"))?;
    let back = make_socket_in(&home, Box::new(udp_on_loopback)).await?;
    assert_eq!(socket_netns_cookie(&back)?, socket_netns_cookie(&ours)?);
    Ok(())
}
