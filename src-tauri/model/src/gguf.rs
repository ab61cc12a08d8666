//! GGUF reading over a memory map.
//!
//! The parser is our own rather than `candle_core::quantized::gguf_file`, which reads every
//! tensor into memory: we validate every count and length against the file size before
//! anything is sized by it and hand out tensor data as slices of the map, so the weights cost
//! no memory beyond the page cache and a bad file gets an error that names the problem.

use memmap2::Mmap;
use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The four bytes every GGUF file starts with.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;

/// The fewest bytes a tensor description takes: name length, dimension count, one dimension,
/// type and offset.
const MIN_TENSOR_INFO_BYTES: u64 = 8 + 4 + 8 + 4 + 8;

/// The fewest bytes a metadata entry takes: key length, value type and a one-byte value.
const MIN_KV_BYTES: u64 = 8 + 4 + 1;

/// Most metadata values (array items included) one file may hold. A value costs a byte or more
/// in the file but [`Value`]'s size in memory, so without a bound a file of `n` bytes could
/// ask for `32 n` bytes of memory. SmolLM3's vocabulary, merges and token types are about
/// 540,000 values; larger vocabularies stay well under this.
pub const MAX_METADATA_VALUES: u64 = 1 << 22;

/// Capacity reserved up front for an array; larger arrays grow as their items are read, so
/// memory follows what the file really holds rather than what its header claims.
const ARRAY_PREALLOCATION: usize = 1 << 16;

/// Why a GGUF file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// The file could not be opened or mapped.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The first bytes are not `GGUF`.
    #[error("not a GGUF file (it starts with {found:?}, a GGUF file starts with \"GGUF\")")]
    NotGguf {
        /// The bytes found.
        found: String,
    },
    /// A GGUF version this reader does not know.
    #[error("unsupported GGUF version {0} (versions 2 and 3 are supported)")]
    Version(u32),
    /// The file ends before the data it announces.
    #[error("the file is truncated: {0}")]
    Truncated(String),
    /// A structurally invalid file.
    #[error("malformed GGUF: {0}")]
    Malformed(String),
    /// A tensor type we cannot compute with.
    #[error("tensor {name} has type {ty}, which is not supported")]
    UnsupportedType {
        /// Tensor name.
        name: String,
        /// Type name or number.
        ty: String,
    },
    /// The file is a GGUF but not a SmolLM3 model.
    #[error("this model's architecture is {0:?}, not \"smollm3\"")]
    Architecture(String),
    /// A required metadata key is absent or has the wrong type.
    #[error("metadata key {key} is {problem}")]
    Metadata {
        /// The key.
        key: String,
        /// What is wrong with it.
        problem: String,
    },
    /// A required tensor is absent.
    #[error("tensor {0} is missing")]
    MissingTensor(String),
    /// A tensor's shape disagrees with the configuration.
    #[error("tensor {name} has shape {found:?}, expected {expected:?}")]
    Shape {
        /// Tensor name.
        name: String,
        /// Shape in the file (ggml order: fastest dimension first).
        found: Vec<u64>,
        /// Shape the configuration implies.
        expected: Vec<u64>,
    },
}

/// The ggml tensor types, with the numbers used in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(missing_docs, non_camel_case_types)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    Q8K,
    BF16,
    /// Any type number we do not know how to compute with.
    Other(u32),
}

impl GgmlType {
    /// The type for a number from the file.
    pub fn from_u32(v: u32) -> Self {
        match v {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            6 => Self::Q5_0,
            7 => Self::Q5_1,
            8 => Self::Q8_0,
            9 => Self::Q8_1,
            10 => Self::Q2K,
            11 => Self::Q3K,
            12 => Self::Q4K,
            13 => Self::Q5K,
            14 => Self::Q6K,
            15 => Self::Q8K,
            30 => Self::BF16,
            other => Self::Other(other),
        }
    }

    /// The number written in the file.
    pub fn to_u32(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q4_0 => 2,
            Self::Q4_1 => 3,
            Self::Q5_0 => 6,
            Self::Q5_1 => 7,
            Self::Q8_0 => 8,
            Self::Q8_1 => 9,
            Self::Q2K => 10,
            Self::Q3K => 11,
            Self::Q4K => 12,
            Self::Q5K => 13,
            Self::Q6K => 14,
            Self::Q8K => 15,
            Self::BF16 => 30,
            Self::Other(v) => v,
        }
    }

    /// (elements per block, bytes per block), or None for unknown types.
    pub fn block_layout(self) -> Option<(usize, usize)> {
        Some(match self {
            Self::F32 => (1, 4),
            Self::F16 | Self::BF16 => (1, 2),
            Self::Q4_0 => (32, 18),
            Self::Q4_1 => (32, 20),
            Self::Q5_0 => (32, 22),
            Self::Q5_1 => (32, 24),
            Self::Q8_0 => (32, 34),
            Self::Q8_1 => (32, 36),
            Self::Q2K => (256, 84),
            Self::Q3K => (256, 110),
            Self::Q4K => (256, 144),
            Self::Q5K => (256, 176),
            Self::Q6K => (256, 210),
            Self::Q8K => (256, 292),
            Self::Other(_) => return None,
        })
    }

    /// Bytes taken by `n` elements (n a multiple of the block size).
    pub fn bytes_for(self, n: usize) -> Option<usize> {
        let (blk, sz) = self.block_layout()?;
        n.is_multiple_of(blk).then_some(n / blk * sz)
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Other(v) => write!(f, "ggml type #{v}"),
            Self::Q2K => f.write_str("Q2_K"),
            Self::Q3K => f.write_str("Q3_K"),
            Self::Q4K => f.write_str("Q4_K"),
            Self::Q5K => f.write_str("Q5_K"),
            Self::Q6K => f.write_str("Q6_K"),
            Self::Q8K => f.write_str("Q8_K"),
            other => write!(f, "{other:?}"),
        }
    }
}

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
#[allow(missing_docs)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
}

impl Value {
    /// The value as an unsigned integer, if it is a non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a float, if it is numeric.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    /// The value as a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The value as a bool.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// The value as an array.
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// Where a tensor lies in the file.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    /// Tensor name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// Dimensions in ggml order (the fastest-varying first): a weight of `n` output rows and
    /// `k` inputs is `[k, n]`.
    pub dims: Vec<u64>,
    /// Element type.
    pub ty: GgmlType,
    /// Absolute byte offset in the file.
    pub offset: usize,
    /// Bytes taken.
    pub size: usize,
}

impl TensorInfo {
    /// Number of elements.
    pub fn elem_count(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// An open, validated GGUF file: metadata parsed, tensor data left in the map.
pub struct GgufFile {
    path: PathBuf,
    map: Arc<Mmap>,
    version: u32,
    metadata: Vec<(String, Value)>,
    index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
    data_offset: usize,
}

impl fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Maps and parses a file. Every tensor's byte range is checked against the file size.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, GgufError> {
        let path = path.as_ref().to_path_buf();
        let io = |source| GgufError::Io {
            path: path.clone(),
            source,
        };
        let file = File::open(&path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        if len == 0 {
            return Err(GgufError::Truncated("the file is empty".into()));
        }
        // SAFETY: the map is read-only; a file changed under us by another process could change
        // what we read, which is the same hazard every mmap-based model loader accepts.
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        Self::parse(path, Arc::new(map))
    }

    /// Parses a GGUF held in memory (a copy is mapped, so tensor data is read as from a file);
    /// `name` stands in for the path in messages. For tests and fuzzing of the parser.
    pub fn from_bytes(name: impl Into<PathBuf>, bytes: &[u8]) -> Result<Self, GgufError> {
        let path = name.into();
        if bytes.is_empty() {
            return Err(GgufError::Truncated("the file is empty".into()));
        }
        let io = |source| GgufError::Io {
            path: path.clone(),
            source,
        };
        let mut anon = memmap2::MmapMut::map_anon(bytes.len()).map_err(io)?;
        anon.copy_from_slice(bytes);
        let map = anon.make_read_only().map_err(io)?;
        Self::parse(path, Arc::new(map))
    }

    fn parse(path: PathBuf, map: Arc<Mmap>) -> Result<Self, GgufError> {
        let mut r = Reader {
            buf: &map[..],
            pos: 0,
            values_left: MAX_METADATA_VALUES,
        };
        let magic = r.bytes(4).map_err(|_| GgufError::NotGguf {
            found: String::from_utf8_lossy(&map[..map.len().min(4)]).into_owned(),
        })?;
        if magic != GGUF_MAGIC {
            return Err(GgufError::NotGguf {
                found: String::from_utf8_lossy(magic).into_owned(),
            });
        }
        let version = r.u32()?;
        if !(2..=3).contains(&version) {
            return Err(GgufError::Version(version));
        }
        let n_tensors = r.u64()?;
        let n_kv = r.u64()?;
        // Each entry takes at least a few bytes, so counts beyond the file size are lies; they
        // are refused before anything is sized by them.
        let remaining = (map.len() - r.pos) as u64;
        if n_tensors > remaining / MIN_TENSOR_INFO_BYTES || n_kv > remaining / MIN_KV_BYTES {
            return Err(GgufError::Truncated(format!(
                "header announces {n_tensors} tensors and {n_kv} metadata entries, more than the file can hold"
            )));
        }
        let mut metadata = Vec::with_capacity(n_kv as usize);
        let mut index = HashMap::new();
        for _ in 0..n_kv {
            let key = r.string()?;
            let ty = r.u32()?;
            let value = r.value(ty, 0)?;
            index.insert(key.clone(), metadata.len());
            metadata.push((key, value));
        }
        let mut raw = Vec::with_capacity(n_tensors as usize);
        for _ in 0..n_tensors {
            let name = r.string()?;
            let n_dims = r.u32()?;
            if n_dims == 0 || n_dims > 4 {
                return Err(GgufError::Malformed(format!(
                    "tensor {name} has {n_dims} dimensions"
                )));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(r.u64()?);
            }
            let ty = GgmlType::from_u32(r.u32()?);
            let offset = r.u64()?;
            raw.push((name, dims, ty, offset));
        }
        let alignment = match index.get("general.alignment") {
            Some(&i) => metadata[i]
                .1
                .as_u64()
                .filter(|a| *a > 0 && a.is_power_of_two())
                .ok_or_else(|| {
                    GgufError::Malformed("general.alignment is not a power of two".into())
                })?,
            None => DEFAULT_ALIGNMENT,
        };
        let data_offset = (r.pos as u64).div_ceil(alignment) * alignment;
        let file_len = map.len() as u64;
        let mut tensors = Vec::with_capacity(raw.len());
        let mut tensor_index = HashMap::new();
        for (name, dims, ty, rel) in raw {
            let elems = dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d));
            let elems = elems.ok_or_else(|| {
                GgufError::Malformed(format!("tensor {name} has an impossible shape {dims:?}"))
            })?;
            let Some((blk, bsz)) = ty.block_layout() else {
                return Err(GgufError::UnsupportedType {
                    name,
                    ty: ty.to_string(),
                });
            };
            if dims[0] % blk as u64 != 0 {
                return Err(GgufError::Malformed(format!(
                    "tensor {name}: row length {} is not a multiple of the {ty} block size {blk}",
                    dims[0]
                )));
            }
            let size = elems / blk as u64 * bsz as u64;
            let start = data_offset.checked_add(rel);
            let end = start.and_then(|s| s.checked_add(size));
            match end {
                Some(end) if end <= file_len => {}
                _ => {
                    return Err(GgufError::Truncated(format!(
                        "tensor {name} needs bytes up to {} but the file has {file_len}",
                        data_offset.saturating_add(rel).saturating_add(size)
                    )))
                }
            }
            if rel % alignment != 0 {
                return Err(GgufError::Malformed(format!(
                    "tensor {name} is not aligned"
                )));
            }
            if tensor_index.insert(name.clone(), tensors.len()).is_some() {
                return Err(GgufError::Malformed(format!("tensor {name} appears twice")));
            }
            tensors.push(TensorInfo {
                name,
                dims,
                ty,
                offset: (data_offset + rel) as usize,
                size: size as usize,
            });
        }
        Ok(Self {
            path,
            map,
            version,
            metadata,
            index,
            tensors,
            tensor_index,
            data_offset: data_offset as usize,
        })
    }

    /// The file this was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The GGUF version.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Size of the file in bytes.
    pub fn file_size(&self) -> usize {
        self.map.len()
    }

    /// Offset where tensor data begins.
    pub fn data_offset(&self) -> usize {
        self.data_offset
    }

    /// The whole map (tensor data is sliced from it without copying).
    pub fn map(&self) -> &Arc<Mmap> {
        &self.map
    }

    /// All metadata, in file order.
    pub fn metadata(&self) -> &[(String, Value)] {
        &self.metadata
    }

    /// One metadata value.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.index.get(key).map(|&i| &self.metadata[i].1)
    }

    /// A string metadata value.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Value::as_str)
    }

    /// A required unsigned integer.
    pub fn require_u64(&self, key: &str) -> Result<u64, GgufError> {
        match self.get(key) {
            None => Err(meta_err(key, "missing")),
            Some(v) => v
                .as_u64()
                .ok_or_else(|| meta_err(key, "not an unsigned integer")),
        }
    }

    /// A required float.
    pub fn require_f64(&self, key: &str) -> Result<f64, GgufError> {
        match self.get(key) {
            None => Err(meta_err(key, "missing")),
            Some(v) => v.as_f64().ok_or_else(|| meta_err(key, "not a number")),
        }
    }

    /// All tensors, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// One tensor's description.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// A tensor's bytes, straight from the map.
    pub fn tensor_data(&self, info: &TensorInfo) -> &[u8] {
        &self.map[info.offset..info.offset + info.size]
    }

    /// The quantization a person knows the file by (`Q4_K_M`, `Q8_0`, `F16`…): the header's
    /// `general.file_type` as llama.cpp numbers it, else the type holding most of the bytes.
    pub fn quantization(&self) -> String {
        let named = self
            .get("general.file_type")
            .and_then(Value::as_u64)
            .and_then(|t| {
                Some(match t {
                    0 => "F32",
                    1 => "F16",
                    2 => "Q4_0",
                    3 => "Q4_1",
                    7 => "Q8_0",
                    8 => "Q5_0",
                    9 => "Q5_1",
                    10 => "Q2_K",
                    11 => "Q3_K_S",
                    12 => "Q3_K_M",
                    13 => "Q3_K_L",
                    14 => "Q4_K_S",
                    15 => "Q4_K_M",
                    16 => "Q5_K_S",
                    17 => "Q5_K_M",
                    18 => "Q6_K",
                    32 => "BF16",
                    _ => return None,
                })
            });
        if let Some(name) = named {
            return name.to_owned();
        }
        let mut bytes: HashMap<GgmlType, usize> = HashMap::new();
        for t in &self.tensors {
            *bytes.entry(t.ty).or_default() += t.size;
        }
        bytes
            .into_iter()
            .max_by_key(|&(_, n)| n)
            .map(|(ty, _)| format!("mostly {ty}"))
            .unwrap_or_else(|| "unknown".into())
    }

    /// Identifies the model's bytes: the file's size and modification time, and for each of
    /// `tensors` its name, shape, place and the first and last bytes of its data (so that two
    /// files with the same header, such as synthetic models of different seeds, differ).
    /// Cheap (a few pages read), so files derived from a model can record it and be checked.
    pub fn fingerprint<'a>(&self, tensors: impl IntoIterator<Item = &'a TensorInfo>) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update((self.file_size() as u64).to_le_bytes());
        let mtime = std::fs::metadata(self.path())
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        h.update(mtime.to_le_bytes());
        for t in tensors {
            h.update(t.name.as_bytes());
            for d in &t.dims {
                h.update(d.to_le_bytes());
            }
            h.update((t.offset as u64).to_le_bytes());
            let data = self.tensor_data(t);
            let edge = data.len().min(256);
            h.update(&data[..edge]);
            h.update(&data[data.len() - edge..]);
        }
        h.finalize().into()
    }

    /// Drops a tensor's pages from this process's memory (they stay in the page cache and
    /// come back from the file if read again): for data that was read once and is not needed.
    pub fn release(&self, info: &TensorInfo) {
        #[cfg(unix)]
        // SAFETY: the map is a read-only view of a file, so dropping its pages loses nothing:
        // a later read faults them in again from the file.
        unsafe {
            let _ = self.map.unchecked_advise_range(
                memmap2::UncheckedAdvice::DontNeed,
                info.offset,
                info.size,
            );
        }
        #[cfg(not(unix))]
        let _ = info;
    }
}

fn meta_err(key: &str, problem: &str) -> GgufError {
    GgufError::Metadata {
        key: key.to_string(),
        problem: problem.to_string(),
    }
}

/// A bounds-checked cursor over the mapped bytes.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Metadata values that may still be read (see [`MAX_METADATA_VALUES`]).
    values_left: u64,
}

/// The fewest bytes one value of a metadata type takes in the file, or `None` for a type
/// number that does not exist.
fn min_value_bytes(ty: u32) -> Option<u64> {
    Some(match ty {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        10..=12 => 8,
        // A string's length; an array's item type and count.
        8 => 8,
        9 => 12,
        _ => return None,
    })
}

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize) -> Result<&'a [u8], GgufError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| {
                GgufError::Truncated(format!(
                    "the header needs {n} bytes at offset {} but the file has {}",
                    self.pos,
                    self.buf.len()
                ))
            })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], GgufError> {
        Ok(self.bytes(N)?.try_into().expect("length checked"))
    }

    fn u32(&mut self) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn string(&mut self) -> Result<String, GgufError> {
        let len = self.u64()?;
        let len = usize::try_from(len)
            .map_err(|_| GgufError::Truncated(format!("a string claims {len} bytes")))?;
        let b = self.bytes(len)?;
        String::from_utf8(b.to_vec()).map_err(|_| {
            GgufError::Malformed(format!("a string at offset {} is not UTF-8", self.pos))
        })
    }

    fn value(&mut self, ty: u32, depth: usize) -> Result<Value, GgufError> {
        self.values_left = self.values_left.checked_sub(1).ok_or_else(|| {
            GgufError::Malformed(format!(
                "more than {MAX_METADATA_VALUES} metadata values; no model needs that many"
            ))
        })?;
        Ok(match ty {
            0 => Value::U8(self.array::<1>()?[0]),
            1 => Value::I8(self.array::<1>()?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array()?)),
            3 => Value::I16(i16::from_le_bytes(self.array()?)),
            4 => Value::U32(self.u32()?),
            5 => Value::I32(i32::from_le_bytes(self.array()?)),
            6 => Value::F32(f32::from_le_bytes(self.array()?)),
            7 => Value::Bool(self.array::<1>()?[0] != 0),
            8 => Value::String(self.string()?),
            9 => {
                if depth > 2 {
                    return Err(GgufError::Malformed("arrays nested too deeply".into()));
                }
                let ety = self.u32()?;
                let n = self.u64()?;
                let item = min_value_bytes(ety).ok_or_else(|| {
                    GgufError::Malformed(format!("unknown metadata value type {ety}"))
                })?;
                if n > (self.buf.len() - self.pos) as u64 / item {
                    return Err(GgufError::Truncated(format!(
                        "an array claims {n} items, more than the file can hold"
                    )));
                }
                if n > self.values_left {
                    return Err(GgufError::Malformed(format!(
                        "an array claims {n} items; at most {MAX_METADATA_VALUES} metadata values are read"
                    )));
                }
                let mut items = Vec::with_capacity((n as usize).min(ARRAY_PREALLOCATION));
                for _ in 0..n {
                    items.push(self.value(ety, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(i64::from_le_bytes(self.array()?)),
            12 => Value::F64(f64::from_le_bytes(self.array()?)),
            other => {
                return Err(GgufError::Malformed(format!(
                    "unknown metadata value type {other}"
                )))
            }
        })
    }
}

/// Writes GGUF v3 files (used by the synthetic-model generator and by tests that craft files).
pub struct GgufWriter {
    metadata: Vec<(String, Value)>,
    tensors: Vec<(String, Vec<u64>, GgmlType, Vec<u8>)>,
}

impl Default for GgufWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl GgufWriter {
    /// An empty file.
    pub fn new() -> Self {
        Self {
            metadata: Vec::new(),
            tensors: Vec::new(),
        }
    }

    /// Adds a metadata entry.
    pub fn meta(&mut self, key: &str, value: Value) -> &mut Self {
        self.metadata.push((key.to_string(), value));
        self
    }

    /// Adds a tensor (dims in ggml order) with its encoded bytes.
    pub fn tensor(&mut self, name: &str, dims: &[u64], ty: GgmlType, data: Vec<u8>) -> &mut Self {
        self.tensors
            .push((name.to_string(), dims.to_vec(), ty, data));
        self
    }

    /// Serializes to a writer.
    pub fn write_to(&self, w: &mut impl std::io::Write) -> std::io::Result<()> {
        let mut head = Vec::new();
        head.extend_from_slice(&GGUF_MAGIC);
        head.extend_from_slice(&3u32.to_le_bytes());
        head.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        head.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (k, v) in &self.metadata {
            put_str(&mut head, k);
            put_value(&mut head, v, true);
        }
        let mut offset = 0u64;
        let mut offsets = Vec::new();
        for (name, dims, ty, data) in &self.tensors {
            put_str(&mut head, name);
            head.extend_from_slice(&(dims.len() as u32).to_le_bytes());
            for d in dims {
                head.extend_from_slice(&d.to_le_bytes());
            }
            head.extend_from_slice(&ty.to_u32().to_le_bytes());
            head.extend_from_slice(&offset.to_le_bytes());
            offsets.push(offset);
            offset = (offset + data.len() as u64).div_ceil(DEFAULT_ALIGNMENT) * DEFAULT_ALIGNMENT;
        }
        let pad = head.len().div_ceil(DEFAULT_ALIGNMENT as usize) * DEFAULT_ALIGNMENT as usize;
        head.resize(pad, 0);
        w.write_all(&head)?;
        let mut written = 0u64;
        for ((_, _, _, data), off) in self.tensors.iter().zip(offsets) {
            if off > written {
                w.write_all(&vec![0u8; (off - written) as usize])?;
                written = off;
            }
            w.write_all(data)?;
            written += data.len() as u64;
        }
        Ok(())
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn value_type(v: &Value) -> u32 {
    match v {
        Value::U8(_) => 0,
        Value::I8(_) => 1,
        Value::U16(_) => 2,
        Value::I16(_) => 3,
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::String(_) => 8,
        Value::Array(_) => 9,
        Value::U64(_) => 10,
        Value::I64(_) => 11,
        Value::F64(_) => 12,
    }
}

fn put_value(out: &mut Vec<u8>, v: &Value, with_type: bool) {
    if with_type {
        out.extend_from_slice(&value_type(v).to_le_bytes());
    }
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.push(*x as u8),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => out.push(*x as u8),
        Value::String(s) => put_str(out, s),
        Value::Array(items) => {
            let ety = items.first().map(value_type).unwrap_or(4);
            out.extend_from_slice(&ety.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for it in items {
                put_value(out, it, false);
            }
        }
    }
}
