//! The model's Q4_K, Q6_K and Q8_0 weights in the interleaved layout, kept in a file beside the model.
//!
//! The first load on a CPU that can use [`interleaved`] rewrites every eligible matrix
//! (1.7 GB for SmolLM3-3B Q4_K_M, a few seconds) into `<model>.x8`; later loads map that file
//! and take the matrices from it, so the original bytes are never read and the model still
//! costs one copy of its weights in memory. A prepared file that does not match its model (a
//! model replaced or edited in place, a file from another version) is rebuilt; one that cannot
//! be written (a read-only folder, a full disk) leaves the model on the GGUF layout, which is
//! slower to prefill but gives the same results.
//!
//! Header (little-endian): magic, version, the model's fingerprint, the entry count, then per
//! entry its name, shape and byte range; data starts on a 4096-byte boundary.

use super::gguf::{GgmlType, GgufFile, TensorInfo};
use super::kernels::interleaved::{self, ROWS};
use super::kernels::Kernels;
use memmap2::Mmap;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const MAGIC: &[u8; 8] = b"SMOLX8\0\0";
const VERSION: u32 = 2;
const ALIGN: usize = 4096;

/// Free space a build leaves on the disk, at least.
const HEADROOM: u64 = 1 << 30;

/// Where each tensor's bytes lie in the file: (offset, size).
type Places = Vec<(usize, usize)>;

/// Why a prepared file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PreparedError {
    /// Reading or writing the file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A tensor could not be rewritten.
    #[error("{0}")]
    Repack(#[from] interleaved::RepackError),
    /// No folder to keep the file in.
    #[error("no writable folder for the prepared weights")]
    NoFolder,
}

/// The interleaved weights of one model, memory-mapped.
#[derive(Debug, Clone)]
pub struct Prepared {
    map: Arc<Mmap>,
    entries: HashMap<String, (usize, usize)>,
    path: PathBuf,
    /// Whether this load wrote the file.
    pub built: bool,
}

impl Prepared {
    /// The interleaved bytes of a tensor, as (map, offset, size).
    pub fn get(&self, name: &str) -> Option<(Arc<Mmap>, usize, usize)> {
        let &(offset, size) = self.entries.get(name)?;
        Some((self.map.clone(), offset, size))
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many tensors it holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether it holds no tensor.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Whether prepared files were switched off (see [`super::options`]).
fn switched_off() -> bool {
    super::options::get().no_prepared
}

/// Whether models loaded on the process-wide kernel path use prepared files: the path computes
/// on the interleaved layout (every SIMD path does) and they are not switched off.
pub fn enabled() -> bool {
    !switched_off() && Kernels::default().interleaved()
}

/// The tensors worth interleaving: 2-D Q4_K, Q6_K and Q8_0 matrices whose rows group by
/// sixteen. The token embedding only where it is also the output projection (SmolLM3 ties
/// them; there it is 11 % of a decoding step's bytes): its lookups keep reading single rows of
/// the original.
pub fn eligible(g: &GgufFile) -> Vec<&TensorInfo> {
    let tied = g.tensor("output.weight").is_none();
    g.tensors()
        .iter()
        .filter(|t| {
            matches!(t.ty, GgmlType::Q4K | GgmlType::Q6K | GgmlType::Q8_0)
                && t.dims.len() == 2
                && (t.dims[1] as usize).is_multiple_of(ROWS)
                && (t.dims[0] as usize).is_multiple_of(256)
                && (t.name != "token_embd.weight" || tied)
        })
        .collect()
}

/// The file for a model: `<prepared_dir>/<name>.x8` if the options name a folder, else
/// `<model>.x8`.
fn beside(model: &Path) -> PathBuf {
    let mut name = model.file_name().unwrap_or_default().to_os_string();
    name.push(".x8");
    match &super::options::get().prepared_dir {
        Some(dir) => dir.join(name),
        None => model.with_file_name(name),
    }
}

/// Deletes the prepared files a model may have (beside it, in the options' folder, in
/// the cache folder): for when the model itself is deleted.
pub fn remove_for(model: &Path) {
    let mut plain = model.file_name().unwrap_or_default().to_os_string();
    plain.push(".x8");
    for path in [
        Some(model.with_file_name(plain)),
        Some(beside(model)),
        in_cache(model),
    ]
    .into_iter()
    .flatten()
    {
        let _ = std::fs::remove_file(path);
    }
}

/// The fallback in the user's cache folder, named by a digest of the model's full path.
fn in_cache(model: &Path) -> Option<PathBuf> {
    let dirs = directories::ProjectDirs::from("", "", "smollm3-bot")?;
    let full = std::fs::canonicalize(model).unwrap_or_else(|_| model.to_path_buf());
    let digest = Sha256::digest(full.to_string_lossy().as_bytes());
    let name: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    let name = format!("{name}.x8");
    Some(dirs.cache_dir().join("prepared").join(name))
}

/// The header for these tensors, and where each one's data goes.
fn layout(fp: &[u8; 32], tensors: &[&TensorInfo]) -> (Vec<u8>, Places) {
    let mut head = Vec::new();
    head.extend_from_slice(MAGIC);
    head.extend_from_slice(&VERSION.to_le_bytes());
    head.extend_from_slice(fp);
    head.extend_from_slice(&(tensors.len() as u32).to_le_bytes());
    let mut entry_bytes = 0;
    for t in tensors {
        entry_bytes += 2 + t.name.len() + 8 * 5;
    }
    let mut at = (head.len() + entry_bytes).next_multiple_of(ALIGN);
    let mut places = Vec::with_capacity(tensors.len());
    for t in tensors {
        head.extend_from_slice(&(t.name.len() as u16).to_le_bytes());
        head.extend_from_slice(t.name.as_bytes());
        for v in [
            u64::from(t.ty.to_u32()),
            t.dims[1],
            t.dims[0],
            at as u64,
            t.size as u64,
        ] {
            head.extend_from_slice(&v.to_le_bytes());
        }
        places.push((at, t.size));
        at = (at + t.size).next_multiple_of(ALIGN);
    }
    (head, places)
}

/// Maps `path` if it is a prepared file for exactly these tensors of this model.
fn open_existing(
    path: &Path,
    fp: &[u8; 32],
    tensors: &[&TensorInfo],
) -> Option<(Arc<Mmap>, Places)> {
    let file = std::fs::File::open(path).ok()?;
    // SAFETY: the file is ours and only ever replaced by rename, never written in place, so
    // the mapped bytes do not change under us.
    let map = unsafe { Mmap::map(&file) }.ok()?;
    let (head, places) = layout(fp, tensors);
    let end = places.last().map(|&(at, size)| at + size).unwrap_or(0);
    (map.len() >= end.max(head.len()) && map[..head.len()] == head[..]).then(|| {
        let map = Arc::new(map);
        read_ahead(&map);
        (map, places)
    })
}

/// Asks the kernel, from a thread of its own so loading does not wait, to bring the whole map
/// into the page cache. A warm cache does not stay whole: proactive reclaim (such as DAMON's
/// `pageout`) evicts pages of a model left idle, and the first prompt after loading then waited
/// on the disk for them, one fault at a time.
fn read_ahead(map: &Arc<Mmap>) {
    #[cfg(unix)]
    {
        let map = Arc::clone(map);
        let _ = std::thread::Builder::new()
            .name("read-ahead".into())
            .spawn(move || {
                let _ = map.advise(memmap2::Advice::WillNeed);
            });
    }
    #[cfg(not(unix))]
    let _ = map;
}

/// Writes the prepared file to `path` (through a temporary file and a rename).
fn build(
    g: &GgufFile,
    path: &Path,
    fp: &[u8; 32],
    tensors: &[&TensorInfo],
) -> Result<(), PreparedError> {
    let io = |source| PreparedError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let (head, places) = layout(fp, tensors);
    // Never fill the disk for a speed-up: the chat history and downloads need room too.
    let total = places.last().map(|&(at, size)| at + size).unwrap_or(0) as u64;
    if let Some(free) = path.parent().and_then(|d| fs4::available_space(d).ok()) {
        if free < total + HEADROOM {
            return Err(io(std::io::Error::new(
                std::io::ErrorKind::StorageFull,
                format!(
                    "{} MB needed and {} MB kept free, but only {} MB are free",
                    total >> 20,
                    HEADROOM >> 20,
                    free >> 20
                ),
            )));
        }
    }
    // Unique per process and per call: two loads of one model may build side by side, and
    // the rename makes whichever finishes last the file both then map.
    static BUILDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = BUILDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("x8.tmp{}-{n}", std::process::id()));
    let result = (|| -> Result<(), PreparedError> {
        let file = std::fs::File::create(&tmp).map_err(io)?;
        let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
        out.write_all(&head).map_err(io)?;
        let mut written = head.len();
        // Two tensors are rewritten at a time while the previous ones are written out.
        for pair in tensors.chunks(2).zip(places.chunks(2)) {
            let bufs: Vec<Result<Vec<u8>, PreparedError>> = std::thread::scope(|s| {
                let jobs: Vec<_> = pair
                    .0
                    .iter()
                    .map(|t| {
                        s.spawn(move || {
                            let mut buf = vec![0u8; t.size];
                            let repack = match t.ty {
                                GgmlType::Q4K => interleaved::repack_q4k,
                                GgmlType::Q8_0 => interleaved::repack_q8_0,
                                _ => interleaved::repack_q6k,
                            };
                            repack(
                                g.tensor_data(t),
                                t.dims[1] as usize,
                                t.dims[0] as usize,
                                &mut buf,
                            )?;
                            Ok(buf)
                        })
                    })
                    .collect();
                jobs.into_iter()
                    .map(|j| j.join().expect("repack thread panicked"))
                    .collect()
            });
            for (buf, &(at, _)) in bufs.into_iter().zip(pair.1) {
                let buf = buf?;
                out.write_all(&vec![0u8; at - written]).map_err(io)?;
                out.write_all(&buf).map_err(io)?;
                written = at + buf.len();
            }
        }
        let file = out.into_inner().map_err(|e| io(e.into_error()))?;
        file.sync_all().map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// The prepared weights for `g`: mapped from an existing file, or built now, beside the model
/// (or in the options' folder), else in the user's cache folder. A model reached through a
/// link (the Hugging Face cache's snapshots are links into its blobs) lies in a folder another
/// tool manages, so nothing is written beside it. `Ok(None)` when the model has nothing to
/// interleave or prepared files are switched off. The caller checks that its model's kernel
/// path uses the layout ([`Kernels::interleaved`]).
pub fn open_or_build(g: &GgufFile) -> Result<Option<Prepared>, PreparedError> {
    let model = g.path();
    let linked = std::fs::symlink_metadata(model).is_ok_and(|m| m.file_type().is_symlink());
    let own_folder = super::options::get().prepared_dir.is_some();
    let first = (own_folder || !linked).then(|| beside(model));
    let paths: Vec<PathBuf> = [first, in_cache(model)].into_iter().flatten().collect();
    open_or_build_at(g, &paths)
}

/// Like [`open_or_build`] with the candidate files given: the first that holds matching
/// weights is used, else the first where they can be written.
pub fn open_or_build_at(
    g: &GgufFile,
    candidates: &[PathBuf],
) -> Result<Option<Prepared>, PreparedError> {
    if switched_off() {
        return Ok(None);
    }
    let tensors = eligible(g);
    if tensors.is_empty() {
        return Ok(None);
    }
    let fp = g.fingerprint(tensors.iter().copied());
    let finish = |path: &Path, map: Arc<Mmap>, places: Places, built| Prepared {
        entries: tensors
            .iter()
            .zip(places)
            .map(|(t, p)| (t.name.clone(), p))
            .collect(),
        map,
        path: path.to_path_buf(),
        built,
    };
    for path in candidates {
        if let Some((map, places)) = open_existing(path, &fp, &tensors) {
            return Ok(Some(finish(path, map, places, false)));
        }
    }
    let mut last = PreparedError::NoFolder;
    for path in candidates {
        let t0 = std::time::Instant::now();
        match build(g, path, &fp, &tensors) {
            Ok(()) => {
                tracing::info!(path = %path.display(), seconds = t0.elapsed().as_secs_f64(), "interleaved weights written");
                // The original pages were read once to build the file; they are not needed
                // again, so they leave this process's memory (the page cache keeps them).
                for t in &tensors {
                    g.release(t);
                }
                let (map, places) =
                    open_existing(path, &fp, &tensors).ok_or_else(|| PreparedError::Io {
                        path: path.clone(),
                        source: std::io::Error::other("the file just written does not read back"),
                    })?;
                return Ok(Some(finish(path, map, places, true)));
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot write interleaved weights here");
                last = e;
            }
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::GgufWriter;

    /// A file with a 32-row Q6_K token embedding and, if `untied`, its own output projection.
    fn file(untied: bool) -> GgufFile {
        let q6k = || vec![0u8; 32 * 210];
        let mut w = GgufWriter::new();
        w.tensor("token_embd.weight", &[256, 32], GgmlType::Q6K, q6k());
        if untied {
            w.tensor("output.weight", &[256, 32], GgmlType::Q6K, q6k());
        }
        let mut bytes = Vec::new();
        w.write_to(&mut bytes).unwrap();
        GgufFile::from_bytes("m.gguf", &bytes).unwrap()
    }

    fn names(g: &GgufFile) -> Vec<&str> {
        eligible(g).iter().map(|t| t.name.as_str()).collect()
    }

    #[test]
    fn the_embedding_is_interleaved_only_as_the_output_projection() {
        assert_eq!(names(&file(false)), ["token_embd.weight"]);
        assert_eq!(names(&file(true)), ["output.weight"]);
    }
}
