//! KV snapshots on disk: a conversation's cache kept beside the database, so that after a
//! restart, a model reload or the in-memory LRU dropping it, the next turn reads the
//! conversation's keys and values back instead of prefilling thousands of tokens again.
//!
//! One file per conversation, `<folder>/<hash of the key>.kv`, little-endian:
//!
//! ```text
//! header   magic "SMOLKV\0\0", version u32, model fingerprint [32 bytes],
//!          layers u32, kv heads u32, head dim u32, element type u32 (1 F16, 2 F32),
//!          tokens u32, key length u32, key bytes, token ids u32 × tokens,
//!          CRC-32 of everything before it
//! layers   per layer: keys then values as `KvCache::layer_bytes` gives them, then their CRC-32
//! ```
//!
//! Never wrong output: a file's size is known from its header, so a truncated file is refused
//! before any data is read; each layer's CRC catches a flipped bit; the model's fingerprint and
//! the cache layout must match; the key must be the conversation's. Anything else is ignored
//! and the prompt is prefilled as without a snapshot. A file is written as `*.tmp` and renamed
//! when whole, so a process killed while writing leaves only a temporary file, which the next
//! start removes. The data is not synced to the device before the rename: after a power cut a
//! renamed file whose data never reached the disk fails its CRC and is ignored like any other.

use crate::model::KvCache;
use candle_core::DType;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

const MAGIC: &[u8; 8] = b"SMOLKV\0\0";
const VERSION: u32 = 1;
const EXTENSION: &str = "kv";
const TEMP_EXTENSION: &str = "tmp";
/// Longest conversation key a snapshot records.
const MAX_KEY: usize = 256;

/// Where snapshots go and how much disk they may take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotOptions {
    /// The folder (created when needed).
    pub dir: PathBuf,
    /// Most bytes all snapshots together may take; the least recently used go first.
    pub budget_bytes: u64,
}

/// Why a snapshot was not used.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The file is not a snapshot this version reads.
    #[error("not a snapshot of this version")]
    Format,
    /// Made with another model file (or the same file changed).
    #[error("made with another model")]
    OtherModel,
    /// Made for a cache of another shape or element type.
    #[error("made for another cache layout")]
    OtherLayout,
    /// Holds another conversation (two keys with one hash).
    #[error("holds another conversation")]
    OtherConversation,
    /// Shorter or longer than its header says.
    #[error("truncated: {actual} bytes where {expected} were expected")]
    Truncated {
        /// Size the header implies.
        expected: u64,
        /// Size on disk.
        actual: u64,
    },
    /// A checksum did not match.
    #[error("corrupt ({0} checksum)")]
    Corrupt(String),
    /// The cache refused the data.
    #[error("cannot restore: {0}")]
    Restore(String),
}

/// What a save did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Saved {
    /// Written, this many bytes.
    Written(u64),
    /// Stopped because other work arrived; nothing was kept of it.
    Abandoned,
    /// Larger than the whole budget, so not written.
    TooLarge,
    /// The cache was empty.
    Empty,
}

/// The snapshots of one model's caches.
#[derive(Debug)]
pub struct Snapshots {
    opts: SnapshotOptions,
    fingerprint: [u8; 32],
}

impl Snapshots {
    /// Snapshots in `opts.dir` for the model with this fingerprint; removes the temporary
    /// files of writes that never finished.
    pub fn new(opts: SnapshotOptions, fingerprint: [u8; 32]) -> Self {
        for (path, _, _) in files(&opts.dir, TEMP_EXTENSION) {
            let _ = std::fs::remove_file(path);
        }
        Self { opts, fingerprint }
    }

    /// The file of a conversation.
    pub fn path(&self, key: &str) -> PathBuf {
        file_in(&self.opts.dir, key)
    }

    /// Writes `cache` as the conversation's snapshot (then evicts down to the budget).
    /// `keep_going` is asked before each layer; when it says no the write is abandoned.
    pub fn save(
        &self,
        key: &str,
        cache: &KvCache,
        keep_going: &dyn Fn() -> bool,
    ) -> Result<Saved, SnapshotError> {
        if cache.is_empty() || key.len() > MAX_KEY {
            return Ok(Saved::Empty);
        }
        let n = cache.len();
        let head = self.header(key, cache, n)?;
        let size = file_size(head.len(), cache, n);
        if size > self.opts.budget_bytes {
            return Ok(Saved::TooLarge);
        }
        let path = self.path(key);
        let temp = path.with_extension(TEMP_EXTENSION);
        let io = |source| SnapshotError::Io {
            path: temp.clone(),
            source,
        };
        std::fs::create_dir_all(&self.opts.dir).map_err(io)?;
        let written = (|| -> Result<bool, SnapshotError> {
            let mut w = BufWriter::with_capacity(1 << 20, File::create(&temp).map_err(io)?);
            w.write_all(&head).map_err(io)?;
            for il in 0..cache.n_layers() {
                if !keep_going() {
                    return Ok(false);
                }
                let bytes = cache
                    .layer_bytes(il, n)
                    .map_err(|e| SnapshotError::Restore(e.to_string()))?;
                w.write_all(&bytes).map_err(io)?;
                w.write_all(&crc32fast::hash(&bytes).to_le_bytes())
                    .map_err(io)?;
            }
            w.flush().map_err(io)?;
            Ok(true)
        })();
        match written {
            Ok(true) => {}
            Ok(false) => {
                let _ = std::fs::remove_file(&temp);
                return Ok(Saved::Abandoned);
            }
            Err(e) => {
                let _ = std::fs::remove_file(&temp);
                return Err(e);
            }
        }
        std::fs::rename(&temp, &path).map_err(|source| SnapshotError::Io {
            path: path.clone(),
            source,
        })?;
        self.evict();
        Ok(Saved::Written(size))
    }

    /// Fills an empty `cache` from the conversation's snapshot with the longest start it
    /// shares with `prompt`; returns the tokens restored (0 when there is no snapshot or it
    /// shares nothing). On an error the cache is left empty and the caller prefills.
    pub fn load(
        &self,
        key: &str,
        prompt: &[u32],
        cache: &mut KvCache,
    ) -> Result<usize, SnapshotError> {
        let path = self.path(key);
        let io = |source| SnapshotError::Io {
            path: path.clone(),
            source,
        };
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(io(e)),
        };
        let actual = file.metadata().map_err(io)?.len();
        let mut r = BufReader::with_capacity(1 << 20, file);
        let (tokens, head_len) = self.read_header(&mut r, key, cache)?;
        let expected = file_size(head_len, cache, tokens.len());
        if actual != expected {
            return Err(SnapshotError::Truncated { expected, actual });
        }
        let shared = tokens
            .iter()
            .zip(prompt)
            .take_while(|(a, b)| a == b)
            .count();
        if shared == 0 {
            return Ok(0);
        }
        let per_layer = cache.bytes_per_layer(tokens.len());
        let mut corrupt = None;
        let restored = cache.restore(&prompt[..shared], tokens.len(), |il| {
            let mut bytes = vec![0u8; per_layer];
            let mut sum = [0u8; 4];
            r.read_exact(&mut bytes)
                .and_then(|_| r.read_exact(&mut sum))
                .map_err(candle_core::Error::wrap)?;
            if crc32fast::hash(&bytes) != u32::from_le_bytes(sum) {
                corrupt = Some(il);
                candle_core::bail!("layer {il} is corrupt");
            }
            Ok(bytes)
        });
        match (restored, corrupt) {
            (Ok(()), _) => {}
            (Err(_), Some(il)) => return Err(SnapshotError::Corrupt(format!("layer {il}"))),
            (Err(e), None) => return Err(SnapshotError::Restore(e.to_string())),
        }
        // Counts as use for the least-recently-used order.
        if let Ok(f) = File::options().write(true).open(&path) {
            let _ = f.set_modified(SystemTime::now());
        }
        Ok(shared)
    }

    /// Deletes every snapshot in `dir` made with the model of this fingerprint (when the model
    /// is removed); returns how many.
    pub fn remove_for_model(dir: &Path, fingerprint: &[u8; 32]) -> usize {
        files(dir, EXTENSION)
            .into_iter()
            .filter(|(path, _, _)| {
                let mut head = [0u8; 44];
                File::open(path)
                    .and_then(|mut f| f.read_exact(&mut head))
                    .is_ok_and(|_| &head[..8] == MAGIC && head[12..44] == fingerprint[..])
            })
            .filter(|(path, _, _)| std::fs::remove_file(path).is_ok())
            .count()
    }

    /// Deletes every snapshot in `dir` made with the model file at `model` (before the file is
    /// removed: a model downloaded anew has another fingerprint, so they could never be used).
    pub fn remove_for_model_file(dir: &Path, model: &Path) -> usize {
        match crate::model::GgufFile::open(model) {
            Ok(gguf) => Self::remove_for_model(dir, &gguf.fingerprint(gguf.tensors())),
            Err(_) => 0,
        }
    }

    /// Deletes a conversation's snapshot, if any.
    pub fn remove(&self, key: &str) {
        remove_in(&self.opts.dir, key);
    }

    /// Deletes the least recently used snapshots until the rest fit the budget.
    pub fn evict(&self) {
        let mut all = files(&self.opts.dir, EXTENSION);
        all.sort_by_key(|(_, _, used)| std::cmp::Reverse(*used));
        let mut total = 0u64;
        for (path, size, _) in all {
            total += size;
            if total > self.opts.budget_bytes {
                tracing::debug!(path = %path.display(), "snapshot evicted");
                let _ = std::fs::remove_file(path);
            }
        }
    }

    fn header(&self, key: &str, cache: &KvCache, n: usize) -> Result<Vec<u8>, SnapshotError> {
        let (heads, head_dim) = cache.row_shape();
        let mut h = Vec::with_capacity(64 + key.len() + 4 * n);
        h.extend_from_slice(MAGIC);
        h.extend_from_slice(&VERSION.to_le_bytes());
        h.extend_from_slice(&self.fingerprint);
        for v in [
            cache.n_layers(),
            heads,
            head_dim,
            dtype_code(cache.dtype())? as usize,
            n,
            key.len(),
        ] {
            h.extend_from_slice(&(v as u32).to_le_bytes());
        }
        h.extend_from_slice(key.as_bytes());
        for t in cache.tokens() {
            h.extend_from_slice(&t.to_le_bytes());
        }
        let sum = crc32fast::hash(&h);
        h.extend_from_slice(&sum.to_le_bytes());
        Ok(h)
    }

    /// Reads and checks a header; returns the token ids and the header's length.
    fn read_header(
        &self,
        r: &mut impl Read,
        key: &str,
        cache: &KvCache,
    ) -> Result<(Vec<u32>, usize), SnapshotError> {
        let mut fixed = [0u8; 8 + 4 + 32 + 6 * 4];
        r.read_exact(&mut fixed)
            .map_err(|_| SnapshotError::Format)?;
        let word = |at: usize| u32::from_le_bytes(fixed[at..at + 4].try_into().expect("4 bytes"));
        if &fixed[..8] != MAGIC || word(8) != VERSION {
            return Err(SnapshotError::Format);
        }
        let (heads, head_dim) = cache.row_shape();
        let fields: Vec<usize> = (0..6).map(|i| word(44 + 4 * i) as usize).collect();
        let (n, key_len) = (fields[4], fields[5]);
        if key_len > MAX_KEY {
            return Err(SnapshotError::Format);
        }
        if n > cache.max_len() {
            return Err(SnapshotError::OtherLayout);
        }
        let mut rest = vec![0u8; key_len + 4 * n + 4];
        r.read_exact(&mut rest)
            .map_err(|_| SnapshotError::Truncated {
                expected: (fixed.len() + rest.len()) as u64,
                actual: 0,
            })?;
        let (body, sum) = rest.split_at(rest.len() - 4);
        let mut h = crc32fast::Hasher::new();
        h.update(&fixed);
        h.update(body);
        if h.finalize() != u32::from_le_bytes(sum.try_into().expect("4 bytes")) {
            return Err(SnapshotError::Corrupt("header".into()));
        }
        if fixed[12..44] != self.fingerprint {
            return Err(SnapshotError::OtherModel);
        }
        if fields[..4]
            != [
                cache.n_layers(),
                heads,
                head_dim,
                dtype_code(cache.dtype())? as usize,
            ]
        {
            return Err(SnapshotError::OtherLayout);
        }
        if &body[..key_len] != key.as_bytes() {
            return Err(SnapshotError::OtherConversation);
        }
        let tokens = body[key_len..]
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect();
        Ok((tokens, fixed.len() + rest.len()))
    }
}

/// The file of conversation `key`'s snapshot in `dir`.
pub fn file_in(dir: &Path, key: &str) -> PathBuf {
    let digest = Sha256::digest(key.as_bytes());
    let name: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    dir.join(name).with_extension(EXTENSION)
}

/// Deletes conversation `key`'s snapshot in `dir`, if any (also when no engine runs).
pub fn remove_in(dir: &Path, key: &str) {
    let _ = std::fs::remove_file(file_in(dir, key));
}

fn dtype_code(dtype: DType) -> Result<u32, SnapshotError> {
    match dtype {
        DType::F16 => Ok(1),
        DType::F32 => Ok(2),
        _ => Err(SnapshotError::OtherLayout),
    }
}

/// The whole file's size for a header of `head` bytes and `n` tokens.
fn file_size(head: usize, cache: &KvCache, n: usize) -> u64 {
    (head + cache.n_layers() * (cache.bytes_per_layer(n) + 4)) as u64
}

/// Files in `dir` with `extension`: path, size, last modified.
fn files(dir: &Path, extension: &str) -> Vec<(PathBuf, u64, SystemTime)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == extension))
        .filter_map(|e| {
            let m = e.metadata().ok()?;
            Some((e.path(), m.len(), m.modified().ok()?))
        })
        .collect()
}
