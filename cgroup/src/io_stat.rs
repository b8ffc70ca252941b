//! A cgroup's own block IO counters: cgroup2 `io.stat` ("MAJ:MIN rbytes=N wbytes=N
//! rios=N ..." per device), v1 blkio's `blkio.throttle.io_service_bytes` ("MAJ:MIN Read N"
//! ... per device and operation, then "Total N"). The throttle layer counts what a process
//! submits itself (its reads, its direct IO) on v1; v2 also charges writeback to the
//! cgroup that dirtied the pages.

use std::path::Path;

use crate::error::CgroupError;
use crate::fs::CgroupFs;
use crate::membership::ProcessCgroup;

const V1_FILE: &str = "blkio.throttle.io_service_bytes";
const V2_FILE: &str = "io.stat";

/// A parser of one of the two files.
type Parser = fn(&str) -> Result<IoCounters, String>;

/// Bytes read and written, summed over every device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IoCounters {
    pub read_bytes: u64,
    pub written_bytes: u64,
}

impl IoCounters {
    /// What grew since `earlier` (a counter that went back, as a recreated cgroup's, is 0).
    pub fn since(&self, earlier: &IoCounters) -> IoCounters {
        IoCounters {
            read_bytes: self.read_bytes.saturating_sub(earlier.read_bytes),
            written_bytes: self.written_bytes.saturating_sub(earlier.written_bytes),
        }
    }
}

/// Sums `rbytes` and `wbytes` of a cgroup2 `io.stat`; a line without them (a device with
/// only discards) adds nothing, a value that is not a number is an error.
pub fn parse_io_stat(text: &str) -> Result<IoCounters, String> {
    let mut counters = IoCounters::default();
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        if fields.next().is_none() {
            continue;
        }
        for field in fields {
            let Some((key, value)) = field.split_once('=') else {
                return Err(format!("{field:?} is not KEY=VALUE"));
            };
            let slot = match key {
                "rbytes" => &mut counters.read_bytes,
                "wbytes" => &mut counters.written_bytes,
                _ => continue,
            };
            let value: u64 = value
                .parse()
                .map_err(|_| format!("{key} {value:?} is not a number"))?;
            *slot = slot.saturating_add(value);
        }
    }
    Ok(counters)
}

/// Sums the `Read` and `Write` lines of a v1 `blkio.throttle.io_service_bytes`; the
/// device-less `Total` line and the other operations (Sync, Async, Discard, Total) are
/// left out, as each repeats bytes counted by Read or Write.
pub fn parse_io_service_bytes(text: &str) -> Result<IoCounters, String> {
    let mut counters = IoCounters::default();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [_device, operation, value] = fields[..] else {
            continue;
        };
        let slot = match operation {
            "Read" => &mut counters.read_bytes,
            "Write" => &mut counters.written_bytes,
            _ => continue,
        };
        let value: u64 = value
            .parse()
            .map_err(|_| format!("{operation} {value:?} is not a number"))?;
        *slot = slot.saturating_add(value);
    }
    Ok(counters)
}

impl CgroupFs {
    /// The IO `cg` itself has done, summed over devices (v2 `io.stat`, v1
    /// `blkio.throttle.io_service_bytes`).
    pub fn io_counters(&self, cg: &ProcessCgroup) -> Result<IoCounters, CgroupError> {
        let (controller, name, parse): (_, _, Parser) = if cg.is_v1() {
            ("blkio", V1_FILE, parse_io_service_bytes)
        } else {
            ("io", V2_FILE, parse_io_stat)
        };
        let file = self.controller_dir(cg, controller)?.join(name);
        read_with(&file, parse)
    }
}

fn read_with(file: &Path, parse: Parser) -> Result<IoCounters, CgroupError> {
    let text = std::fs::read_to_string(file).map_err(|e| CgroupError::io(file, e))?;
    parse(&text).map_err(|why| CgroupError::parse(file.display().to_string(), why))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_io_stat_sums_rbytes_and_wbytes_over_devices() {
        let text = "8:0 rbytes=1048576 wbytes=2097152 rios=3 wios=4 dbytes=0 dios=0\n\
                    7:3 rbytes=10 wbytes=20 rios=1 wios=1 dbytes=5 dios=1\n\
                    259:0 dbytes=4096 dios=1\n";
        assert_eq!(
            parse_io_stat(text),
            Ok(IoCounters {
                read_bytes: 1_048_586,
                written_bytes: 2_097_172,
            })
        );
        assert_eq!(parse_io_stat(""), Ok(IoCounters::default()));
        assert!(
            parse_io_stat("8:0 rbytes=x")
                .unwrap_err()
                .contains("rbytes")
        );
        assert!(parse_io_stat("8:0 rbytes").is_err());
    }

    #[test]
    fn v1_io_service_bytes_sums_read_and_write_lines_only() {
        let text = "7:3 Read 4096\n7:3 Write 8192\n7:3 Sync 8192\n7:3 Async 4096\n\
                    7:3 Discard 0\n7:3 Total 12288\n\
                    8:0 Read 1\n8:0 Write 2\n8:0 Sync 0\n8:0 Async 3\n8:0 Discard 0\n\
                    8:0 Total 3\nTotal 12291\n";
        assert_eq!(
            parse_io_service_bytes(text),
            Ok(IoCounters {
                read_bytes: 4097,
                written_bytes: 8194,
            })
        );
        // A cgroup that did no IO shows only the total.
        assert_eq!(
            parse_io_service_bytes("Total 0\n"),
            Ok(IoCounters::default())
        );
        assert!(parse_io_service_bytes("7:3 Write -1").is_err());
    }

    #[test]
    fn growth_is_since_the_baseline_and_never_negative() {
        let before = IoCounters {
            read_bytes: 10,
            written_bytes: 100,
        };
        let after = IoCounters {
            read_bytes: 30,
            written_bytes: 50,
        };
        assert_eq!(
            after.since(&before),
            IoCounters {
                read_bytes: 20,
                written_bytes: 0,
            }
        );
    }
}
