//! Real-kernel qdisc tests that run on a kernel WITHOUT netem (the build host): root only.

mod common;

use anyhow::{Result, bail};
use chaos_netem::qdisc::{self, CHAOS_ROOT_HANDLE, QdiscRecord};
use chaos_netem::tree::{self, Classifier};
use chaos_netem::{
    Impairment, NetemSpec, QdiscError, TbfSpec, default_route_interface, default_route_interfaces,
    in_netns,
};
use common::{LINK, PEER, TestNetns};

/// The raw options of the root qdisc on `link`, as the kernel dumps them.
fn root_of(netns: &TestNetns, ifindex: u32) -> Result<QdiscRecord> {
    let snapshot = in_netns(&netns.path(), |handle| async move {
        qdisc::snapshot(&handle, ifindex).await
    })??;
    Ok(snapshot.root)
}

fn records(netns: &TestNetns, ifindex: u32) -> Result<Vec<QdiscRecord>> {
    let views = in_netns(&netns.path(), |handle| async move {
        qdisc::dump(&handle, ifindex).await
    })??;
    Ok(views.into_iter().map(|view| view.record).collect())
}

/// Options bytes of a qdisc built by `tc` on the peer link, to install through our code.
fn options_made_by_tc(netns: &TestNetns, tc_args: &[&str]) -> Result<Vec<u8>> {
    let mut args = vec!["qdisc", "replace", "dev", PEER, "root"];
    args.extend_from_slice(tc_args);
    netns.tc(&args)?;
    let peer = netns.ifindex(PEER)?;
    let root = root_of(netns, peer)?;
    netns.tc(&["qdisc", "del", "dev", PEER, "root"])?;
    match root.options {
        Some(options) => Ok(options),
        None => bail!("tc {tc_args:?} left no options"),
    }
}

#[test]
fn default_route_interface_is_the_veth() -> Result<()> {
    let netns = TestNetns::new("route")?;
    let expected = netns.ifindex(LINK)?;
    let found = in_netns(&netns.path(), |handle| async move {
        default_route_interface(&handle).await
    })??;
    assert_eq!(found, expected);
    Ok(())
}

/// Every table's default routes, as the kernel dumps them: the main table's via `chaos-a`,
/// an IPv4 one in table 100 (picked by an `ip rule`) and an IPv6 one in table 1000 via a
/// second veth, `chaos-c`, the way the VPC CNI gives each secondary ENI a table. Table
/// 1000 does not fit the header's byte: only RTA_TABLE names it. An unreachable default
/// in table 200 and `chaos-b` (no default route) are left out. The one-interface rule is
/// still the main table's.
#[test]
fn default_route_interfaces_are_those_of_every_table() -> Result<()> {
    let netns = TestNetns::new("routes")?;
    netns.ip(&[
        "link", "add", "chaos-c", "type", "veth", "peer", "name", "chaos-d",
    ])?;
    netns.ip(&["addr", "add", "10.199.1.1/24", "dev", "chaos-c"])?;
    netns.ip(&[
        "-6",
        "addr",
        "add",
        "fd00:199::1/64",
        "dev",
        "chaos-c",
        "nodad",
    ])?;
    netns.ip(&["link", "set", "chaos-c", "up"])?;
    netns.ip(&["link", "set", "chaos-d", "up"])?;
    netns.ip(&[
        "route",
        "add",
        "default",
        "via",
        "10.199.1.2",
        "dev",
        "chaos-c",
        "table",
        "100",
    ])?;
    netns.ip(&["rule", "add", "from", "10.199.1.1", "table", "100"])?;
    netns.ip(&[
        "-6",
        "route",
        "add",
        "default",
        "via",
        "fd00:199::2",
        "dev",
        "chaos-c",
        "table",
        "1000",
    ])?;
    netns.ip(&["route", "add", "unreachable", "default", "table", "200"])?;
    let (main, second) = (netns.ifindex(LINK)?, netns.ifindex("chaos-c")?);
    let (every, one) = in_netns(&netns.path(), |handle| async move {
        anyhow::Ok((
            default_route_interfaces(&handle).await?,
            default_route_interface(&handle).await?,
        ))
    })??;
    let mut expected = vec![main, second];
    expected.sort_unstable();
    assert_eq!(every, expected);
    assert_eq!(one, main);
    // Without table 100's route, the IPv6 one of table 1000 still counts `chaos-c`.
    netns.ip(&["route", "flush", "table", "100"])?;
    let without_100 = in_netns(&netns.path(), |handle| async move {
        default_route_interfaces(&handle).await
    })??;
    assert_eq!(without_100, expected);
    // With no table's default route: none at all.
    netns.ip(&["route", "del", "default", "dev", LINK])?;
    netns.ip(&["-6", "route", "flush", "table", "1000"])?;
    let none = in_netns(&netns.path(), |handle| async move {
        default_route_interfaces(&handle).await
    })?;
    assert!(
        matches!(none, Err(chaos_netem::RouteError::NoDefaultRoute)),
        "{none:?}"
    );
    Ok(())
}

/// The async handle's socket lives in the target namespace although it is driven on the
/// caller's runtime, and no runtime thread changed namespace for it.
#[tokio::test(flavor = "current_thread")]
async fn netns_handle_works_in_the_namespace_from_the_callers_runtime() -> Result<()> {
    let netns = TestNetns::new("handle")?;
    let expected = netns.ifindex(LINK)?;
    let own_before = chaos_netem::netns_id(std::path::Path::new("/proc/thread-self/ns/net"))?;
    let mut netlink = chaos_netem::NetnsHandle::open(&netns.path()).await?;
    // Several operations over the one socket, in one run and in a second one.
    let (route_interface, links) = netlink
        .run(async |handle| {
            let route_interface = default_route_interface(handle).await?;
            anyhow::Ok((route_interface, chaos_netem::interfaces(handle).await?))
        })
        .await??;
    assert_eq!(route_interface, expected);
    assert_eq!(
        netlink
            .run(async |handle| default_route_interface(handle).await)
            .await??,
        expected
    );
    let names: Vec<String> = links.into_iter().map(|(_, name)| name).collect();
    assert!(names.contains(&LINK.to_string()), "{names:?}");
    assert!(names.contains(&PEER.to_string()), "{names:?}");
    let own_after = chaos_netem::netns_id(std::path::Path::new("/proc/thread-self/ns/net"))?;
    assert_eq!(
        own_before, own_after,
        "the runtime thread changed namespace"
    );
    let missing = chaos_netem::NetnsHandle::open(std::path::Path::new("/nonexistent/netns")).await;
    assert!(
        matches!(missing, Err(chaos_netem::NetnsError::Open { .. })),
        "{missing:?}"
    );
    Ok(())
}

/// One link looked up by index or by name (a get, not a dump); a missing one is `None`.
#[tokio::test(flavor = "current_thread")]
async fn one_interface_is_found_by_index_and_by_name() -> Result<()> {
    use chaos_netem::LinkKey;
    let netns = TestNetns::new("lookup")?;
    let index = netns.ifindex(LINK)?;
    let mut netlink = chaos_netem::NetnsHandle::open(&netns.path()).await?;
    let (by_index, by_name, no_name, no_index) = netlink
        .run(async |handle| {
            anyhow::Ok((
                chaos_netem::interface(handle, LinkKey::Index(index)).await?,
                chaos_netem::interface(handle, LinkKey::Name(PEER)).await?,
                chaos_netem::interface(handle, LinkKey::Name("chaos-none")).await?,
                chaos_netem::interface(handle, LinkKey::Index(99_999)).await?,
            ))
        })
        .await??;
    assert_eq!(by_index, Some((index, LINK.to_string())));
    assert_eq!(by_name, Some((netns.ifindex(PEER)?, PEER.to_string())));
    assert_eq!(no_name, None);
    assert_eq!(no_index, None);
    Ok(())
}

/// The agent sends the qdisc dump together with the link get (a get may go while a dump
/// runs on the same socket; a second dump may not). The table must hold each interface's
/// own qdiscs, and a snapshot made from it must equal one made with a dump of its own.
#[tokio::test(flavor = "current_thread")]
async fn a_qdisc_dump_sent_with_the_link_get_gives_each_interface_its_own_snapshot() -> Result<()> {
    use chaos_netem::LinkKey;
    let netns = TestNetns::new("table")?;
    netns.tc(&[
        "qdisc", "replace", "dev", PEER, "root", "tbf", "rate", "1mbit", "burst", "32kbit",
        "latency", "400ms",
    ])?;
    let (link, peer) = (netns.ifindex(LINK)?, netns.ifindex(PEER)?);
    let mut netlink = chaos_netem::NetnsHandle::open(&netns.path()).await?;
    let (found, from_table, on_its_own) = netlink
        .run(async |handle| {
            let (found, table) = futures::join!(
                chaos_netem::interface(handle, LinkKey::Name(PEER)),
                qdisc::table(handle)
            );
            let table = table?;
            let from_table = (
                qdisc::snapshot_of(handle, link, table.of(link)).await?,
                qdisc::snapshot_of(handle, peer, table.of(peer)).await?,
            );
            let on_its_own = (
                qdisc::snapshot(handle, link).await?,
                qdisc::snapshot(handle, peer).await?,
            );
            anyhow::Ok((found?, from_table, on_its_own))
        })
        .await??;
    assert_eq!(found, Some((peer, PEER.to_string())));
    assert!(from_table.0.root.is_kernel_default(), "{:?}", from_table.0);
    assert_eq!(from_table.1.root.kind, "tbf");
    assert_eq!(from_table, on_its_own);
    Ok(())
}

/// One socket-making thread serves every namespace in turn: it must come back to its own
/// namespace after each socket, or the next socket would land in the wrong one.
#[tokio::test(flavor = "current_thread")]
async fn netns_handles_in_turn_each_see_their_own_namespace() -> Result<()> {
    let first = TestNetns::new("turn-a")?;
    let second = TestNetns::new("turn-b")?;
    second.ip(&[
        "link",
        "add",
        "chaos-only-b",
        "type",
        "veth",
        "peer",
        "name",
        "chaos-only-c",
    ])?;
    async fn names(path: &std::path::Path) -> Result<Vec<String>> {
        let mut netlink = chaos_netem::NetnsHandle::open(path).await?;
        Ok(netlink
            .run(async |handle| chaos_netem::interfaces(handle).await)
            .await??
            .into_iter()
            .map(|(_, name)| name)
            .collect())
    }
    let own = std::path::Path::new("/proc/self/ns/net");
    for _ in 0..3 {
        let in_first = names(&first.path()).await?;
        assert!(in_first.contains(&LINK.to_string()), "{in_first:?}");
        assert!(
            !in_first.contains(&"chaos-only-b".to_string()),
            "{in_first:?}"
        );
        let in_second = names(&second.path()).await?;
        assert!(
            in_second.contains(&"chaos-only-b".to_string()),
            "{in_second:?}"
        );
        let in_own = names(own).await?;
        assert!(!in_own.contains(&LINK.to_string()), "{in_own:?}");
        assert!(!in_own.contains(&"chaos-only-b".to_string()), "{in_own:?}");
    }
    Ok(())
}

#[test]
fn netem_is_reported_unsupported_and_nothing_changes() -> Result<()> {
    let netns = TestNetns::new("nonetem")?;
    let ifindex = netns.ifindex(LINK)?;
    let before = records(&netns, ifindex)?;
    let spec = NetemSpec {
        delay_us: 50_000,
        ..NetemSpec::default()
    };
    let result = in_netns(&netns.path(), |handle| async move {
        qdisc::install_netem(&handle, ifindex, &spec).await
    })?;
    match result {
        Err(QdiscError::KindNotSupported { kind }) => assert_eq!(kind, "netem"),
        Err(other) => bail!("expected KindNotSupported, got {other}"),
        Ok(_) => bail!("netem installed: this test expects a kernel without sch_netem (the host)"),
    }
    assert_eq!(records(&netns, ifindex)?, before);
    Ok(())
}

/// A bandwidth limit alone is a tbf, which this kernel has: installed from a spec, tc
/// reads back the rate and bucket asked for, and our decoder reads tc's own tbf as tc
/// was told.
#[test]
fn a_tbf_from_a_spec_reads_back_as_asked_in_tc_and_in_our_dump() -> Result<()> {
    let netns = TestNetns::new("tbfspec")?;
    let ifindex = netns.ifindex(LINK)?;
    let before = records(&netns, ifindex)?;
    let spec = TbfSpec::for_rate(125_000); // 1 Mbit/s
    let impairment = Impairment::Tbf(spec);
    let snapshot = in_netns(&netns.path(), |handle| async move {
        tree::install(&handle, ifindex, &impairment, &Classifier::default()).await
    })??;
    let shown = netns.tc(&["qdisc", "show", "dev", LINK])?;
    assert!(
        shown.contains("tbf ca05: root") && shown.contains("rate 1Mbit burst 16Kb"),
        "{shown}"
    );
    let views = in_netns(&netns.path(), |handle| async move {
        qdisc::dump(&handle, ifindex).await
    })??;
    assert_eq!(views[0].tbf, Some(spec), "{views:?}");
    in_netns(&netns.path(), |handle| async move {
        qdisc::restore(&handle, &snapshot).await
    })??;
    assert_eq!(records(&netns, ifindex)?, before);

    netns.tc(&[
        "qdisc", "replace", "dev", LINK, "root", "tbf", "rate", "8mbit", "burst", "10000", "limit",
        "20000",
    ])?;
    let views = in_netns(&netns.path(), |handle| async move {
        qdisc::dump(&handle, ifindex).await
    })??;
    assert_eq!(
        views[0].tbf,
        Some(TbfSpec {
            rate_bytes_per_sec: 1_000_000,
            burst_bytes: 10_000,
            limit_bytes: 20_000,
        })
    );
    netns.tc(&["qdisc", "del", "dev", LINK, "root"])?;
    Ok(())
}

#[test]
fn tbf_over_default_root_is_restored_to_default() -> Result<()> {
    let netns = TestNetns::new("tbfdefault")?;
    let ifindex = netns.ifindex(LINK)?;
    let tbf_options = options_made_by_tc(
        &netns,
        &[
            "tbf", "rate", "1mbit", "burst", "32kbit", "latency", "400ms",
        ],
    )?;
    let before = records(&netns, ifindex)?;
    assert_eq!(
        before.len(),
        1,
        "a fresh veth has just its default root: {before:?}"
    );
    assert!(before[0].is_kernel_default());

    let options = tbf_options.clone();
    let snapshot = in_netns(&netns.path(), |handle| async move {
        qdisc::install_root(&handle, ifindex, "tbf", Some(options)).await
    })??;
    let installed = root_of(&netns, ifindex)?;
    assert_eq!(installed.kind, "tbf");
    assert_eq!(installed.handle, CHAOS_ROOT_HANDLE);
    assert_eq!(installed.options.as_deref(), Some(&tbf_options[..]));
    // Cross-check with iproute2.
    assert!(
        netns
            .tc(&["qdisc", "show", "dev", LINK])?
            .contains("tbf ca05: root")
    );

    in_netns(&netns.path(), |handle| async move {
        qdisc::restore(&handle, &snapshot).await
    })??;
    assert_eq!(records(&netns, ifindex)?, before);
    Ok(())
}

#[test]
fn preexisting_tbf_comes_back_byte_exact() -> Result<()> {
    let netns = TestNetns::new("tbfback")?;
    let ifindex = netns.ifindex(LINK)?;
    let htb_options = options_made_by_tc(&netns, &["handle", "2:", "htb", "default", "10"])?;
    netns.tc(&[
        "qdisc", "add", "dev", LINK, "root", "handle", "1:", "tbf", "rate", "2mbit", "burst",
        "16kbit", "latency", "100ms",
    ])?;
    let before = records(&netns, ifindex)?;

    let snapshot = in_netns(&netns.path(), |handle| async move {
        qdisc::install_root(&handle, ifindex, "htb", Some(htb_options)).await
    })??;
    assert_eq!(snapshot.root.kind, "tbf");
    assert_eq!(snapshot.root.handle, 0x0001_0000);
    let installed = root_of(&netns, ifindex)?;
    assert_eq!(
        (installed.kind.as_str(), installed.handle),
        ("htb", CHAOS_ROOT_HANDLE)
    );
    // A reference is enough: in_netns runs on a scoped thread.
    let snapshot = &snapshot;

    in_netns(&netns.path(), |handle| async move {
        qdisc::restore(&handle, snapshot).await
    })??;
    let after = records(&netns, ifindex)?;
    assert_eq!(
        after, before,
        "the tbf must come back with identical options"
    );
    assert!(
        netns
            .tc(&["qdisc", "show", "dev", LINK])?
            .contains("tbf 1: root")
    );

    // A second restore (journal replay) finds the recorded root and changes nothing.
    in_netns(&netns.path(), |handle| async move {
        qdisc::restore(&handle, snapshot).await
    })??;
    assert_eq!(records(&netns, ifindex)?, before);
    Ok(())
}

#[test]
fn restore_leaves_a_root_installed_by_someone_else_alone() -> Result<()> {
    let netns = TestNetns::new("others")?;
    let ifindex = netns.ifindex(LINK)?;
    let snapshot = in_netns(&netns.path(), |handle| async move {
        qdisc::snapshot(&handle, ifindex).await
    })??;
    netns.tc(&[
        "qdisc", "add", "dev", LINK, "root", "handle", "5:", "tbf", "rate", "1mbit", "burst",
        "32kbit", "latency", "50ms",
    ])?;
    let result = in_netns(&netns.path(), |handle| async move {
        qdisc::restore(&handle, &snapshot).await
    })?;
    assert!(
        matches!(
            result,
            Err(QdiscError::ChangedByOthers {
                found_handle: 0x0005_0000,
                ..
            })
        ),
        "{result:?}"
    );
    assert!(
        netns
            .tc(&["qdisc", "show", "dev", LINK])?
            .contains("tbf 5: root")
    );
    Ok(())
}

#[test]
fn refuses_to_replace_a_root_with_classes() -> Result<()> {
    let netns = TestNetns::new("classes")?;
    let ifindex = netns.ifindex(LINK)?;
    netns.tc(&[
        "qdisc", "add", "dev", LINK, "root", "handle", "1:", "htb", "default", "10",
    ])?;
    netns.tc(&[
        "class", "add", "dev", LINK, "parent", "1:", "classid", "1:10", "htb", "rate", "1mbit",
    ])?;
    let before = records(&netns, ifindex)?;
    let tbf_options = options_made_by_tc(
        &netns,
        &[
            "tbf", "rate", "1mbit", "burst", "32kbit", "latency", "400ms",
        ],
    )?;
    let result = in_netns(&netns.path(), |handle| async move {
        qdisc::install_root(&handle, ifindex, "tbf", Some(tbf_options)).await
    })?;
    assert!(
        matches!(result, Err(QdiscError::NotRestorable { .. })),
        "{result:?}"
    );
    assert_eq!(records(&netns, ifindex)?, before);
    Ok(())
}

#[test]
fn ingress_is_recorded_and_survives() -> Result<()> {
    let netns = TestNetns::new("ingress")?;
    let ifindex = netns.ifindex(LINK)?;
    netns.tc(&["qdisc", "add", "dev", LINK, "clsact"])?;
    let before = records(&netns, ifindex)?;
    let tbf_options = options_made_by_tc(
        &netns,
        &[
            "tbf", "rate", "1mbit", "burst", "32kbit", "latency", "400ms",
        ],
    )?;
    let snapshot = in_netns(&netns.path(), |handle| async move {
        qdisc::install_root(&handle, ifindex, "tbf", Some(tbf_options)).await
    })??;
    let ingress = snapshot.ingress.clone();
    assert_eq!(
        ingress.map(|record| record.kind),
        Some("clsact".to_string())
    );
    in_netns(&netns.path(), |handle| async move {
        qdisc::restore(&handle, &snapshot).await
    })??;
    assert_eq!(records(&netns, ifindex)?, before);
    Ok(())
}

/// An interface deleted while our root was on it (a veth whose pod went) can never be put
/// back, and nothing of ours is left on it: restore says so instead of failing for ever.
#[test]
fn restore_of_a_deleted_interface_says_it_is_gone() -> Result<()> {
    let netns = TestNetns::new("gone")?;
    let ifindex = netns.ifindex(PEER)?;
    let spec = TbfSpec::for_rate(125_000);
    let snapshot = in_netns(&netns.path(), |handle| async move {
        tree::install(
            &handle,
            ifindex,
            &Impairment::Tbf(spec),
            &Classifier::default(),
        )
        .await
    })??;
    assert!(
        netns
            .tc(&["qdisc", "show", "dev", PEER])?
            .contains("tbf ca05:")
    );
    // Deleting one end of the veth deletes both.
    netns.ip(&["link", "del", PEER])?;
    let snapshot = &snapshot;
    for _ in 0..2 {
        let restored = in_netns(&netns.path(), |handle| async move {
            qdisc::restore(&handle, snapshot).await
        })??;
        assert_eq!(restored, chaos_netem::Restored::InterfaceGone);
    }
    Ok(())
}

/// An operation the kernel never finishes (here one that waits for ever) ends at the
/// deadline with `TimedOut`, and the socket still serves the next operation.
#[tokio::test(flavor = "current_thread")]
async fn a_netlink_operation_that_does_not_end_times_out() -> Result<()> {
    let netns = TestNetns::new("timeout")?;
    let mut netlink = chaos_netem::NetnsHandle::open(&netns.path()).await?;
    let limit = std::time::Duration::from_millis(300);
    let started = std::time::Instant::now();
    let result = netlink
        .run_within(limit, async |_handle| std::future::pending::<()>().await)
        .await;
    let took = started.elapsed();
    match result {
        Err(chaos_netem::NetnsError::TimedOut { after, .. }) => assert_eq!(after, limit),
        other => bail!("expected TimedOut, got {other:?}"),
    }
    assert!(
        took >= limit && took < limit + std::time::Duration::from_secs(5),
        "{took:?}"
    );
    let names = netlink
        .run(async |handle| chaos_netem::interfaces(handle).await)
        .await??;
    assert!(names.iter().any(|(_, name)| name == LINK), "{names:?}");
    Ok(())
}

/// The namespace's nsfs inode number is handed to the next namespace once it is freed
/// (lowest free number first); its cookie is not. A namespace opened once reads its
/// identity from the same descriptor its socket is made through.
#[tokio::test(flavor = "current_thread")]
async fn a_namespace_at_a_reused_inode_has_another_cookie() -> Result<()> {
    use chaos_netem::{NetnsHandle, OpenNetns, netns_id};
    use std::time::{Duration, Instant};
    // Bounded in time, not in attempts. The kernel frees a namespace's number from a work
    // queue after its last reference goes, which takes seconds on a busy machine, and any
    // namespace made on the machine meanwhile (of any type: they share the numbers, and
    // parallel tests start containers) may take the number first. A round that sees
    // neither within its time starts over with a new first namespace.
    let give_up = Instant::now() + Duration::from_secs(120);
    let mut rounds = 0;
    loop {
        rounds += 1;
        let first = TestNetns::empty("cookie-a")?;
        let opened = OpenNetns::open(&first.path())?;
        assert_eq!(opened.id(), netns_id(&first.path())?);
        let first_cookie = NetnsHandle::open_in(&opened).await?.cookie();
        assert!(first_cookie.is_some(), "this kernel has SO_NETNS_COOKIE");
        let first_id = opened.id();
        drop(opened);
        drop(first);
        // Each candidate is kept until the round ends, so that the next one does not get
        // its number back: only the freed number (or a higher one) is left to hand out.
        let round_ends = Instant::now() + Duration::from_secs(15);
        let mut candidates = Vec::new();
        let mut pause = Duration::from_millis(10);
        while Instant::now() < round_ends {
            let candidate = TestNetns::empty("cookie-b")?;
            if netns_id(&candidate.path())? == first_id {
                let second = NetnsHandle::open(&candidate.path()).await?;
                assert!(second.cookie().is_some());
                assert_ne!(second.cookie(), first_cookie, "same inode, same cookie");
                return Ok(());
            }
            candidates.push(candidate);
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(500));
        }
        if Instant::now() >= give_up {
            bail!(
                "in {rounds} round(s) over 120 s, no new namespace got the number of a freed one"
            );
        }
    }
}
