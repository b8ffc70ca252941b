//! u32 filters, the targeted tree and the ingress redirect against the build host's kernel
//! (cls_u32, act_mirred, ifb, ingress and htb present; sch_netem and sch_prio absent).
//! Root only; every namespace is removed on drop, taking its links and qdiscs with it.

mod common;

use anyhow::{Context, Result};
use chaos_netem::filter::{self, FilterView};
use chaos_netem::ingress::{self, INGRESS_HANDLE, IngressError};
use chaos_netem::qdisc::{self, QdiscError};
use chaos_netem::tree::{self, Classifier, TreeError};
use chaos_netem::u32::{
    self as cls, End, Family, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, IpCidr, Selector,
    TC_U32_TERMINAL, TrafficMatch,
};
use chaos_netem::{Impairment, NetemSpec, in_netns};
use common::{LINK, PEER, TestNetns};

const HTB_PARENT: u32 = 0x0001_0000;

fn filters(netns: &TestNetns, ifindex: u32, parent: u32) -> Result<Vec<FilterView>> {
    Ok(in_netns(&netns.path(), move |handle| async move {
        filter::dump(&handle, ifindex, parent).await
    })??)
}

/// `tc filter show` text without the hash-table ids (`fh 801:`, `ht 801`), which the
/// kernel numbers per filter instance.
fn without_table_ids(text: &str) -> String {
    text.lines()
        .map(|line| {
            let mut words = Vec::new();
            let mut skip = false;
            for word in line.split_whitespace() {
                if skip {
                    skip = false;
                    continue;
                }
                skip = word == "fh" || word == "ht";
                words.push(word);
            }
            words.join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn cidr(addr: &str, prefix: u8) -> IpCidr {
    IpCidr {
        addr: addr.parse().expect("address"),
        prefix,
    }
}

/// Filters built by `tc` under an htb root, dumped over netlink: their selectors must be
/// byte-identical to ours for the same matches; then ours, installed through netlink,
/// must print exactly like tc's in `tc filter show`.
fn compare_with_tc(label: &str, family: Family, cases: &[(&str, TrafficMatch)]) -> Result<()> {
    let netns = TestNetns::new(label)?;
    let ifindex = netns.ifindex(LINK)?;
    netns.tc(&["qdisc", "add", "dev", LINK, "root", "handle", "1:", "htb"])?;
    let tc_protocol = match family {
        Family::V4 => "ip",
        Family::V6 => "ipv6",
    };
    for (index, (tc_matches, ours)) in cases.iter().enumerate() {
        let pref = (index + 1).to_string();
        let mut args = vec![
            "filter",
            "add",
            "dev",
            LINK,
            "parent",
            "1:",
            "protocol",
            tc_protocol,
            "prio",
            &pref,
            "u32",
        ];
        args.extend(tc_matches.split(' '));
        args.extend_from_slice(&["classid", "1:2"]);
        netns.tc(&args)?;
        let dumped = filters(&netns, ifindex, HTB_PARENT)?;
        let by_tc = dumped
            .iter()
            .find(|f| f.pref == index as u16 + 1)
            .with_context(|| format!("no filter at pref {pref}: {dumped:?}"))?;
        let selector = Selector::for_match(ours, family)?;
        let tc_selector = by_tc
            .selector
            .clone()
            .context("tc's filter has no selector")?;
        eprintln!(
            "pref {pref}: tc {} ours {} ({})",
            hex(&tc_selector.encode(TC_U32_TERMINAL)),
            hex(&selector.encode(TC_U32_TERMINAL)),
            by_tc.describe()
        );
        assert_eq!(
            hex(&tc_selector.encode(TC_U32_TERMINAL)),
            hex(&selector.encode(TC_U32_TERMINAL)),
            "case {tc_matches:?}"
        );
        assert_eq!(by_tc.classid, Some(0x0001_0002));
        assert_eq!(by_tc.protocol, family.ethertype());

        // The same filter through our encoder, one priority further up.
        let tc_text = netns.tc(&["filter", "show", "dev", LINK, "parent", "1:", "prio", &pref])?;
        netns.tc(&["filter", "del", "dev", LINK, "parent", "1:", "prio", &pref])?;
        let options = cls::classify_options(&selector, 0x0001_0002);
        let pref_number = index as u16 + 1;
        in_netns(&netns.path(), move |handle| async move {
            filter::add_u32(
                &handle,
                ifindex,
                HTB_PARENT,
                pref_number,
                family.ethertype(),
                options,
            )
            .await
        })??;
        let our_text = netns.tc(&["filter", "show", "dev", LINK, "parent", "1:", "prio", &pref])?;
        assert_eq!(
            without_table_ids(&our_text),
            without_table_ids(&tc_text),
            "case {tc_matches:?}"
        );
    }
    Ok(())
}

#[test]
fn host_u32_selectors_match_tc() -> Result<()> {
    // tc's match arguments, and the same match as ours.
    let cases: Vec<(&str, TrafficMatch)> = vec![
        (
            "match u8 5 0x0f at 0 match ip protocol 6 0xff match ip dst 10.1.0.0/16 match ip dport 5432 0xffff",
            TrafficMatch {
                protocol: Some(IPPROTO_TCP),
                address: Some((End::Destination, cidr("10.1.0.0", 16))),
                port: Some((End::Destination, 5432)),
            },
        ),
        (
            "match u8 5 0x0f at 0 match ip protocol 17 0xff match ip src 192.168.7.9/32 match ip sport 53 0xffff",
            TrafficMatch {
                protocol: Some(IPPROTO_UDP),
                address: Some((End::Source, cidr("192.168.7.9", 32))),
                port: Some((End::Source, 53)),
            },
        ),
        (
            "match ip dst 172.16.0.0/12",
            TrafficMatch {
                address: Some((End::Destination, cidr("172.16.0.0", 12))),
                ..Default::default()
            },
        ),
        (
            "match ip protocol 1 0xff",
            TrafficMatch {
                protocol: Some(1),
                ..Default::default()
            },
        ),
        ("match u32 0 0", TrafficMatch::default()),
    ];
    compare_with_tc("u32", Family::V4, &cases)
}

/// The IPv6 header as tc's `match ip6 ...` reads it: next header, addresses over one to
/// four words, ports after the fixed header; ICMP is ICMPv6 there.
#[test]
fn host_u32_ipv6_selectors_match_tc() -> Result<()> {
    let cases: Vec<(&str, TrafficMatch)> = vec![
        (
            "match ip6 protocol 6 0xff match ip6 dst fd00:c4a0::/64 match ip6 dport 5432 0xffff",
            TrafficMatch {
                protocol: Some(IPPROTO_TCP),
                address: Some((End::Destination, cidr("fd00:c4a0::", 64))),
                port: Some((End::Destination, 5432)),
            },
        ),
        (
            "match ip6 protocol 17 0xff match ip6 src fd00:c4a0::2/128 match ip6 sport 53 0xffff",
            TrafficMatch {
                protocol: Some(IPPROTO_UDP),
                address: Some((End::Source, cidr("fd00:c4a0::2", 128))),
                port: Some((End::Source, 53)),
            },
        ),
        (
            "match ip6 dst 2001:db8:8000::/33",
            TrafficMatch {
                address: Some((End::Destination, cidr("2001:db8:8000::", 33))),
                ..Default::default()
            },
        ),
        (
            "match ip6 protocol 58 0xff",
            TrafficMatch {
                protocol: Some(IPPROTO_ICMP),
                ..Default::default()
            },
        ),
        (
            "match ip6 protocol 6 0xff match ip6 dport 7090 0xffff",
            TrafficMatch {
                protocol: Some(IPPROTO_TCP),
                port: Some((End::Destination, 7090)),
                ..Default::default()
            },
        ),
        ("match u32 0 0", TrafficMatch::default()),
    ];
    compare_with_tc("u32v6", Family::V6, &cases)
}

/// tc's ingress redirect (match-all u32 + mirred egress redirect) and ours decode alike
/// and print alike; `ingress::remove` takes ours away with its ingress qdisc and ifb.
#[test]
fn host_ingress_redirect_matches_tc_and_is_removed_with_its_ifb() -> Result<()> {
    let netns = TestNetns::new("redir")?;
    let ifindex = netns.ifindex(LINK)?;
    let before = (
        netns.tc(&["qdisc", "show", "dev", LINK])?,
        netns.ip(&["-o", "link", "show"])?,
    );
    let ifb_name = ingress::ifb_name(0x7);
    netns.ip(&["link", "add", &ifb_name, "type", "ifb"])?;
    let ifb = netns.ifindex(&ifb_name)?;
    netns.tc(&["qdisc", "add", "dev", LINK, "ingress"])?;
    netns.tc(&[
        "filter", "add", "dev", LINK, "parent", "ffff:", "protocol", "all", "prio", "1", "u32",
        "match", "u32", "0", "0", "action", "mirred", "egress", "redirect", "dev", &ifb_name,
    ])?;
    let dumped = filters(&netns, ifindex, INGRESS_HANDLE)?;
    let by_tc = dumped
        .iter()
        .find(|f| f.pref == 1)
        .context("no tc filter")?;
    assert_eq!(by_tc.redirect_to, Some(ifb));
    assert_eq!(by_tc.protocol, cls::ETH_P_ALL);
    let everything = Selector::match_all();
    assert_eq!(by_tc.selector.as_ref(), Some(&everything));
    let tc_text = netns.tc(&["filter", "show", "dev", LINK, "parent", "ffff:"])?;
    netns.tc(&["filter", "del", "dev", LINK, "parent", "ffff:", "prio", "1"])?;

    let options = cls::redirect_options(&everything, ifb);
    in_netns(&netns.path(), move |handle| async move {
        filter::add_u32(&handle, ifindex, INGRESS_HANDLE, 1, cls::ETH_P_ALL, options).await
    })??;
    let our_text = netns.tc(&["filter", "show", "dev", LINK, "parent", "ffff:"])?;
    // The action index is a counter of the namespace: tc's was 1, ours is the next free.
    let without_index = |text: &str| {
        text.lines()
            .filter(|line| !line.trim_start().starts_with("index "))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(without_index(&our_text), without_index(&tc_text));

    let redirect = ingress::IngressRedirect {
        ifb_name: ifb_name.clone(),
        parent: INGRESS_HANDLE,
        pref: 1,
        creates_qdisc: true,
        ifb_index: Some(ifb),
    };
    for _ in 0..2 {
        // Twice: removal is idempotent (a journal replay after a crash repeats it).
        let redirect = redirect.clone();
        in_netns(&netns.path(), move |handle| async move {
            ingress::remove(&handle, ifindex, &redirect).await
        })??;
    }
    let after = (
        netns.tc(&["qdisc", "show", "dev", LINK])?,
        netns.ip(&["-o", "link", "show"])?,
    );
    assert_eq!(after, before);
    Ok(())
}

/// On this kernel prio is missing: the targeted tree fails on its first step, naming prio,
/// and the interface is exactly as before.
#[test]
fn host_targeted_tree_without_prio_changes_nothing() -> Result<()> {
    let netns = TestNetns::new("noprio")?;
    let ifindex = netns.ifindex(LINK)?;
    netns.tc(&[
        "qdisc", "add", "dev", LINK, "root", "handle", "1:", "tbf", "rate", "100mbit", "burst",
        "32kb", "latency", "50ms",
    ])?;
    let before = (
        netns.tc(&["-d", "qdisc", "show", "dev", LINK])?,
        netns.tc(&["filter", "show", "dev", LINK])?,
    );
    let classifier = Classifier {
        matches: vec![TrafficMatch {
            protocol: Some(IPPROTO_TCP),
            port: Some((End::Destination, 80)),
            ..Default::default()
        }],
        ..Default::default()
    };
    let spec = Impairment::Netem(NetemSpec {
        delay_us: 10_000,
        ..NetemSpec::default()
    });
    let result = in_netns(&netns.path(), move |handle| async move {
        tree::install_targeted(&handle, ifindex, &spec, &classifier).await
    })?;
    match result {
        Err(TreeError::Qdisc(QdiscError::KindNotSupported { kind })) => assert_eq!(kind, "prio"),
        other => panic!("expected prio to be missing on this host, got {other:?}"),
    }
    let after = (
        netns.tc(&["-d", "qdisc", "show", "dev", LINK])?,
        netns.tc(&["filter", "show", "dev", LINK])?,
    );
    assert_eq!(after, before);
    Ok(())
}

/// The ifb is made first and netem on it fails here: everything is undone, no ifb is
/// left, and the interface (with a pre-existing ingress qdisc and filter) is unchanged.
#[test]
fn host_ingress_without_netem_leaves_no_ifb_and_changes_nothing() -> Result<()> {
    let netns = TestNetns::new("noifb")?;
    let ifindex = netns.ifindex(LINK)?;
    for with_ingress in [false, true] {
        if with_ingress {
            netns.tc(&["qdisc", "add", "dev", LINK, "ingress"])?;
            netns.tc(&[
                "filter",
                "add",
                "dev",
                LINK,
                "parent",
                "ffff:",
                "protocol",
                "ip",
                "prio",
                "10",
                "u32",
                "match",
                "ip",
                "dst",
                "10.9.0.0/16",
                "classid",
                "1:1",
            ])?;
        }
        let before = (
            netns.tc(&["-d", "qdisc", "show", "dev", LINK])?,
            netns.tc(&["filter", "show", "dev", LINK, "ingress"])?,
            netns.ip(&["-o", "link", "show"])?,
        );
        let spec = Impairment::Netem(NetemSpec {
            delay_us: 10_000,
            ..NetemSpec::default()
        });
        let outcome = in_netns(&netns.path(), move |handle| async move {
            let snapshot = qdisc::snapshot(&handle, ifindex).await?;
            let redirect = ingress::plan(&handle, &snapshot, &ingress::ifb_name(0xabc)).await?;
            let planned = redirect.clone();
            let installed =
                ingress::install(&handle, ifindex, &redirect, &spec, &Classifier::default()).await;
            Ok::<_, IngressError>((planned, installed))
        })??;
        let (planned, installed) = outcome;
        assert_eq!(planned.creates_qdisc, !with_ingress);
        assert_eq!(planned.pref, if with_ingress { 9 } else { 1 });
        match installed {
            Err(IngressError::Tree(TreeError::Qdisc(QdiscError::KindNotSupported { kind }))) => {
                assert_eq!(kind, "netem")
            }
            other => panic!("expected netem to be missing on this host, got {other:?}"),
        }
        let after = (
            netns.tc(&["-d", "qdisc", "show", "dev", LINK])?,
            netns.tc(&["filter", "show", "dev", LINK, "ingress"])?,
            netns.ip(&["-o", "link", "show"])?,
        );
        assert_eq!(after, before);
        assert!(!after.2.contains("chaos-ifb"), "{}", after.2);
    }
    Ok(())
}

/// The ifb and the filters of an ingress fault that `ingress::remove` finds, by what it
/// may remove: a filter at our priority that is not our redirect stays, so does the
/// ingress qdisc it hangs on (although we made it), and our ifb goes.
#[test]
fn host_ingress_remove_leaves_what_is_not_ours() -> Result<()> {
    let netns = TestNetns::new("notours")?;
    let ifindex = netns.ifindex(LINK)?;
    let ifb_name = ingress::ifb_name(0x9);
    netns.ip(&["link", "add", &ifb_name, "type", "ifb"])?;
    let ifb = netns.ifindex(&ifb_name)?;
    netns.tc(&["qdisc", "add", "dev", LINK, "ingress"])?;
    // Someone else's filter at the priority our record names.
    netns.tc(&[
        "filter",
        "add",
        "dev",
        LINK,
        "parent",
        "ffff:",
        "protocol",
        "ip",
        "prio",
        "1",
        "u32",
        "match",
        "ip",
        "dst",
        "10.9.0.0/16",
        "classid",
        "1:1",
    ])?;
    let before = netns.tc(&["filter", "show", "dev", LINK, "parent", "ffff:"])?;
    let redirect = ingress::IngressRedirect {
        ifb_name: ifb_name.clone(),
        parent: INGRESS_HANDLE,
        pref: 1,
        creates_qdisc: true,
        ifb_index: Some(ifb),
    };
    let outcome = in_netns(&netns.path(), move |handle| async move {
        ingress::remove(&handle, ifindex, &redirect).await
    })??;
    assert!(
        matches!(&outcome, qdisc::Restored::OthersLeftAlone(what) if what.contains("pref 1")),
        "{outcome:?}"
    );
    assert_eq!(
        netns.tc(&["filter", "show", "dev", LINK, "parent", "ffff:"])?,
        before
    );
    assert!(
        netns
            .tc(&["qdisc", "show", "dev", LINK])?
            .contains("qdisc ingress ffff:")
    );
    assert!(!netns.ip(&["-o", "link", "show"])?.contains(&ifb_name));
    Ok(())
}

/// The interface of an ingress fault deleted while it held: removing it says so, and
/// still deletes the fault's ifb, which lives apart from the interface.
#[test]
fn host_ingress_remove_of_a_deleted_interface_still_deletes_the_ifb() -> Result<()> {
    let netns = TestNetns::new("ifgone")?;
    let ifindex = netns.ifindex(LINK)?;
    let redirect = in_netns(&netns.path(), move |handle| async move {
        let snapshot = qdisc::snapshot(&handle, ifindex).await?;
        let mut redirect = ingress::plan(&handle, &snapshot, &ingress::ifb_name(0xa)).await?;
        let spec = chaos_netem::TbfSpec::for_rate(125_000);
        let ifb = ingress::install(
            &handle,
            ifindex,
            &redirect,
            &Impairment::Tbf(spec),
            &Classifier::default(),
        )
        .await?;
        redirect.ifb_index = Some(ifb);
        anyhow::Ok(redirect)
    })??;
    assert!(
        netns
            .ip(&["-o", "link", "show"])?
            .contains(&redirect.ifb_name)
    );
    netns.ip(&["link", "del", LINK])?;
    let ifb_name = redirect.ifb_name.clone();
    let outcome = in_netns(&netns.path(), move |handle| async move {
        ingress::remove(&handle, ifindex, &redirect).await
    })??;
    assert_eq!(outcome, qdisc::Restored::InterfaceGone);
    assert!(!netns.ip(&["-o", "link", "show"])?.contains(&ifb_name));
    Ok(())
}

/// Packets of the classes `ca05:1` and `ca05:2` of an htb root, from `tc -s class show`.
fn class_packets(netns: &TestNetns) -> Result<(u64, u64)> {
    let text = netns.tc(&["-s", "class", "show", "dev", LINK])?;
    let packets = |class: &str| -> Result<u64> {
        let mut lines = text.lines();
        lines
            .find(|line| line.starts_with(&format!("class htb {class} ")))
            .with_context(|| format!("no class {class} in {text}"))?;
        let sent = lines.next().context("no statistics line")?;
        let words: Vec<&str> = sent.split_whitespace().collect();
        let at = words
            .iter()
            .position(|w| *w == "bytes")
            .context("no `bytes`")?;
        Ok(words.get(at + 1).context("no packet count")?.parse()?)
    };
    Ok((packets("ca05:1")?, packets("ca05:2")?))
}

/// The targeted tree's filters for a mixed IPv4 + IPv6 request, installed under an htb
/// root with the tree's two classes (prio is missing on this kernel, htb classifies
/// alike): they dump back as built, each family under its own protocol, and real packets
/// land where they should: an IPv6 exclusion wins over an IPv6 network match, an IPv4
/// exclusion over an IPv4 one, a port alone catches both families, and what nothing
/// matches stays out of both classes.
#[test]
fn host_mixed_family_filters_classify_real_packets() -> Result<()> {
    let netns = TestNetns::new("mixed")?;
    let ifindex = netns.ifindex(LINK)?;
    let peer_mac = {
        let line = netns.ip(&["-o", "link", "show", PEER])?;
        let words: Vec<&str> = line.split_whitespace().collect();
        let at = words
            .iter()
            .position(|w| *w == "link/ether")
            .context("no MAC")?;
        words[at + 1].to_string()
    };
    netns.ip(&["-6", "addr", "add", "fd00:c4a0::1/64", "dev", LINK, "nodad"])?;
    // Static neighbours: every packet leaves at once, no resolution traffic in the counts.
    for neighbour in ["10.199.0.2", "fd00:c4a0::2", "fd00:c4a0::7"] {
        netns.ip(&[
            "neigh",
            "add",
            neighbour,
            "lladdr",
            &peer_mac,
            "dev",
            LINK,
            "nud",
            "permanent",
        ])?;
    }
    netns.ip(&[
        "-6",
        "route",
        "add",
        "fd00:beef::/64",
        "via",
        "fd00:c4a0::2",
        "dev",
        LINK,
    ])?;
    netns.tc(&[
        "qdisc", "add", "dev", LINK, "root", "handle", "ca05:", "htb",
    ])?;
    for class in ["ca05:1", "ca05:2"] {
        netns.tc(&[
            "class", "add", "dev", LINK, "parent", "ca05:", "classid", class, "htb", "rate",
            "1gbit",
        ])?;
    }
    let to = |addr: &str, prefix: u8| TrafficMatch {
        address: Some((End::Destination, cidr(addr, prefix))),
        ..Default::default()
    };
    let classifier = Classifier {
        exclusions: vec![to("fd00:c4a0::7", 128), to("10.200.0.9", 32)],
        matches: vec![
            to("fd00:c4a0::", 64),
            to("10.200.0.0", 16),
            TrafficMatch {
                protocol: Some(IPPROTO_UDP),
                port: Some((End::Destination, 9)),
                ..Default::default()
            },
        ],
    };
    let rules = classifier.rules()?;
    assert_eq!(rules.len(), 2 + 4);
    let installed = rules.clone();
    in_netns(&netns.path(), move |handle| async move {
        tree::add_rules(&handle, ifindex, qdisc::CHAOS_ROOT_HANDLE, &installed).await
    })??;
    let dumped = filters(&netns, ifindex, qdisc::CHAOS_ROOT_HANDLE)?;
    eprintln!("{}", netns.tc(&["filter", "show", "dev", LINK])?);
    assert_eq!(dumped.len(), rules.len(), "{dumped:?}");
    for rule in &rules {
        let found = dumped
            .iter()
            .find(|f| f.pref == rule.pref)
            .with_context(|| format!("no filter at pref {}", rule.pref))?;
        assert_eq!(
            found.protocol,
            rule.family.ethertype(),
            "{}",
            rule.describe()
        );
        assert_eq!(found.selector.as_ref(), Some(&rule.selector));
        assert_eq!(found.classid, Some(rule.classid));
        eprintln!("{} | {}", rule.describe(), found.describe());
    }
    let tc_text = netns.tc(&["filter", "show", "dev", LINK])?;
    assert!(tc_text.contains("protocol ipv6"), "{tc_text}");
    assert!(tc_text.contains("protocol ip "), "{tc_text}");

    let before = class_packets(&netns)?;
    // (destination, port, packets): (excluded, matched) expected 2 + 3 and 3 * 4.
    let sends: Vec<(&str, u16, usize)> = vec![
        ("fd00:c4a0::2", 5000, 3), // IPv6 network match
        ("fd00:c4a0::7", 5000, 3), // IPv6 exclusion inside it
        ("10.200.0.5", 5000, 3),   // IPv4 network match
        ("10.200.0.9", 5000, 2),   // IPv4 exclusion inside it
        ("fd00:beef::1", 9, 3),    // port alone, IPv6
        ("10.201.0.1", 9, 3),      // port alone, IPv4
        ("fd00:beef::1", 10, 2),   // nothing matches
        ("10.201.0.1", 10, 2),     // nothing matches
    ];
    in_netns(&netns.path(), move |_handle| async move {
        for (addr, port, count) in sends {
            let ip: std::net::IpAddr = addr.parse()?;
            let socket = if ip.is_ipv4() {
                std::net::UdpSocket::bind("0.0.0.0:0")?
            } else {
                std::net::UdpSocket::bind("[::]:0")?
            };
            for _ in 0..count {
                socket.send_to(b"chaos", (ip, port))?;
            }
        }
        anyhow::Ok(())
    })??;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    let expected = (before.0 + 3 + 2, before.1 + 3 * 4);
    let mut counts = class_packets(&netns)?;
    while counts != expected && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
        counts = class_packets(&netns)?;
    }
    assert_eq!(
        counts,
        expected,
        "{}",
        netns.tc(&["-s", "class", "show", "dev", LINK])?
    );
    Ok(())
}
