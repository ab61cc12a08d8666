//! Turning stored data into HTML for the interface: templates with auto-escaping for the
//! markup, sanitized markdown for model output, and the one HTML escaper.

pub mod highlight;
pub mod markdown;
pub mod math;
pub mod templates;
mod tool_calls;

pub use markdown::render_markdown;
pub use templates::{escape, render, safe};
