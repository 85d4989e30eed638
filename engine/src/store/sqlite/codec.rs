//! Event data in the SQLite file: JSON text, or a zstd frame made with a
//! dictionary trained on the file's own events (ADR 18).
//!
//! An event's JSON is about 140 bytes, too little for a compressor to find
//! repeats in; against a dictionary of what this log's events usually say
//! (keys, step names, timestamps' common prefix) it shrinks to about a
//! quarter. The frame names its dictionary (zstd's dictionary id, which is
//! also the row's key in `dictionaries`), so a frame is read with the stock
//! tool too: `zstd -d -D dictionary.bin`.
//!
//! Until the log holds [`Compression::first_training`] events there is no
//! dictionary and events are written as text; a new dictionary is trained,
//! from the newest events, each time the log grows [`Compression::growth`]-fold,
//! so the dictionary follows what the workflows write. Older frames
//! keep naming the dictionary they were made with; dictionaries are never
//! removed.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, RwLock};

use rusqlite::Connection;
use tokio::sync::mpsc;
use zstd::zstd_safe::{self, CCtx, CDict, DCtx, DDict};

use super::Job;
use crate::store::StoreError;

/// The first four bytes of every zstd frame; JSON text never starts with them.
const FRAME_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
/// zstd's default level: at these sizes higher levels gain a few bytes for much more CPU.
const LEVEL: i32 = 3;

/// When dictionaries are trained, and how big they are.
#[derive(Debug, Clone, Copy)]
pub struct Compression {
    /// The log position at which the first dictionary is trained.
    pub first_training: u64,
    /// A further dictionary is trained when the log is this many times as
    /// long as when the newest was.
    pub growth: u64,
    /// The newest events trained on.
    pub samples: usize,
    /// The most bytes a dictionary takes.
    pub dictionary_size: usize,
}

impl Default for Compression {
    fn default() -> Self {
        Self {
            first_training: 4_096,
            growth: 8,
            samples: 16_384,
            dictionary_size: 8_192,
        }
    }
}

/// A dictionary as the file keeps it.
pub(super) struct Stored {
    pub id: u32,
    /// How long the log was when it was trained.
    pub position: u64,
    pub bytes: Vec<u8>,
}

/// Every dictionary of the file, for reading; shared by the writer (which
/// adds the ones it trains before it writes a frame with them) and readers.
#[derive(Default)]
pub struct Dictionaries(RwLock<HashMap<u32, Arc<DDict<'static>>>>);

thread_local! {
    static DECOMPRESSOR: std::cell::RefCell<DCtx<'static>> = std::cell::RefCell::new(DCtx::create());
}

fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("event data: {what}"))
}

impl Dictionaries {
    /// The dictionaries stored in the file, oldest first.
    pub(super) fn stored(conn: &Connection) -> Result<Vec<Stored>, StoreError> {
        let mut st = conn
            .prepare_cached("SELECT id, position, data FROM dictionaries ORDER BY position, id")
            .map_err(super::error)?;
        let rows = st
            .query_map([], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get(2)?))
            })
            .map_err(super::error)?;
        rows.map(|r| {
            let (id, position, bytes) = r.map_err(super::error)?;
            Ok(Stored {
                id: u32::try_from(id).map_err(corrupt)?,
                position: position as u64,
                bytes,
            })
        })
        .collect()
    }

    /// Loads the dictionaries of the file that are not known yet.
    pub(super) fn refresh(&self, conn: &Connection) -> Result<(), StoreError> {
        for d in Self::stored(conn)? {
            self.add(d.id, &d.bytes);
        }
        Ok(())
    }

    pub(super) fn add(&self, id: u32, bytes: &[u8]) {
        let mut known = self.0.write().unwrap_or_else(|p| p.into_inner());
        known
            .entry(id)
            .or_insert_with(|| Arc::new(DDict::create(bytes)));
    }

    fn get(&self, id: u32) -> Option<Arc<DDict<'static>>> {
        let known = self.0.read().unwrap_or_else(|p| p.into_inner());
        known.get(&id).cloned()
    }

    /// Whether reading `data` needs a dictionary not loaded yet (one another
    /// process trained after this one opened the file).
    pub(super) fn misses(&self, data: &[u8]) -> bool {
        frame_dictionary(data).is_some_and(|id| self.get(id.get()).is_none())
    }

    /// The event's JSON, as written.
    pub(super) fn decode(&self, data: &[u8]) -> Result<serde_json::Value, StoreError> {
        if !data.starts_with(&FRAME_MAGIC) {
            return serde_json::from_slice(data).map_err(corrupt);
        }
        let size = match zstd_safe::get_frame_content_size(data) {
            Ok(Some(n)) if n <= 64 << 20 => n as usize,
            _ => return Err(corrupt("a compressed event without a plausible size")),
        };
        let id = frame_dictionary(data).ok_or_else(|| corrupt("a frame without a dictionary"))?;
        let dict = self
            .get(id.get())
            .ok_or_else(|| corrupt(format_args!("dictionary {id} is not in the file")))?;
        let mut text = Vec::with_capacity(size);
        DECOMPRESSOR
            .with(|d| {
                d.borrow_mut()
                    .decompress_using_ddict(&mut text, data, &dict)
            })
            .map_err(|code| corrupt(zstd_safe::get_error_name(code)))?;
        serde_json::from_slice(&text).map_err(corrupt)
    }
}

fn frame_dictionary(data: &[u8]) -> Option<NonZeroU32> {
    if data.starts_with(&FRAME_MAGIC) {
        zstd_safe::get_dict_id_from_frame(data)
    } else {
        None
    }
}

/// The writer's side: compresses with the newest dictionary.
pub(super) struct Encoder {
    cctx: CCtx<'static>,
    dict: CDict<'static>,
}

/// How one event's data is written.
pub(super) enum Encoded {
    Text(String),
    Frame(Vec<u8>),
}

impl Encoder {
    pub(super) fn new(bytes: &[u8]) -> Self {
        Self {
            cctx: CCtx::create(),
            dict: CDict::create(bytes, LEVEL),
        }
    }

    /// The frame for `text`, or the text itself when the frame is no smaller.
    pub(super) fn encode(&mut self, text: String) -> Encoded {
        let mut frame = Vec::with_capacity(zstd_safe::compress_bound(text.len()));
        match self
            .cctx
            .compress_using_cdict(&mut frame, text.as_bytes(), &self.dict)
        {
            Ok(_) if frame.len() < text.len() => Encoded::Frame(frame),
            _ => Encoded::Text(text),
        }
    }
}

/// Trains a dictionary on `samples` (event data as written) and numbers it
/// `id`; its bytes, or why there is none (too few or too uniform samples).
///
/// zstd would give it a random 32-bit id, which every frame repeats in 4
/// bytes; a small one takes 1 (ids are private to the file, so no registry
/// of public ids applies).
pub(super) fn train(samples: &[Vec<u8>], size: usize, id: u32) -> Result<Vec<u8>, String> {
    let mut bytes = zstd::dict::from_samples(samples, size).map_err(|e| e.to_string())?;
    // the format: a 4-byte magic number, then the id (little-endian)
    if zstd_safe::get_dict_id_from_dict(&bytes).is_none() || bytes.len() < 8 {
        return Err("the trained dictionary is not in zstd's format".into());
    }
    bytes[4..8].copy_from_slice(&id.to_le_bytes());
    Ok(bytes)
}

/// Loads the newest `count` events' data as JSON text, for training.
pub(super) fn samples(
    conn: &Connection,
    dicts: &Dictionaries,
    count: usize,
) -> Result<Vec<Vec<u8>>, StoreError> {
    let mut st = conn
        .prepare_cached("SELECT data FROM events ORDER BY position DESC LIMIT ?1")
        .map_err(super::error)?;
    let mut rows = st.query([count as i64]).map_err(super::error)?;
    let mut samples = Vec::with_capacity(count);
    while let Some(row) = rows.next().map_err(super::error)? {
        let data = row
            .get_ref(0)
            .map_err(super::error)?
            .as_bytes()
            .map_err(corrupt)?;
        samples.push(if data.starts_with(&FRAME_MAGIC) {
            serde_json::to_vec(&dicts.decode(data)?).unwrap_or_default()
        } else {
            data.to_vec()
        });
    }
    Ok(samples)
}

/// The writer's compression: its newest dictionary, and when the next is due.
pub(super) struct Codec {
    pub(super) encoder: Option<Encoder>,
    /// The id the next dictionary gets.
    pub(super) next_id: u32,
    /// The log position at which the next dictionary is trained.
    pub(super) due: u64,
    pub(super) training: bool,
    pub(super) compression: Compression,
    pub(super) dicts: Arc<Dictionaries>,
    pub(super) reads: super::SqliteReader,
    pub(super) queue: mpsc::WeakSender<Job>,
    /// Where training runs: the writer's thread is not one of the runtime's.
    pub(super) runtime: tokio::runtime::Handle,
}

impl Codec {
    pub(super) fn encode(&mut self, text: String) -> Encoded {
        match &mut self.encoder {
            Some(e) => e.encode(text),
            None => Encoded::Text(text),
        }
    }

    /// Trains a dictionary off the writer (a read and a few hundred ms of
    /// CPU on a blocking thread) when the log has grown enough; the result
    /// comes back as a [`Job::Trained`]. The task ends by itself and does
    /// not keep the writer alive.
    pub(super) fn train_if_due(&mut self, head: u64) {
        if self.training || head < self.due {
            return;
        }
        self.training = true;
        let (reads, queue, c, id) = (
            self.reads.clone(),
            self.queue.clone(),
            self.compression,
            self.next_id,
        );
        self.runtime.spawn(async move {
            let began = std::time::Instant::now();
            let read = reads.run(move |conn, dicts| samples(conn, dicts, c.samples));
            let dictionary = match read.await {
                Ok(samples) => {
                    tokio::task::spawn_blocking(move || train(&samples, c.dictionary_size, id))
                        .await
                        .unwrap_or_else(|e| Err(e.to_string()))
                }
                Err(e) => Err(e.to_string()),
            };
            if let Some(q) = queue.upgrade() {
                let _ = q
                    .send(Job::Trained {
                        id,
                        position: head,
                        took: began.elapsed(),
                        dictionary,
                    })
                    .await;
            }
        });
    }

    /// Keeps a trained dictionary: stored first, then readable, then used.
    /// Whether there was one to keep.
    pub(super) fn trained(
        &mut self,
        conn: &Connection,
        id: u32,
        position: u64,
        dictionary: Result<Vec<u8>, String>,
    ) -> bool {
        self.training = false;
        let kept = dictionary.and_then(|bytes| {
            conn.execute(
                "INSERT INTO dictionaries (id, position, data) VALUES (?1, ?2, ?3)",
                rusqlite::params![id, position as i64, bytes],
            )
            .map(|_| bytes)
            .map_err(|e| e.to_string())
        });
        match kept {
            Ok(bytes) => {
                self.next_id = id + 1;
                self.dicts.add(id, &bytes);
                self.encoder = Some(Encoder::new(&bytes));
                self.due = position.saturating_mul(self.compression.growth);
                true
            }
            Err(e) => {
                // events stay as they are written now; try again a little later
                self.due = position.saturating_add(self.compression.first_training);
                tracing::warn!(position, "no event data dictionary: {e}");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(i: usize) -> Vec<u8> {
        let name = ["reserve", "pay", "ship"][i % 3];
        serde_json::json!({
            "at": format!("2026-11-30T13:57:{:02}.{:03}Z", i % 60, i % 1000),
            "attempt": 1,
            "name": name,
            "output": {"order_id": format!("o-{i}"), "reservation_id": format!("res-{}", i * 7)},
            "step": i % 3,
        })
        .to_string()
        .into_bytes()
    }

    #[test]
    fn a_frame_reads_back_as_the_text_it_was_made_from_and_is_smaller() {
        let samples: Vec<_> = (0..2000).map(sample).collect();
        let id = 7;
        let bytes = train(&samples, 4096, id).unwrap();
        let mut encoder = Encoder::new(&bytes);
        let dicts = Dictionaries::default();
        dicts.add(id, &bytes);
        let text = String::from_utf8(sample(4242)).unwrap();
        let Encoded::Frame(frame) = encoder.encode(text.clone()) else {
            panic!("not compressed")
        };
        assert!(
            frame.len() * 2 < text.len(),
            "{} of {}",
            frame.len(),
            text.len()
        );
        assert_eq!(frame_dictionary(&frame).map(|d| d.get()), Some(id));
        // a one-byte id in the frame header: magic, descriptor, id, size, block
        assert_eq!(frame[5], 7);
        assert_eq!(
            dicts.decode(&frame).unwrap(),
            serde_json::from_str::<serde_json::Value>(&text).unwrap()
        );
        // text is read as text; a frame whose dictionary is unknown is an error, not a guess
        assert_eq!(dicts.decode(b"{\"a\":1}").unwrap()["a"], 1);
        let other = Dictionaries::default();
        assert!(other.misses(&frame));
        assert!(other
            .decode(&frame)
            .unwrap_err()
            .to_string()
            .contains("not in the file"));
    }

    #[test]
    fn what_does_not_shrink_stays_text() {
        let samples: Vec<_> = (0..2000).map(sample).collect();
        let bytes = train(&samples, 4096, 1).unwrap();
        assert!(matches!(Encoder::new(&bytes).encode("1".into()), Encoded::Text(t) if t == "1"));
    }
}
