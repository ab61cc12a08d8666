//! Errors of the model manager, worded for the person who will read them.

use std::path::PathBuf;

/// Everything that can go wrong while finding, downloading, importing or checking a model.
///
/// Messages are written for people: each says what happened and what to do next.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// The server could not be reached at all (DNS, refused connection, TLS, proxy).
    #[error(
        "cannot reach {host}: {detail}. Check the network connection and any proxy setting \
         (HTTPS_PROXY), or set HF_ENDPOINT to a reachable mirror"
    )]
    Network {
        /// Host part of the URL.
        host: String,
        /// The lower-level reason.
        detail: String,
    },
    /// 401 or 403: the file needs a token (gated or private repository).
    #[error(
        "access denied (HTTP {status}) for {url}. This model needs a Hugging Face token: accept \
         its licence on the model page if it is gated, create a read token at \
         https://huggingface.co/settings/tokens and set it in the environment, for example \
         `export HF_TOKEN=hf_...`, then try again"
    )]
    Unauthorized {
        /// The URL asked for.
        url: String,
        /// 401 or 403.
        status: u16,
    },
    /// 404: no such repository, revision or file.
    #[error(
        "not found (HTTP 404): {url}. Check the repository name, the file name and the revision"
    )]
    NotFound {
        /// The URL asked for.
        url: String,
    },
    /// Any other HTTP failure, after the retries allowed.
    #[error("the server answered HTTP {status} for {url} ({attempts} attempts); try again later")]
    Http {
        /// The URL asked for.
        url: String,
        /// The last status seen.
        status: u16,
        /// How many requests were made.
        attempts: u32,
    },
    /// The transfer kept failing part way (dropped connections, stalls), after the retries allowed.
    #[error(
        "the download of {file} kept failing ({attempts} attempts, last: {reason}); the partial \
         file is kept, run the download again to resume"
    )]
    Interrupted {
        /// File being downloaded.
        file: String,
        /// How many attempts were made.
        attempts: u32,
        /// The last reason.
        reason: String,
    },
    /// The free-space check before starting failed.
    #[error(
        "not enough free disk space in {dir}: {needed} needed, {available} available. Free some \
         space or choose another models folder (--dir or SMOLLM3_MODELS_DIR)"
    )]
    InsufficientSpace {
        /// The models folder.
        dir: PathBuf,
        /// Bytes still to download, human-readable.
        needed: String,
        /// Bytes free, human-readable.
        available: String,
    },
    /// A write failed because the disk filled up during the transfer.
    #[error(
        "the disk is full while writing {path}. The partial download is kept: free some space \
         and run the download again to resume"
    )]
    DiskFull {
        /// The partial file.
        path: PathBuf,
    },
    /// Any other file-system failure.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done, e.g. "cannot write".
        action: &'static str,
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The downloaded or stored bytes are not the published ones.
    #[error(
        "checksum mismatch for {file}: expected {expected}, got {actual}. The file was moved to \
         {quarantined} and will not be used; download it again"
    )]
    ChecksumMismatch {
        /// File name.
        file: String,
        /// The published digest.
        expected: String,
        /// The digest of the bytes received.
        actual: String,
        /// Where the bad file now lies.
        quarantined: PathBuf,
    },
    /// The hub publishes a different file than the pinned checksum describes.
    #[error(
        "{file} changed on the hub: the pinned sha256 is {pinned} but the hub now serves {remote}. \
         Pin the new revision or checksum deliberately"
    )]
    RemoteChanged {
        /// File name.
        file: String,
        /// The sha256 we expect.
        pinned: String,
        /// The sha256 the hub announces.
        remote: String,
    },
    /// The server broke the protocol in a way a retry cannot fix.
    #[error("unexpected answer from {url}: {detail}")]
    Protocol {
        /// The URL asked for.
        url: String,
        /// What was wrong.
        detail: String,
    },
    /// A model file was rejected by validation (import).
    #[error("{path} is not a usable model: {reason}")]
    InvalidModel {
        /// The file offered.
        path: PathBuf,
        /// Why it was rejected.
        reason: String,
    },
    /// A name, checksum or URL given by the user is malformed.
    #[error("{0}")]
    InvalidInput(String),
    /// No such model in the models folder.
    #[error("no model named {name} in {dir}")]
    NoSuchModel {
        /// The name asked for.
        name: String,
        /// The models folder.
        dir: PathBuf,
    },
    /// The same file is already being downloaded by another task or process.
    #[error("{name} is already being downloaded; wait for it or stop it first")]
    AlreadyRunning {
        /// File name.
        name: String,
    },
    /// No platform data folder could be found and none was given.
    #[error("no data folder could be found for this user; pass --dir or set SMOLLM3_MODELS_DIR")]
    NoDataDir,
}

impl HubError {
    /// An I/O error with what was being done and on which file; ENOSPC becomes [`HubError::DiskFull`].
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        let path = path.into();
        if is_disk_full(&source) {
            HubError::DiskFull { path }
        } else {
            HubError::Io {
                action,
                path,
                source,
            }
        }
    }
}

/// Whether an I/O error means the disk (or the user's quota) is full.
pub(crate) fn is_disk_full(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    ) || matches!(e.raw_os_error(), Some(28)) // ENOSPC on Linux and macOS
}

/// Bytes as a person reads them: `1.92 GB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.2} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_bytes_reads_well() {
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(1_920_000_000), "1.92 GB");
        assert_eq!(human_bytes(1500), "1.50 kB");
    }

    #[test]
    fn enospc_is_disk_full() {
        let e = std::io::Error::from_raw_os_error(28);
        assert!(matches!(
            HubError::io("cannot write", "/x", e),
            HubError::DiskFull { .. }
        ));
        let e = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        assert!(matches!(
            HubError::io("cannot write", "/x", e),
            HubError::Io { .. }
        ));
    }
}
