//! Block IO limits of a cgroup: cgroup2 `io.max` ("MAJ:MIN rbps=N wbps=N riops=N
//! wiops=N", `max` for no limit; a device appears only while it has one), v1 blkio's four
//! `blkio.throttle.{read,write}_{bps,iops}_device` files ("MAJ:MIN N" per limited device;
//! writing 0 removes the limit). Both throttle bios as they are submitted, per whole disk:
//! the kernel refuses a partition's number.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::dir::{self, read};
use crate::error::CgroupError;
use crate::fs::CgroupFs;
use crate::membership::ProcessCgroup;

const V1_CONTROLLER: &str = "blkio";
const V2_CONTROLLER: &str = "io";
const V2_MAX: &str = "io.max";

/// A block device's number, as cgroup files and `/sys/dev/block` name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DeviceNumber {
    pub major: u32,
    pub minor: u32,
}

impl fmt::Display for DeviceNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

impl FromStr for DeviceNumber {
    type Err = String;

    fn from_str(text: &str) -> Result<DeviceNumber, String> {
        let (major, minor) = text
            .trim()
            .split_once(':')
            .ok_or_else(|| format!("{text:?} is not MAJOR:MINOR"))?;
        let number = |part: &str| {
            part.parse::<u32>()
                .map_err(|_| format!("{text:?} is not MAJOR:MINOR"))
        };
        Ok(DeviceNumber {
            major: number(major)?,
            minor: number(minor)?,
        })
    }
}

/// The four limits on one device; None is no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IoLimits {
    pub read_bps: Option<u64>,
    pub write_bps: Option<u64>,
    pub read_iops: Option<u64>,
    pub write_iops: Option<u64>,
}

impl IoLimits {
    /// Each limit the lower of the two: `other` never loosens what `self` holds.
    pub fn tightened_by(&self, other: &IoLimits) -> IoLimits {
        let lower = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        IoLimits {
            read_bps: lower(self.read_bps, other.read_bps),
            write_bps: lower(self.write_bps, other.write_bps),
            read_iops: lower(self.read_iops, other.read_iops),
            write_iops: lower(self.write_iops, other.write_iops),
        }
    }

    /// The v2 `io.max` line setting all four (so a write restores them exactly).
    fn v2_line(&self, device: DeviceNumber) -> String {
        let value = |limit: Option<u64>| limit.map_or_else(|| "max".to_string(), |n| n.to_string());
        format!(
            "{device} rbps={} wbps={} riops={} wiops={}",
            value(self.read_bps),
            value(self.write_bps),
            value(self.read_iops),
            value(self.write_iops)
        )
    }

    fn get(&self, key: LimitKey) -> Option<u64> {
        match key {
            LimitKey::ReadBps => self.read_bps,
            LimitKey::WriteBps => self.write_bps,
            LimitKey::ReadIops => self.read_iops,
            LimitKey::WriteIops => self.write_iops,
        }
    }

    fn set(&mut self, key: LimitKey, value: Option<u64>) {
        match key {
            LimitKey::ReadBps => self.read_bps = value,
            LimitKey::WriteBps => self.write_bps = value,
            LimitKey::ReadIops => self.read_iops = value,
            LimitKey::WriteIops => self.write_iops = value,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum LimitKey {
    ReadBps,
    WriteBps,
    ReadIops,
    WriteIops,
}

impl LimitKey {
    const ALL: [LimitKey; 4] = [
        LimitKey::ReadBps,
        LimitKey::WriteBps,
        LimitKey::ReadIops,
        LimitKey::WriteIops,
    ];

    fn v1_file(self) -> &'static str {
        match self {
            LimitKey::ReadBps => "blkio.throttle.read_bps_device",
            LimitKey::WriteBps => "blkio.throttle.write_bps_device",
            LimitKey::ReadIops => "blkio.throttle.read_iops_device",
            LimitKey::WriteIops => "blkio.throttle.write_iops_device",
        }
    }

    fn v2_key(self) -> &'static str {
        match self {
            LimitKey::ReadBps => "rbps",
            LimitKey::WriteBps => "wbps",
            LimitKey::ReadIops => "riops",
            LimitKey::WriteIops => "wiops",
        }
    }
}

/// One cgroup's IO limits: the directory holding its throttle files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IoThrottle {
    pub dir: PathBuf,
    /// True for the v1 blkio hierarchy, false for cgroup2.
    pub v1: bool,
}

impl CgroupFs {
    /// The IO limits of `cg`: its directory under the v1 blkio hierarchy, or its cgroup2
    /// directory when the io controller is enabled for it. Unsupported otherwise.
    pub fn io_throttle(&self, cg: &ProcessCgroup) -> Result<IoThrottle, CgroupError> {
        let controller = if cg.is_v1() {
            V1_CONTROLLER
        } else {
            V2_CONTROLLER
        };
        let throttle = IoThrottle {
            dir: self.controller_dir(cg, controller)?,
            v1: cg.is_v1(),
        };
        if !throttle.dir.is_dir() {
            return Err(CgroupError::NotFound { path: throttle.dir });
        }
        let probe = if throttle.v1 {
            LimitKey::ReadBps.v1_file()
        } else {
            V2_MAX
        };
        if !throttle.dir.join(probe).is_file() {
            return Err(self.unsupported(format!(
                "{} has no {probe}: {}",
                throttle.dir.display(),
                if throttle.v1 {
                    "this kernel has no blkio throttling"
                } else {
                    "the io controller is not enabled for this cgroup (its parent's cgroup.subtree_control lacks io), or the kernel has no blkio throttling"
                }
            )));
        }
        Ok(throttle)
    }

    /// Why this node cannot limit cgroups' IO, or None when it can: v1 needs the blkio
    /// hierarchy with throttle files, cgroup2 the io controller.
    pub fn io_unsupported(&self) -> Option<String> {
        self.controller_unsupported(
            V1_CONTROLLER,
            |hierarchy| {
                if hierarchy.join(LimitKey::ReadBps.v1_file()).is_file() {
                    None
                } else {
                    Some("the blkio hierarchy has no throttle files: this kernel has no blkio throttling".into())
                }
            },
            || {
                let controllers = read(&self.root().join("cgroup.controllers")).unwrap_or_default();
                if controllers.split_whitespace().any(|c| c == V2_CONTROLLER) {
                    None
                } else {
                    Some("the cgroup2 root has no io controller".into())
                }
            },
        )
    }
}

impl IoThrottle {
    /// A throttle at a directory, as a journal record names it.
    pub fn at(dir: impl Into<PathBuf>, v1: bool) -> IoThrottle {
        IoThrottle {
            dir: dir.into(),
            v1,
        }
    }

    /// Every device with a limit now; devices not listed have none.
    pub fn limits(&self) -> Result<BTreeMap<DeviceNumber, IoLimits>, CgroupError> {
        if !self.v1 {
            let file = self.dir.join(V2_MAX);
            return parse_v2_max(&read(&file)?)
                .map_err(|detail| CgroupError::parse(file.display().to_string(), detail));
        }
        let mut limits: BTreeMap<DeviceNumber, IoLimits> = BTreeMap::new();
        for key in LimitKey::ALL {
            let file = self.dir.join(key.v1_file());
            let values = parse_v1_device_values(&read(&file)?)
                .map_err(|detail| CgroupError::parse(file.display().to_string(), detail))?;
            for (device, value) in values {
                limits.entry(device).or_default().set(key, Some(value));
            }
        }
        Ok(limits)
    }

    /// The limits on one device (all None when it has none).
    pub fn limits_of(&self, device: DeviceNumber) -> Result<IoLimits, CgroupError> {
        Ok(self.limits()?.remove(&device).unwrap_or_default())
    }

    /// Sets all four limits of `device` to exactly `limits` (None removes one).
    pub fn set(&self, device: DeviceNumber, limits: &IoLimits) -> Result<(), CgroupError> {
        if !self.v1 {
            return dir::write_control(&self.dir, V2_MAX, &limits.v2_line(device));
        }
        for key in LimitKey::ALL {
            let value = limits.get(key).unwrap_or(0);
            dir::write_control(&self.dir, key.v1_file(), &format!("{device} {value}"))?;
        }
        Ok(())
    }

    /// The directory's inode: which cgroup this is (see `dir::inode`).
    pub fn inode(&self) -> Result<u64, CgroupError> {
        dir::inode(&self.dir)
    }

    /// True when the cgroup has child cgroups, which its limits would bound too.
    pub fn has_children(&self) -> Result<bool, CgroupError> {
        dir::has_children(&self.dir)
    }

    /// The processes of the cgroup itself.
    pub fn procs(&self) -> Result<Vec<u32>, CgroupError> {
        dir::procs(&self.dir)
    }
}

/// `io.max`: one line per limited device, each key `max` or a number.
pub(crate) fn parse_v2_max(text: &str) -> Result<BTreeMap<DeviceNumber, IoLimits>, String> {
    let mut limits = BTreeMap::new();
    for line in text.lines().filter(|line| !line.trim().is_empty()) {
        let mut fields = line.split_whitespace();
        let device: DeviceNumber = fields.next().unwrap_or_default().parse()?;
        let mut device_limits = IoLimits::default();
        for field in fields {
            let Some((name, value)) = field.split_once('=') else {
                return Err(format!("bad field {field:?} in {line:?}"));
            };
            let Some(key) = LimitKey::ALL.into_iter().find(|k| k.v2_key() == name) else {
                continue; // a key of a newer kernel: not ours to restore
            };
            let value = match value {
                "max" => None,
                number => Some(
                    number
                        .parse::<u64>()
                        .map_err(|_| format!("bad value {field:?} in {line:?}"))?,
                ),
            };
            device_limits.set(key, value);
        }
        limits.insert(device, device_limits);
    }
    Ok(limits)
}

/// A v1 `blkio.throttle.*_device` file: "MAJ:MIN VALUE" per line.
pub(crate) fn parse_v1_device_values(text: &str) -> Result<Vec<(DeviceNumber, u64)>, String> {
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let (device, value) = line
                .trim()
                .split_once(' ')
                .ok_or_else(|| format!("bad line {line:?}"))?;
            let value = value
                .trim()
                .parse::<u64>()
                .map_err(|_| format!("bad value in {line:?}"))?;
            Ok((device.parse()?, value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    const SDA: DeviceNumber = DeviceNumber { major: 8, minor: 0 };

    #[test]
    fn device_numbers_and_the_two_formats_parse() {
        assert_eq!(
            "259:3".parse::<DeviceNumber>().unwrap().to_string(),
            "259:3"
        );
        assert!("sda".parse::<DeviceNumber>().is_err());
        assert!("8:x".parse::<DeviceNumber>().is_err());
        let v2 = parse_v2_max("8:0 rbps=1048576 wbps=max riops=max wiops=120\n").unwrap();
        assert_eq!(
            v2[&SDA],
            IoLimits {
                read_bps: Some(1_048_576),
                write_iops: Some(120),
                ..Default::default()
            }
        );
        assert!(parse_v2_max("8:0 rbps\n").is_err());
        assert_eq!(
            parse_v1_device_values("8:0 4096\n7:3 10\n").unwrap(),
            [(SDA, 4096), (DeviceNumber { major: 7, minor: 3 }, 10)]
        );
        assert!(parse_v1_device_values("8:0\n").is_err());
    }

    #[test]
    fn a_fault_never_loosens_a_limit() {
        let held = IoLimits {
            read_bps: Some(1000),
            write_bps: None,
            ..Default::default()
        };
        let asked = IoLimits {
            read_bps: Some(5000),
            write_bps: Some(2000),
            ..Default::default()
        };
        let result = held.tightened_by(&asked);
        assert_eq!(result.read_bps, Some(1000));
        assert_eq!(result.write_bps, Some(2000));
        assert_eq!(result.read_iops, None);
    }

    #[test]
    fn a_v2_throttle_writes_every_key_of_its_line() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        write(&root.join("cgroup.controllers"), "cpu io memory\n");
        write(&root.join("cgroup.procs"), "1\n");
        write(&root.join("pod/c1/cgroup.procs"), "10\n");
        write(
            &root.join("pod/c1/io.max"),
            "8:0 rbps=max wbps=500 riops=max wiops=max\n",
        );
        write(&root.join("nio/cgroup.procs"), "");
        let fs = CgroupFs::at(root);
        assert_eq!(fs.io_unsupported(), None);
        let throttle = fs
            .io_throttle(&ProcessCgroup::parse("0::/pod/c1\n").unwrap())
            .unwrap();
        assert_eq!(throttle.limits_of(SDA).unwrap().write_bps, Some(500));
        let limits = IoLimits {
            read_bps: Some(7),
            ..Default::default()
        };
        throttle.set(SDA, &limits).unwrap();
        assert_eq!(
            std::fs::read_to_string(root.join("pod/c1/io.max")).unwrap(),
            "8:0 rbps=7 wbps=max riops=max wiops=max"
        );
        let err = fs
            .io_throttle(&ProcessCgroup::parse("0::/nio\n").unwrap())
            .unwrap_err();
        assert!(err.to_string().contains("not enabled"), "{err}");
    }

    #[test]
    fn a_v1_throttle_writes_four_files_zero_for_none() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        write(&root.join("memory/cgroup.procs"), "1\n");
        let fs = CgroupFs::at(root);
        assert!(fs.io_unsupported().unwrap().contains("not mounted"));
        write(&root.join("blkio/cgroup.procs"), "1\n");
        write(&root.join("blkio/blkio.throttle.read_bps_device"), "");
        let dir = root.join("blkio/k8s/c1");
        write(&dir.join("cgroup.procs"), "10\n");
        for key in LimitKey::ALL {
            write(&dir.join(key.v1_file()), "");
        }
        write(&dir.join("blkio.throttle.read_iops_device"), "8:0 50\n");
        assert_eq!(fs.io_unsupported(), None);
        let cg = ProcessCgroup::parse("9:blkio:/k8s/c1\n").unwrap();
        let throttle = fs.io_throttle(&cg).unwrap();
        assert!(throttle.v1);
        assert_eq!(throttle.limits_of(SDA).unwrap().read_iops, Some(50));
        throttle
            .set(
                SDA,
                &IoLimits {
                    write_bps: Some(4096),
                    ..Default::default()
                },
            )
            .unwrap();
        let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap();
        assert_eq!(read("blkio.throttle.write_bps_device"), "8:0 4096");
        assert_eq!(read("blkio.throttle.read_iops_device"), "8:0 0");
    }
}
