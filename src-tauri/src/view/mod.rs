//! Turning stored data into HTML for the interface: sanitized markdown for model output and
//! escaping for everything else.

pub mod markdown;

pub use markdown::{escape_text, render_markdown};
