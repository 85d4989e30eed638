//! Archives of removed instances: what retention takes out of the store,
//! kept in files a person can read without sagaflow.
//!
//! One file per day the instances ended (UTC), `sagaflow-YYYY-MM-DD.jsonl.gz`:
//! gzip-compressed JSON lines, one line per instance with its whole history.
//! Each batch of removals appends a gzip member of its own (a file of several
//! members is still one gzip file: `zcat` and `gzip -d` read it whole) and is
//! synced to disk before the store removes anything. An instance archived by
//! a batch that crashed before the removal is archived again by the next;
//! readers keep the last line of each instance.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::saga::Timestamp;
use crate::store::RecordedEvent;

/// One removed instance and its history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArchivedInstance {
    pub instance_id: Uuid,
    pub workflow: String,
    pub finished_at: Timestamp,
    pub removed_at: Timestamp,
    pub events: Vec<ArchivedEvent>,
}

/// An event as it was stored (the store's own names for its parts).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArchivedEvent {
    pub revision: u64,
    pub position: u64,
    #[serde(rename = "type")]
    pub event_type: String,
    pub schema_version: u16,
    pub data: Value,
    pub recorded_at: Timestamp,
}

impl From<RecordedEvent> for ArchivedEvent {
    fn from(e: RecordedEvent) -> Self {
        Self {
            revision: e.revision,
            position: e.position,
            event_type: e.event_type,
            schema_version: e.schema_version,
            data: e.data.into_value(),
            recorded_at: e.recorded_at,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("{path}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}, line {line}: not an archived instance")]
    Format {
        path: PathBuf,
        line: usize,
        source: serde_json::Error,
    },
}

/// The file of the instances that ended on `at`'s day (UTC).
pub fn file_for(dir: &Path, at: Timestamp) -> PathBuf {
    let day: String = at.to_string().chars().take(10).collect();
    dir.join(format!("sagaflow-{day}.jsonl.gz"))
}

/// Appends `instances` to the files of their days under `dir` (made if
/// missing), synced to disk; the files written.
pub fn append(dir: &Path, instances: &[ArchivedInstance]) -> Result<Vec<PathBuf>, ArchiveError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ArchiveError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let mut by_file: BTreeMap<PathBuf, Vec<&ArchivedInstance>> = BTreeMap::new();
    for i in instances {
        by_file
            .entry(file_for(dir, i.finished_at))
            .or_default()
            .push(i);
    }
    for (path, group) in &by_file {
        let mut lines = Vec::new();
        for i in group {
            // a struct of strings, numbers and JSON values always serialises
            serde_json::to_writer(&mut lines, i).expect("an archived instance serialises");
            lines.push(b'\n');
        }
        let existed = path.exists();
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io(path))?;
        let mut gz = flate2::write::GzEncoder::new(file, flate2::Compression::default());
        gz.write_all(&lines).map_err(io(path))?;
        let file = gz.finish().map_err(io(path))?;
        file.sync_all().map_err(io(path))?;
        if !existed {
            // the new name must survive a crash too
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io(dir))?;
        }
    }
    Ok(by_file.into_keys().collect())
}

/// The instances in an archive file, each once (its last line), in the order
/// they were first archived.
pub fn read(path: &Path) -> Result<Vec<ArchivedInstance>, ArchiveError> {
    let file = std::fs::File::open(path).map_err(|source| ArchiveError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let reader = BufReader::new(flate2::read::MultiGzDecoder::new(file));
    let mut order: Vec<Uuid> = Vec::new();
    let mut latest: std::collections::HashMap<Uuid, ArchivedInstance> = Default::default();
    for (n, line) in reader.lines().enumerate() {
        let line = line.map_err(|source| ArchiveError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        if line.trim().is_empty() {
            continue;
        }
        let i: ArchivedInstance =
            serde_json::from_str(&line).map_err(|source| ArchiveError::Format {
                path: path.to_path_buf(),
                line: n + 1,
                source,
            })?;
        if !latest.contains_key(&i.instance_id) {
            order.push(i.instance_id);
        }
        latest.insert(i.instance_id, i);
    }
    Ok(order
        .into_iter()
        .filter_map(|id| latest.remove(&id))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(n: u128, finished: u64) -> ArchivedInstance {
        ArchivedInstance {
            instance_id: Uuid::from_u128(n),
            workflow: "order".into(),
            finished_at: Timestamp(finished),
            removed_at: Timestamp(finished + 1),
            events: vec![ArchivedEvent {
                revision: 0,
                position: 7,
                event_type: "SagaStarted".into(),
                schema_version: 1,
                data: serde_json::json!({ "n": n as u64 }),
                recorded_at: Timestamp(finished),
            }],
        }
    }

    #[test]
    fn batches_append_to_the_file_of_their_day_and_read_back_once_each() {
        let dir = std::env::temp_dir().join(format!("sagaflow-archive-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        // 2026-11-29 and 2026-11-30 (UTC)
        let (day1, day2) = (1_795_910_400_000, 1_795_996_800_000);
        let first = append(&dir, &[instance(1, day1), instance(2, day2)]).unwrap();
        assert_eq!(first.len(), 2);
        // a batch that crashed before the removal archives instance 1 again
        let second = append(&dir, &[instance(3, day1 + 5), instance(1, day1)]).unwrap();
        assert_eq!(second, vec![dir.join("sagaflow-2026-11-29.jsonl.gz")]);
        let got = read(&second[0]).unwrap();
        let ids: Vec<u128> = got.iter().map(|i| i.instance_id.as_u128()).collect();
        assert_eq!(ids, [1, 3]);
        assert_eq!(got[0], instance(1, day1));
        let other = read(&dir.join("sagaflow-2026-11-30.jsonl.gz")).unwrap();
        assert_eq!(other, vec![instance(2, day2)]);
        // not an archive: a clear error naming the file
        std::fs::write(dir.join("x.gz"), b"plain").unwrap();
        let err = read(&dir.join("x.gz")).unwrap_err().to_string();
        assert!(err.contains("x.gz"), "{err}");
    }
}
