//! The model layer's process-wide options, set once by the shell before anything loads (the
//! shell reads them from the environment; this layer reads none). Unset, they are the
//! defaults: prepared files on, beside the model, and the tuned heap.

use std::path::PathBuf;
use std::sync::OnceLock;

/// How models are loaded and run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelOptions {
    /// Keep every weight on the GGUF layout instead of a prepared interleaved file.
    pub no_prepared: bool,
    /// The folder for prepared files (default: beside the model, or the user's cache folder
    /// where that is not writable).
    pub prepared_dir: Option<PathBuf>,
    /// Keep glibc's heap defaults (for measuring what `heap` saves).
    pub default_heap: bool,
}

static OPTIONS: OnceLock<ModelOptions> = OnceLock::new();

/// Sets the options for the life of the process; a second call is refused and changes nothing.
pub fn set(options: ModelOptions) -> Result<(), ModelOptions> {
    OPTIONS.set(options)
}

/// The options in force.
pub fn get() -> &'static ModelOptions {
    OPTIONS.get_or_init(ModelOptions::default)
}
