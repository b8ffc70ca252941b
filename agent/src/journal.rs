//! The on-host journal: one file per fault, written before the fault touches the node,
//! removed after it is reverted. A restarted agent reverts what the journal still lists,
//! so a crash or SIGKILL leaves nothing behind.
//!
//! Records are not fsynced. Everything a fault changes is kernel state that a reboot
//! wipes (qdiscs, stressor processes, a cgroup's load), so the journal has to outlive
//! the agent's process, which the page cache does, but not the node. A power loss may
//! leave a record empty or torn; it describes nothing that survived, and
//! [`Journal::drop_unreadable_before`] removes such records at the next start. An fsync
//! of the file and of the directory would cost milliseconds on a node's network disk
//! for every inject and revert, and buy nothing.
//!
//! For the same reason every record carries the boot it was written in (the kernel's
//! random boot id, stamped by [`Journal::write`]): a record of an earlier boot describes
//! nothing that survived, and its numbers (pids, namespace inodes, interface indexes) now
//! belong to others, so [`Journal::drop_records_of_earlier_boots`] removes it at start
//! instead of replaying it.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("journal record {path} is unreadable: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

/// What must be done to put the node back, in the form the fault's kind wrote it. Each
/// kind owns that form (`faults::<kind>` serializes and replays it); the journal only
/// stores it, so it knows nothing of any kind. The form of every record is an object
/// tagged by `action`, as it was when the journal owned the forms: records written by
/// earlier agents read the same.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UndoRecord(serde_json::Value);

impl UndoRecord {
    /// The record of a kind's own undo form.
    pub fn of<T: Serialize>(undo: &T) -> UndoRecord {
        // Serializing a plain struct into a JSON value cannot fail (no map with non-string
        // keys); should it, the record says so and its replay fails with that message.
        UndoRecord(serde_json::to_value(undo).unwrap_or_else(
            |e| serde_json::json!({ "action": "unserializable", "error": e.to_string() }),
        ))
    }

    /// The record read as a kind's undo form.
    pub fn read<T: DeserializeOwned>(&self) -> Result<T, String> {
        T::deserialize(&self.0).map_err(|e| format!("the journal record's undo {}: {e}", self.0))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalRecord {
    pub id: String,
    pub kind: String,
    pub target: String,
    pub created_unix_ms: i64,
    pub deadline_unix_ms: i64,
    pub undo: UndoRecord,
}

/// This boot, as the journal stamps and checks records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Boot {
    /// `/proc/sys/kernel/random/boot_id`: a random UUID the kernel makes at every boot.
    pub id: String,
    /// When it began (`btime` of `/proc/stat`).
    pub started: SystemTime,
}

impl Boot {
    pub fn current() -> Result<Boot, JournalError> {
        let read = |path: &str| {
            fs::read_to_string(path).map_err(|source| JournalError::Io {
                path: PathBuf::from(path),
                source,
            })
        };
        let id = read("/proc/sys/kernel/random/boot_id")?.trim().to_string();
        let stat = read("/proc/stat")?;
        let seconds =
            crate::procfs::parse_boot_time(&stat).ok_or_else(|| JournalError::Corrupt {
                path: PathBuf::from("/proc/stat"),
                reason: "no btime line".into(),
            })?;
        Ok(Boot {
            id,
            started: SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(seconds),
        })
    }
}

/// A record as it is written: the record and the boot it was written in.
#[derive(Serialize)]
struct Stamped<'a> {
    #[serde(flatten)]
    record: &'a JournalRecord,
    #[serde(skip_serializing_if = "Option::is_none")]
    boot_id: Option<&'a str>,
}

/// A record as it is read. Records of agents before the stamp have no boot id.
#[derive(Deserialize)]
struct Stored {
    #[serde(flatten)]
    record: JournalRecord,
    #[serde(default)]
    boot_id: Option<String>,
}

/// A record file and what it holds (or why it could not be read).
type StoredAt = (PathBuf, Result<Stored, JournalError>);

#[derive(Debug, Clone)]
pub struct Journal {
    dir: PathBuf,
    /// None when this boot could not be read: records are then not stamped, and none is
    /// dropped as from an earlier boot.
    boot: Option<Boot>,
}

const SUFFIX: &str = ".json";
/// A write in progress: `.<id>.tmp`, renamed to `<id>.json` when complete.
const TEMPORARY_SUFFIX: &str = ".tmp";

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> JournalError + '_ {
    move |source| JournalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl Journal {
    /// Opens (creating, mode 0700) `<state_dir>/journal`, for this boot.
    pub fn open(state_dir: &Path) -> Result<Journal, JournalError> {
        let boot = match Boot::current() {
            Ok(boot) => Some(boot),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read this boot's id: journal records are not stamped with it, and none is dropped as from an earlier boot");
                None
            }
        };
        Journal::open_for(state_dir, boot)
    }

    /// Opens `<state_dir>/journal` for `boot` (tests give one of their own).
    pub fn open_for(state_dir: &Path, boot: Option<Boot>) -> Result<Journal, JournalError> {
        let dir = state_dir.join("journal");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io(&dir))?;
        Ok(Journal { dir, boot })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}{SUFFIX}"))
    }

    /// Writes the record atomically (temporary file, then rename), so an agent that dies
    /// at any point leaves the old record or the new one, never half of one. Not
    /// fsynced: see the module's comment.
    pub fn write(&self, record: &JournalRecord) -> Result<(), JournalError> {
        let path = self.path(&record.id);
        let tmp = self.dir.join(format!(".{}{TEMPORARY_SUFFIX}", record.id));
        let stamped = Stamped {
            record,
            boot_id: self.boot.as_ref().map(|boot| boot.id.as_str()),
        };
        let bytes = serde_json::to_vec_pretty(&stamped).map_err(|e| JournalError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io(&tmp))?;
        file.write_all(&bytes).map_err(io(&tmp))?;
        drop(file);
        fs::rename(&tmp, &path).map_err(io(&path))
    }

    pub fn remove(&self, id: &str) -> Result<(), JournalError> {
        let path = self.path(id);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// Every record, oldest first; an unreadable one is returned as an error so the
    /// caller can report it without losing the others.
    pub fn records(&self) -> Result<Vec<Result<JournalRecord, JournalError>>, JournalError> {
        Ok(self
            .stored()?
            .into_iter()
            .map(|(_, stored)| stored.map(|s| s.record))
            .collect())
    }

    /// Every record with its path and boot id, oldest first.
    fn stored(&self) -> Result<Vec<StoredAt>, JournalError> {
        let mut paths: Vec<PathBuf> = fs::read_dir(&self.dir)
            .map_err(io(&self.dir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.ends_with(SUFFIX) && !n.starts_with('.'))
            })
            .collect();
        paths.sort();
        let mut records: Vec<StoredAt> = paths
            .into_iter()
            .map(|path| {
                let stored = fs::read(&path).map_err(io(&path)).and_then(|bytes| {
                    serde_json::from_slice(&bytes).map_err(|e| JournalError::Corrupt {
                        path: path.clone(),
                        reason: e.to_string(),
                    })
                });
                (path, stored)
            })
            .collect();
        records.sort_by_key(|(_, r)| {
            r.as_ref()
                .map(|r| r.record.created_unix_ms)
                .unwrap_or(i64::MIN)
        });
        Ok(records)
    }

    /// Removes, with a log line each, the records of an earlier boot: the reboot wiped
    /// everything they describe (qdiscs, stressors, a cgroup's load), and their numbers
    /// (pids, namespace inodes, interface indexes) now name what others made since. A
    /// record is of an earlier boot when it carries another boot id; a record of an agent
    /// that stamped none, when it was last written before this boot began. Returns how
    /// many were dropped; problems are logged, and leave the records for the replay.
    pub fn drop_records_of_earlier_boots(&self) -> usize {
        let Some(boot) = &self.boot else {
            return 0;
        };
        let stored = match self.stored() {
            Ok(stored) => stored,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the journal to drop records of earlier boots");
                return 0;
            }
        };
        let mut dropped = 0;
        for (path, stored) in stored {
            // Unreadable records are drop_unreadable_before's (by their time alone).
            let Ok(stored) = stored else { continue };
            let earlier = match &stored.boot_id {
                Some(id) => *id != boot.id,
                None => fs::metadata(&path)
                    .and_then(|m| m.modified())
                    .is_ok_and(|written| written < boot.started),
            };
            if !earlier {
                continue;
            }
            let record = &stored.record;
            match fs::remove_file(&path) {
                Ok(()) => {
                    dropped += 1;
                    tracing::warn!(
                        fault = %record.id,
                        kind = %record.kind,
                        target = %record.target,
                        record_boot = stored.boot_id.as_deref().unwrap_or("unstamped, written before this boot"),
                        this_boot = %boot.id,
                        "dropped a journal record of an earlier boot: the reboot wiped what it describes, and its pids and namespaces are others' now"
                    );
                }
                Err(e) => {
                    tracing::error!(fault = %record.id, path = %path.display(), error = %e, "cannot drop a journal record of an earlier boot")
                }
            }
        }
        dropped
    }

    /// Removes the unreadable records last written before `boot` (this boot's start)
    /// and returns their paths. Such a record was cut short by a power loss or a crash
    /// of the node, and what it described did not survive the reboot. An unreadable
    /// record of this boot stays, for an operator to look at.
    pub fn drop_unreadable_before(&self, boot: SystemTime) -> Result<Vec<PathBuf>, JournalError> {
        let mut dropped = Vec::new();
        for record in self.records()? {
            let Err(JournalError::Corrupt { path, .. }) = record else {
                continue;
            };
            let written = fs::metadata(&path)
                .and_then(|m| m.modified())
                .map_err(io(&path))?;
            if written < boot {
                fs::remove_file(&path).map_err(io(&path))?;
                dropped.push(path);
            }
        }
        Ok(dropped)
    }

    /// Removes the temporary files of writes that never reached their rename, and
    /// returns their paths. Only an agent killed between [`Journal::write`]'s temporary
    /// file and its rename leaves one. Such a file is never a record: the rename is what
    /// commits a write, and until it returned the fault had not touched the node (a
    /// first write) or the previous record is still in place (an update). Called at
    /// start, when no write is in flight; without it each crash in that window would
    /// leave a file in the journal directory for good.
    pub fn drop_temporary_files(&self) -> Result<Vec<PathBuf>, JournalError> {
        let mut dropped = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io(&self.dir))? {
            let path = entry.map_err(io(&self.dir))?.path();
            let is_temporary = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.') && n.ends_with(TEMPORARY_SUFFIX));
            if is_temporary {
                fs::remove_file(&path).map_err(io(&path))?;
                dropped.push(path);
            }
        }
        Ok(dropped)
    }

    pub fn len(&self) -> usize {
        self.records().map(|r| r.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, created: i64) -> JournalRecord {
        JournalRecord {
            id: id.into(),
            kind: "cpu".into(),
            target: "container:abc".into(),
            created_unix_ms: created,
            deadline_unix_ms: created + 1000,
            undo: UndoRecord::of(
                &serde_json::json!({"action": "kill_processes", "processes": [{"pid": 42, "start_time": 7}]}),
            ),
        }
    }

    #[test]
    fn temporary_files_of_unfinished_writes_are_dropped_and_records_kept() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path()).unwrap();
        journal.write(&record("f-1", 10)).unwrap();
        // What a SIGKILL between the temporary file and the rename leaves.
        let unfinished = journal.dir().join(".f-2.tmp");
        fs::write(&unfinished, b"{\"id\":").unwrap();
        assert_eq!(
            journal.drop_temporary_files().unwrap(),
            vec![unfinished.clone()]
        );
        assert!(!unfinished.exists());
        let ids: Vec<String> = journal
            .records()
            .unwrap()
            .into_iter()
            .map(|r| r.unwrap().id)
            .collect();
        assert_eq!(ids, ["f-1"]);
        let left: Vec<_> = fs::read_dir(journal.dir()).unwrap().collect();
        assert_eq!(left.len(), 1, "{left:?}");
    }

    #[test]
    fn writes_lists_and_removes_records() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path()).unwrap();
        assert!(journal.is_empty());
        journal.write(&record("f-2", 20)).unwrap();
        journal.write(&record("f-1", 10)).unwrap();
        let ids: Vec<String> = journal
            .records()
            .unwrap()
            .into_iter()
            .map(|r| r.unwrap().id)
            .collect();
        assert_eq!(ids, ["f-1", "f-2"]);
        // Rewriting replaces the record.
        let mut updated = record("f-1", 10);
        updated.undo = UndoRecord::of(&serde_json::json!({"action": "nothing"}));
        journal.write(&updated).unwrap();
        let first = journal.records().unwrap().remove(0).unwrap();
        assert_eq!(first.undo, updated.undo);
        journal.remove("f-1").unwrap();
        journal.remove("f-1").unwrap();
        assert_eq!(journal.len(), 1);
        let mode = std::fs::metadata(journal.dir()).unwrap().permissions();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(mode.mode() & 0o777, 0o700);
    }

    #[test]
    fn a_corrupt_record_is_reported_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path()).unwrap();
        journal.write(&record("f-1", 10)).unwrap();
        std::fs::write(journal.dir().join("f-bad.json"), b"{not json").unwrap();
        // Leftover temporary files of an interrupted write are ignored.
        std::fs::write(journal.dir().join(".f-3.tmp"), b"{").unwrap();
        let records = journal.records().unwrap();
        assert_eq!(records.len(), 2);
        assert!(
            records
                .iter()
                .any(|r| matches!(r, Err(JournalError::Corrupt { .. })))
        );
        assert!(
            records
                .iter()
                .any(|r| r.as_ref().is_ok_and(|r| r.id == "f-1"))
        );
    }

    #[test]
    fn unreadable_records_from_before_the_boot_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path()).unwrap();
        let boot = SystemTime::now() - std::time::Duration::from_secs(600);
        // Cut short by a power loss an hour before this boot.
        let torn = journal.dir().join("f-torn.json");
        std::fs::write(&torn, b"").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&torn)
            .unwrap()
            .set_modified(boot - std::time::Duration::from_secs(3600))
            .unwrap();
        // Unreadable, but written in this boot: kept for an operator.
        std::fs::write(journal.dir().join("f-bad.json"), b"{not json").unwrap();
        // Readable records are never dropped here, however old.
        journal.write(&record("f-old", 10)).unwrap();
        std::fs::File::options()
            .write(true)
            .open(journal.dir().join("f-old.json"))
            .unwrap()
            .set_modified(boot - std::time::Duration::from_secs(3600))
            .unwrap();

        let dropped = journal.drop_unreadable_before(boot).unwrap();
        assert_eq!(dropped, vec![torn.clone()]);
        assert!(!torn.exists());
        let left: Vec<bool> = journal
            .records()
            .unwrap()
            .iter()
            .map(|r| r.is_ok())
            .collect();
        assert_eq!(left.len(), 2);
        assert_eq!(left.iter().filter(|ok| **ok).count(), 1);
    }

    fn boot(id: &str) -> Boot {
        Boot {
            id: id.into(),
            started: SystemTime::now() - std::time::Duration::from_secs(600),
        }
    }

    #[test]
    fn records_carry_the_boot_they_were_written_in() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open_for(dir.path(), Some(boot("boot-a"))).unwrap();
        journal.write(&record("f-1", 10)).unwrap();
        let text = std::fs::read_to_string(journal.dir().join("f-1.json")).unwrap();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(json["boot_id"], "boot-a");
        assert_eq!(json["id"], "f-1");
        assert_eq!(json["undo"]["action"], "kill_processes");
        // The record reads back whole, stamp aside.
        assert_eq!(
            journal.records().unwrap()[0].as_ref().unwrap(),
            &record("f-1", 10)
        );
        // Without a known boot nothing is stamped.
        let unknown = Journal::open_for(dir.path(), None).unwrap();
        unknown.write(&record("f-2", 20)).unwrap();
        let text = std::fs::read_to_string(journal.dir().join("f-2.json")).unwrap();
        assert!(!text.contains("boot_id"), "{text}");
    }

    #[test]
    fn records_of_an_earlier_boot_are_dropped_and_this_boots_kept() {
        let dir = tempfile::tempdir().unwrap();
        let this_boot = boot("boot-b");
        Journal::open_for(dir.path(), Some(boot("boot-a")))
            .unwrap()
            .write(&record("f-before", 10))
            .unwrap();
        let journal = Journal::open_for(dir.path(), Some(this_boot.clone())).unwrap();
        journal.write(&record("f-now", 20)).unwrap();
        // An older agent's record (no stamp): by when it was last written.
        let unstamped = |id: &str, written: SystemTime| {
            let path = journal.dir().join(format!("{id}.json"));
            std::fs::write(&path, serde_json::to_vec(&record(id, 5)).unwrap()).unwrap();
            std::fs::File::options()
                .write(true)
                .open(&path)
                .unwrap()
                .set_modified(written)
                .unwrap();
        };
        unstamped(
            "f-old-agent-earlier",
            this_boot.started - std::time::Duration::from_secs(60),
        );
        unstamped(
            "f-old-agent-now",
            this_boot.started + std::time::Duration::from_secs(60),
        );
        std::fs::write(journal.dir().join("f-bad.json"), b"{not json").unwrap();

        assert_eq!(journal.drop_records_of_earlier_boots(), 2);
        let left: Vec<String> = journal
            .records()
            .unwrap()
            .into_iter()
            .filter_map(|r| r.ok().map(|r| r.id))
            .collect();
        assert_eq!(left, ["f-old-agent-now", "f-now"]);
        assert!(
            journal.dir().join("f-bad.json").exists(),
            "unreadable ones are not this method's"
        );
        // A journal that does not know its boot drops nothing.
        let unknown = Journal::open_for(dir.path(), None).unwrap();
        Journal::open_for(dir.path(), Some(boot("boot-a")))
            .unwrap()
            .write(&record("f-a", 30))
            .unwrap();
        assert_eq!(unknown.drop_records_of_earlier_boots(), 0);
        assert_eq!(journal.drop_records_of_earlier_boots(), 1);
    }

    #[test]
    fn this_boot_is_read_from_the_kernel() {
        let boot = Boot::current().unwrap();
        // A UUID, as the kernel prints it.
        assert_eq!(boot.id.len(), 36, "{boot:?}");
        assert!(boot.started < SystemTime::now());
    }

    #[test]
    fn an_undo_is_stored_as_its_kind_wrote_it_and_read_back_in_that_form() {
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        #[serde(tag = "action", rename_all = "snake_case")]
        enum Form {
            Nothing,
            Count { n: u32 },
        }
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path()).unwrap();
        let mut written = record("f-1", 10);
        written.undo = UndoRecord::of(&Form::Count { n: 3 });
        journal.write(&written).unwrap();
        let text = fs::read_to_string(journal.dir().join("f-1.json")).unwrap();
        let stored: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            stored["undo"],
            serde_json::json!({"action": "count", "n": 3}),
            "{text}"
        );
        let read = journal.records().unwrap().remove(0).unwrap();
        assert_eq!(read.undo.read::<Form>(), Ok(Form::Count { n: 3 }));
        assert_eq!(
            UndoRecord::of(&Form::Nothing).read::<Form>(),
            Ok(Form::Nothing)
        );
        let err = read.undo.read::<u32>().unwrap_err();
        assert!(err.contains(r#"{"action":"count","n":3}"#), "{err}");
    }
}
