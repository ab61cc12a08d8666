//! The model manager: the catalogue of downloadable models, a resumable and verified
//! downloader for the Hugging Face hub (or a mirror), importing a local `.gguf`, and the
//! models folder (list, verify, remove).
//!
//! Invariant the rest of the app relies on: a file listed by [`local::list`] is complete and
//! was verified (downloaded against the hub's sha256, or validated on import). Partial files
//! end in `.part`, failed ones in `.corrupt`, and neither is ever listed.

pub mod catalogue;
pub mod download;
pub mod error;
pub mod found;
pub mod import;
pub mod local;
pub mod remote;

pub use catalogue::{catalogue, default_entry, CatalogueEntry, CatalogueFile};
pub use download::{
    DownloadControl, DownloadEvent, DownloadOptions, DownloadOutcome, DownloadSpec, Downloader,
    Progress, RetryPolicy,
};
pub use error::HubError;
pub use import::{import, ImportMode};
pub use local::{list, models_dir, partials, remove, verify, LocalModel, PartialDownload};
pub use remote::{Credential, HubConfig, RemoteFile, RemoteMeta};
