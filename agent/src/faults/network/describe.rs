//! What is installed, in words: the kernel's dumps read back and described the way
//! `tc` prints them, for the fault's status.

use chaos_netem::filter::FilterView;
use chaos_netem::ingress::IngressRedirect;
use chaos_netem::{NetemSpec, QdiscView};

/// What the kernel has installed for a fault on `ifindex`, decoded from dumps: the root
/// qdisc tree and its filters (egress), or the redirect filter and the ifb's tree (ingress).
pub(super) async fn read_installed(
    handle: &chaos_netem::Handle,
    ifindex: u32,
    redirect: Option<&IngressRedirect>,
) -> Result<String, String> {
    let Some(redirect) = redirect else {
        return describe_tree(handle, ifindex).await;
    };
    let filters = chaos_netem::filter::dump(handle, ifindex, redirect.parent)
        .await
        .map_err(|e| e.to_string())?;
    let ours: Vec<String> = filters
        .iter()
        .filter(|f| f.pref == redirect.pref)
        .map(FilterView::describe)
        .collect();
    let links = chaos_netem::ingress::links(handle)
        .await
        .map_err(|e| e.to_string())?;
    let ifb = links
        .iter()
        .find(|l| l.name == redirect.ifb_name && l.is_ifb)
        .ok_or_else(|| format!("ifb {} is missing", redirect.ifb_name))?;
    Ok(format!(
        "{}: {}; {} (ifindex {}): {}",
        chaos_netem::ingress::describe_parent(redirect.parent),
        if ours.is_empty() {
            "redirect filter missing".to_string()
        } else {
            ours.join(", ")
        },
        ifb.name,
        ifb.index,
        describe_tree(handle, ifb.index).await?
    ))
}

/// The root qdisc, the impairing qdisc below it, and the root's filters, in words.
async fn describe_tree(handle: &chaos_netem::Handle, ifindex: u32) -> Result<String, String> {
    let views = chaos_netem::qdisc::dump(handle, ifindex)
        .await
        .map_err(|e| e.to_string())?;
    let mut text = describe_root(&views);
    let Some(root) = views
        .iter()
        .find(|v| v.record.parent == chaos_netem::qdisc::TC_H_ROOT)
    else {
        return Ok(text);
    };
    if root.record.kind != "prio" {
        return Ok(text);
    }
    if let Some(child) = views
        .iter()
        .find(|v| v.record.parent == chaos_netem::tree::NETEM_CLASS)
    {
        text += &format!(
            "; {}: {}",
            describe_handle(child.record.parent),
            describe_qdisc(child)
        );
    }
    let filters = chaos_netem::filter::dump(handle, ifindex, root.record.handle)
        .await
        .map_err(|e| e.to_string())?;
    if !filters.is_empty() {
        let described: Vec<String> = filters.iter().map(FilterView::describe).collect();
        text += &format!("; filters: {}", described.join(", "));
    }
    Ok(text)
}

fn describe_handle(handle: u32) -> String {
    format!("{:x}:{:x}", handle >> 16, handle & 0xffff)
}

/// The root qdisc in words, like `tc qdisc show` prints it.
pub fn describe_root(views: &[QdiscView]) -> String {
    let Some(root) = views
        .iter()
        .find(|v| v.record.parent == chaos_netem::qdisc::TC_H_ROOT)
    else {
        return "no root qdisc".into();
    };
    describe_qdisc(root)
}

fn describe_qdisc(view: &QdiscView) -> String {
    let handle = format!("{:x}:", view.record.handle >> 16);
    match (&view.netem, &view.tbf) {
        (Some(netem), _) => format!("netem {handle} {}", describe_netem(&netem.spec)),
        (None, Some(tbf)) => format!(
            "tbf {handle} rate {} burst {}b limit {}b",
            describe_rate(tbf.rate_bytes_per_sec),
            tbf.burst_bytes,
            tbf.limit_bytes
        ),
        (None, None) => format!("{} {handle}", view.record.kind),
    }
}

fn describe_netem(spec: &NetemSpec) -> String {
    let mut parts = vec![format!("limit {}", spec.limit_packets)];
    let ms = |us: u64| format!("{}ms", us as f64 / 1000.0);
    if spec.delay_us > 0 {
        let mut delay = format!("delay {}", ms(spec.delay_us));
        if spec.jitter_us > 0 {
            delay += &format!(" {}", ms(spec.jitter_us));
        }
        if spec.delay_correlation_pct > 0.0 {
            delay += &format!(" {:.4}%", spec.delay_correlation_pct);
        }
        parts.push(delay);
    }
    if let Some(distribution) = spec.distribution {
        parts.push(format!("distribution {distribution:?}").to_lowercase());
    }
    let percent = |name: &str, pct: f64, corr: f64| {
        if corr > 0.0 {
            format!("{name} {pct:.4}% {corr:.4}%")
        } else {
            format!("{name} {pct:.4}%")
        }
    };
    if spec.loss_pct > 0.0 {
        parts.push(percent("loss", spec.loss_pct, spec.loss_correlation_pct));
    }
    if spec.duplicate_pct > 0.0 {
        parts.push(percent(
            "duplicate",
            spec.duplicate_pct,
            spec.duplicate_correlation_pct,
        ));
    }
    if spec.reorder_pct > 0.0 {
        parts.push(format!(
            "{} gap {}",
            percent("reorder", spec.reorder_pct, spec.reorder_correlation_pct),
            spec.reorder_gap
        ));
    }
    if spec.corrupt_pct > 0.0 {
        parts.push(percent(
            "corrupt",
            spec.corrupt_pct,
            spec.corrupt_correlation_pct,
        ));
    }
    if spec.rate_bytes_per_sec > 0 {
        parts.push(format!("rate {}", describe_rate(spec.rate_bytes_per_sec)));
    }
    parts.join(" ")
}

/// A rate in bits per second as tc prints it; in bytes per second (tc's `Bps`) when the
/// bit rate does not fit 64 bits (validation refuses such requests, but a dump of a
/// qdisc someone else made may carry any rate).
fn describe_rate(bytes_per_second: u64) -> String {
    match bytes_per_second.checked_mul(8) {
        Some(bits) => format!("{bits}bit"),
        None => format!("{bytes_per_second}Bps"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_described_in_bits_unless_the_bits_overflow() {
        assert_eq!(describe_rate(1_000_000), "8000000bit");
        assert_eq!(
            describe_rate(u64::MAX / 8),
            format!("{}bit", u64::MAX / 8 * 8)
        );
        assert_eq!(describe_rate(u64::MAX), format!("{}Bps", u64::MAX));
        let netem = NetemSpec {
            rate_bytes_per_sec: u64::MAX,
            ..NetemSpec::default()
        };
        assert!(describe_netem(&netem).ends_with(&format!("rate {}Bps", u64::MAX)));
    }

    #[test]
    fn describes_netem_like_tc() {
        let spec = NetemSpec {
            delay_us: 100_000,
            jitter_us: 10_000,
            loss_pct: 5.0,
            ..NetemSpec::default()
        };
        assert_eq!(
            describe_netem(&spec),
            "limit 1000 delay 100ms 10ms loss 5.0000%"
        );
    }
}
