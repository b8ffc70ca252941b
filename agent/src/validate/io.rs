//! The IO throttle kind's plan and its validation. Like a pause,
//! an IO limit binds a whole cgroup, so a `pid:` target is refused; a device is named by
//! `MAJ:MIN` or by one path component (it becomes a sysfs path), and every limit given is
//! one a workload can still make progress under.

use chaos_cgroup::{DeviceNumber, IoLimits};
use chaos_proto::api;

use crate::error::AgentError;
use crate::target::TargetSpec;

/// Below this a single 4 KiB page takes more than a second: not a slow disk but a stuck
/// one, which `pause` does honestly.
pub const MIN_BYTES_PER_SECOND: u64 = 4096;

/// Which devices the limits go on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IoDevices {
    /// Every whole disk of the node that has a size.
    EveryDisk,
    Number(DeviceNumber),
    /// A device name (`nvme0n1p1`; a partition means its disk), `/dev/` removed.
    Name(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IoPlan {
    /// The limits asked for; None: that one is left as it is.
    pub limits: IoLimits,
    pub devices: IoDevices,
}

pub fn validate_io(fault: &api::IoFault, target: &TargetSpec) -> Result<IoPlan, AgentError> {
    if let TargetSpec::Pid(pid) = target {
        return Err(AgentError::invalid(
            "target",
            format!(
                "pid:{pid} names one process, and an IO limit binds its whole cgroup: target its container (container:, pod:) or cgroup (cgroup:)"
            ),
        ));
    }
    let given = |value: u64| (value > 0).then_some(value);
    let limits = IoLimits {
        read_bps: given(fault.read_bytes_per_second),
        write_bps: given(fault.write_bytes_per_second),
        read_iops: given(fault.read_iops),
        write_iops: given(fault.write_iops),
    };
    if limits == IoLimits::default() {
        return Err(AgentError::invalid(
            "io",
            "sets no limit: give at least one of read_bytes_per_second, write_bytes_per_second, read_iops, write_iops",
        ));
    }
    for (field, value) in [
        ("io.read_bytes_per_second", limits.read_bps),
        ("io.write_bytes_per_second", limits.write_bps),
    ] {
        if value.is_some_and(|v| v < MIN_BYTES_PER_SECOND) {
            return Err(AgentError::invalid(
                field,
                format!(
                    "is below {MIN_BYTES_PER_SECOND} bytes per second, where one page takes over a second (to stop IO, pause the container)"
                ),
            ));
        }
    }
    Ok(IoPlan {
        limits,
        devices: validate_device(&fault.device)?,
    })
}

fn validate_device(text: &str) -> Result<IoDevices, AgentError> {
    if text.is_empty() {
        return Ok(IoDevices::EveryDisk);
    }
    if text.contains(':') {
        return text
            .parse::<DeviceNumber>()
            .map(IoDevices::Number)
            .map_err(|e| AgentError::invalid("io.device", e));
    }
    let name = text.strip_prefix("/dev/").unwrap_or(text);
    let plain = !name.is_empty()
        && name.len() <= 64
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !plain {
        return Err(AgentError::invalid(
            "io.device",
            format!(
                "{text:?} is neither MAJOR:MINOR nor a device name such as nvme0n1 or /dev/loop3"
            ),
        ));
    }
    Ok(IoDevices::Name(name.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container() -> TargetSpec {
        TargetSpec::parse("container:abc").unwrap()
    }

    #[test]
    fn a_limit_is_required_and_a_pid_is_refused() {
        let none = validate_io(&api::IoFault::default(), &container()).unwrap_err();
        assert_eq!(none.code(), tonic::Code::InvalidArgument);
        let fault = api::IoFault {
            write_bytes_per_second: 1 << 20,
            ..Default::default()
        };
        let pid = validate_io(&fault, &TargetSpec::Pid(7)).unwrap_err();
        assert!(pid.to_string().contains("whole cgroup"), "{pid}");
        let plan = validate_io(&fault, &container()).unwrap();
        assert_eq!(plan.limits.write_bps, Some(1 << 20));
        assert_eq!(plan.limits.read_bps, None);
        assert_eq!(plan.devices, IoDevices::EveryDisk);
        let slow = api::IoFault {
            read_bytes_per_second: 100,
            ..Default::default()
        };
        assert!(validate_io(&slow, &container()).is_err());
    }

    #[test]
    fn devices_are_numbers_or_single_names() {
        let with = |device: &str| {
            validate_io(
                &api::IoFault {
                    read_iops: 10,
                    device: device.into(),
                    ..Default::default()
                },
                &container(),
            )
            .map(|plan| plan.devices)
        };
        assert_eq!(
            with("259:0").unwrap(),
            IoDevices::Number(DeviceNumber {
                major: 259,
                minor: 0
            })
        );
        assert_eq!(with("/dev/loop3").unwrap(), IoDevices::Name("loop3".into()));
        assert_eq!(
            with("nvme0n1p1").unwrap(),
            IoDevices::Name("nvme0n1p1".into())
        );
        for bad in ["8:x", "/dev/../block", "..", "a/b", "/dev/", "sd a"] {
            assert!(with(bad).is_err(), "{bad}");
        }
    }
}
