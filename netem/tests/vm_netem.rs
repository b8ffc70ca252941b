//! Tests that need sch_netem: they FAIL on a kernel without it, so they are ignored by
//! default and run inside the Debian VM (see netem/README.md):
//!   cargo test -p chaos-netem --test vm_netem --no-run
//!   vng -r /boot/vmlinuz-6.1.0-56-amd64 --disable-kvm --force-9p --memory 2G --cpus 2 \
//!     --exec 'modprobe sch_netem sch_prio cls_u32 ifb && target/debug/deps/vm_netem-* --include-ignored --test-threads 1'

mod common;

use anyhow::{Context, Result, bail};
use chaos_netem::codec;
use chaos_netem::qdisc::{self, CHAOS_ROOT_HANDLE, QdiscRecord};
use chaos_netem::{NetemSpec, in_netns};
use common::{LINK, TestNetns};

fn records(netns: &TestNetns, ifindex: u32) -> Result<Vec<QdiscRecord>> {
    let views = in_netns(&netns.path(), |handle| async move {
        qdisc::dump(&handle, ifindex).await
    })??;
    Ok(views.into_iter().map(|view| view.record).collect())
}

fn netem_root(netns: &TestNetns, ifindex: u32) -> Result<(QdiscRecord, codec::DecodedNetem)> {
    let views = in_netns(&netns.path(), |handle| async move {
        qdisc::dump(&handle, ifindex).await
    })??;
    for view in views {
        if view.record.parent == qdisc::TC_H_ROOT {
            let decoded = view.netem.context("root qdisc is not netem")?;
            return Ok((view.record, decoded));
        }
    }
    bail!("no root qdisc")
}

/// The `tc qdisc show` line for the root, without the `refcnt N` that varies.
fn tc_root_line(netns: &TestNetns) -> Result<String> {
    let text = netns.tc(&["qdisc", "show", "dev", LINK])?;
    let line = text
        .lines()
        .find(|line| line.contains(" root "))
        .context("tc shows no root qdisc")?;
    let mut words = Vec::new();
    let mut skip_next = false;
    for word in line.split_whitespace() {
        if skip_next {
            skip_next = false;
        } else if word == "refcnt" {
            skip_next = true;
        } else {
            words.push(word);
        }
    }
    Ok(words.join(" "))
}

#[test]
#[ignore = "needs netem: run in the VM"]
fn vm_install_netem_delay_read_back_and_restore() -> Result<()> {
    let netns = TestNetns::new("vmnetem")?;
    let ifindex = netns.ifindex(LINK)?;
    let before = records(&netns, ifindex)?;
    let spec = NetemSpec {
        delay_us: 50_000,
        ..NetemSpec::default()
    };
    let spec_ref = &spec;
    let snapshot = in_netns(&netns.path(), |handle| async move {
        qdisc::install_netem(&handle, ifindex, spec_ref).await
    })??;

    let (record, decoded) = netem_root(&netns, ifindex)?;
    assert_eq!(record.handle, CHAOS_ROOT_HANDLE);
    assert_eq!(decoded.spec, spec);
    assert!(decoded.unmodelled_attribute_kinds.is_empty());
    // What the kernel dumps is byte for byte what we sent.
    assert_eq!(record.options, Some(codec::encode(&spec)?));
    let tc_line = tc_root_line(&netns)?;
    println!("tc: {tc_line}");
    assert_eq!(tc_line, "qdisc netem ca05: root limit 1000 delay 50ms");

    let snapshot = &snapshot;
    in_netns(&netns.path(), |handle| async move {
        qdisc::restore(&handle, snapshot).await
    })??;
    assert_eq!(records(&netns, ifindex)?, before);
    Ok(())
}

#[test]
#[ignore = "needs netem: run in the VM"]
fn vm_decode_what_tc_installs() -> Result<()> {
    let netns = TestNetns::new("vmtc")?;
    let ifindex = netns.ifindex(LINK)?;
    netns.tc(&[
        "qdisc",
        "add",
        "dev",
        LINK,
        "root",
        "handle",
        "1:",
        "netem",
        "delay",
        "50ms",
        "10ms",
        "25%",
        "loss",
        "5%",
        "duplicate",
        "1%",
        "corrupt",
        "0.1%",
        "rate",
        "1mbit",
    ])?;
    let tc_line = tc_root_line(&netns)?;
    println!("tc: {tc_line}");
    // Recorded from iproute2 6.1 on Debian's 6.1 kernel.
    assert_eq!(
        tc_line,
        "qdisc netem 1: root limit 1000 delay 50ms 10ms 25% loss 5% duplicate 1% corrupt 0.1% rate 1Mbit"
    );
    let (record, decoded) = netem_root(&netns, ifindex)?;
    println!("decoded: {:?}", decoded);
    let spec = &decoded.spec;
    assert_eq!(spec.delay_us, 50_000);
    assert_eq!(spec.jitter_us, 10_000);
    assert!((spec.delay_correlation_pct - 25.0).abs() < 1e-6);
    assert!((spec.loss_pct - 5.0).abs() < 1e-6);
    assert!((spec.duplicate_pct - 1.0).abs() < 1e-6);
    assert!((spec.corrupt_pct - 0.1).abs() < 1e-6);
    assert_eq!(spec.rate_bytes_per_sec, 125_000);
    assert!(decoded.unmodelled_attribute_kinds.is_empty());
    // Our encoder reproduces the kernel's dump byte for byte.
    assert_eq!(record.options, Some(codec::encode(spec)?));
    Ok(())
}

/// The kernel keeps a netem jitter up to 2^31 - 1 ns and silently cuts a larger one to
/// that: `codec::MAX_JITTER_US`, the largest the codec (and the agent) accepts, reads back
/// exactly; one millisecond more, sent raw, reads back as the cap.
#[test]
#[ignore = "needs netem: run in the VM"]
fn vm_the_widest_jitter_the_codec_takes_is_what_the_kernel_keeps() -> Result<()> {
    let netns = TestNetns::new("vmjitter")?;
    let ifindex = netns.ifindex(LINK)?;
    let before = records(&netns, ifindex)?;
    let spec = NetemSpec {
        delay_us: 5_000_000,
        jitter_us: codec::MAX_JITTER_US,
        ..NetemSpec::default()
    };
    let spec_ref = &spec;
    let snapshot = in_netns(&netns.path(), |handle| async move {
        qdisc::install_netem(&handle, ifindex, spec_ref).await
    })??;
    assert_eq!(
        netem_root(&netns, ifindex)?.1.spec.jitter_us,
        codec::MAX_JITTER_US
    );

    // The encoder writes LATENCY64 then JITTER64 right after the 24-byte struct.
    let mut above = codec::encode(&spec)?;
    let jitter_at = codec::QOPT_LEN + 12;
    assert_eq!(
        u16::from_ne_bytes([above[jitter_at + 2], above[jitter_at + 3]]),
        codec::attr::JITTER64
    );
    let wider_ns = (codec::MAX_JITTER_US + 1_000) as i64 * 1000;
    above[jitter_at + 4..jitter_at + 12].copy_from_slice(&wider_ns.to_ne_bytes());
    in_netns(&netns.path(), |handle| async move {
        qdisc::install_root(&handle, ifindex, "netem", Some(above)).await
    })??;
    let kept = netem_root(&netns, ifindex)?.1.spec.jitter_us;
    println!("asked {} us, the kernel kept {kept} us", wider_ns / 1000);
    assert_eq!(kept, codec::MAX_JITTER_US);

    let snapshot = &snapshot;
    in_netns(&netns.path(), |handle| async move {
        qdisc::restore(&handle, snapshot).await
    })??;
    assert_eq!(records(&netns, ifindex)?, before);
    Ok(())
}
