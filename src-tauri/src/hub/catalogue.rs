//! The models the app offers to download, and how to fill in what an entry does not pin.
//!
//! Sizes and digests are not pinned here: they are read from the hub's answer to `HEAD`
//! (`X-Linked-Size`, `X-Linked-Etag`), so a re-uploaded file is still verified against what
//! the hub publishes. Pin a `sha256` and `revision` (a commit) to freeze an entry.

use super::download::{DownloadSpec, Downloader};
use super::error::HubError;
use super::remote::RemoteFile;
use serde::Serialize;
use std::path::Path;

/// The tokenizer every SmolLM3 quantization shares, from the original model repository.
pub const TOKENIZER: CatalogueFile = CatalogueFile {
    repo: "HuggingFaceTB/SmolLM3-3B",
    file: "tokenizer.json",
    revision: "main",
    size: None,
    sha256: None,
};

/// One file of a catalogue entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CatalogueFile {
    /// `owner/name`.
    pub repo: &'static str,
    /// File inside the repository.
    pub file: &'static str,
    /// Branch, tag or commit.
    pub revision: &'static str,
    /// Pinned size, when known.
    pub size: Option<u64>,
    /// Pinned sha256, when known.
    pub sha256: Option<&'static str>,
}

impl CatalogueFile {
    /// The file as a [`RemoteFile`].
    pub fn remote(&self) -> RemoteFile {
        RemoteFile {
            repo: self.repo.to_owned(),
            file: self.file.to_owned(),
            revision: self.revision.to_owned(),
        }
    }
}

/// A model the app offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CatalogueEntry {
    /// Short id used on the command line, e.g. `q4_k_m`.
    pub id: &'static str,
    /// The GGUF file.
    pub model: CatalogueFile,
    /// Files needed beside it (the tokenizer).
    pub companions: &'static [CatalogueFile],
    /// Approximate download size, for display before the hub is asked.
    pub approx_size: u64,
    /// Memory needed to run it with an 8k context: weights plus KV cache and buffers.
    pub ram_needed: u64,
    /// One line for a person choosing.
    pub description: &'static str,
    /// Whether this is the recommended first download.
    pub default: bool,
}

const GB: u64 = 1_000_000_000;
const MB: u64 = 1_000_000;

const fn gguf(file: &'static str) -> CatalogueFile {
    CatalogueFile {
        repo: "ggml-org/SmolLM3-3B-GGUF",
        file,
        revision: "main",
        size: None,
        sha256: None,
    }
}

// RAM: weights + ~0.6 GB of f16 KV cache for 8192 tokens (36 layers × 4 KV heads × 128 × 2)
// + ~0.4 GB of activations and tokenizer.
static CATALOGUE: [CatalogueEntry; 3] = [
    CatalogueEntry {
        id: "q4_k_m",
        model: gguf("SmolLM3-Q4_K_M.gguf"),
        companions: &[TOKENIZER],
        approx_size: 1_920 * MB,
        ram_needed: 3 * GB,
        description: "4-bit (Q4_K_M): the recommended balance of size, speed and quality",
        default: true,
    },
    CatalogueEntry {
        id: "q8_0",
        model: gguf("SmolLM3-Q8_0.gguf"),
        companions: &[TOKENIZER],
        approx_size: 3_280 * MB,
        ram_needed: 4_300 * MB,
        description: "8-bit (Q8_0): closest to the original, larger and slower",
        default: false,
    },
    CatalogueEntry {
        id: "f16",
        model: gguf("SmolLM3-f16.gguf"),
        companions: &[TOKENIZER],
        approx_size: 6_160 * MB,
        ram_needed: 7_200 * MB,
        description: "16-bit (F16): unquantized reference weights, for comparisons",
        default: false,
    },
];

/// All entries, the recommended one first.
pub fn catalogue() -> &'static [CatalogueEntry] {
    &CATALOGUE
}

impl CatalogueEntry {
    /// What to download into `dir` for this entry: the model first, then its companions.
    pub fn download_specs(&self, dir: &Path) -> Vec<DownloadSpec> {
        std::iter::once(&self.model)
            .chain(self.companions)
            .map(|f| DownloadSpec {
                remote: f.remote(),
                dir: dir.to_path_buf(),
                sha256: f.sha256.map(str::to_owned),
                size: f.size,
            })
            .collect()
    }
}

/// The recommended first download.
pub fn default_entry() -> &'static CatalogueEntry {
    CATALOGUE
        .iter()
        .find(|e| e.default)
        .unwrap_or(&CATALOGUE[0])
}

/// The entry with this id or model file name (case-insensitive).
pub fn find(id: &str) -> Option<&'static CatalogueEntry> {
    CATALOGUE
        .iter()
        .find(|e| e.id.eq_ignore_ascii_case(id) || e.model.file.eq_ignore_ascii_case(id))
}

/// A catalogue file with what the hub announced filled in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ResolvedFile {
    /// Where it is.
    pub remote: RemoteFile,
    /// Size in bytes, pinned or announced.
    pub size: Option<u64>,
    /// sha256, pinned or announced (absent for small files kept in git).
    pub sha256: Option<String>,
}

/// Fills in size and sha256 of `file` from the hub where the catalogue does not pin them.
pub async fn resolve(
    downloader: &Downloader,
    file: &CatalogueFile,
) -> Result<ResolvedFile, HubError> {
    let remote = file.remote();
    if let (Some(size), Some(sha256)) = (file.size, file.sha256) {
        return Ok(ResolvedFile {
            remote,
            size: Some(size),
            sha256: Some(sha256.to_owned()),
        });
    }
    let meta = downloader.head(&remote).await?;
    Ok(ResolvedFile {
        size: file.size.or(meta.size),
        sha256: file.sha256.map(str::to_owned).or(meta.sha256),
        remote,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_smollm3_q4() {
        let d = default_entry();
        assert_eq!(d.model.repo, "ggml-org/SmolLM3-3B-GGUF");
        assert_eq!(d.model.file, "SmolLM3-Q4_K_M.gguf");
        assert_eq!(d.companions[0].repo, "HuggingFaceTB/SmolLM3-3B");
        assert_eq!(
            find("Q8_0").map(|e| e.model.file),
            Some("SmolLM3-Q8_0.gguf")
        );
        assert!(find("f16").is_some());
        let specs = d.download_specs(Path::new("/m"));
        assert_eq!(specs.len(), 2);
        assert_eq!(specs[1].remote.local_name(), "tokenizer.json");
        for e in catalogue() {
            assert!(e.ram_needed > e.approx_size, "{}", e.id);
            RemoteFile::new(e.model.repo, e.model.file, e.model.revision).unwrap();
        }
    }
}
