//! User settings: the system prompt, sampling, model and appearance, with their valid ranges.

use serde::{Deserialize, Serialize};

use super::generator::SamplingSettings;

/// Colour scheme of the window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Theme {
    /// Follow the operating system.
    #[default]
    System,
    /// Always light.
    Light,
    /// Always dark.
    Dark,
}

impl Theme {
    /// The name used in forms and CSS.
    pub fn as_str(self) -> &'static str {
        match self {
            Theme::System => "system",
            Theme::Light => "light",
            Theme::Dark => "dark",
        }
    }

    /// Parses a name from a form; `None` for anything else.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "system" => Some(Theme::System),
            "light" => Some(Theme::Light),
            "dark" => Some(Theme::Dark),
            _ => None,
        }
    }
}

/// Everything the settings panel edits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// Prepended to every conversation (empty: the chat template's default).
    pub system_prompt: String,
    /// Sampling for new replies.
    pub sampling: SamplingSettings,
    /// Context window in tokens.
    pub context_size: usize,
    /// CPU threads for inference (0: one per core).
    pub threads: usize,
    /// Whether new conversations start with reasoning on.
    pub thinking_default: bool,
    /// Most reasoning tokens per reply (0: no limit).
    pub thinking_budget: usize,
    /// Colour scheme.
    pub theme: Theme,
    /// The GGUF model file (empty: none chosen; `MODEL_PATH` overrides).
    pub model_path: String,
    /// A `tokenizer.json` next to the model (empty: read it from the GGUF; `TOKENIZER_PATH` overrides).
    pub tokenizer_path: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            system_prompt: String::new(),
            sampling: SamplingSettings::default(),
            context_size: 8192,
            threads: 0,
            thinking_default: false,
            thinking_budget: 0,
            theme: Theme::System,
            model_path: String::new(),
            tokenizer_path: String::new(),
        }
    }
}

/// A setting out of range: which field, and a sentence for the user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct InvalidSetting {
    /// The form field name.
    pub field: &'static str,
    /// What is wrong, for a person to read.
    pub message: String,
}

/// The largest context SmolLM3 was trained for (with YaRN).
pub const MAX_CONTEXT: usize = 131_072;

impl Settings {
    /// Checks every value; returns all problems at once so the form can show them together.
    pub fn validate(&self) -> Result<(), Vec<InvalidSetting>> {
        let mut bad = Vec::new();
        let mut check = |ok: bool, field: &'static str, message: &str| {
            if !ok {
                bad.push(InvalidSetting {
                    field,
                    message: message.to_string(),
                });
            }
        };
        let s = &self.sampling;
        check(
            (0.0..=2.0).contains(&s.temperature),
            "temperature",
            "must be between 0 and 2",
        );
        check(
            s.top_p > 0.0 && s.top_p <= 1.0,
            "top_p",
            "must be above 0 and at most 1",
        );
        check(
            s.top_k <= 1000,
            "top_k",
            "must be at most 1000 (0 turns it off)",
        );
        check(
            (0.0..1.0).contains(&s.min_p),
            "min_p",
            "must be at least 0 and below 1",
        );
        check(
            (0.5..=2.0).contains(&s.repeat_penalty),
            "repeat_penalty",
            "must be between 0.5 and 2",
        );
        check(
            s.max_tokens >= 1 && s.max_tokens <= self.context_size,
            "max_tokens",
            "must be at least 1 and fit in the context size",
        );
        check(
            (512..=MAX_CONTEXT).contains(&self.context_size),
            "context_size",
            "must be between 512 and 131072",
        );
        check(
            self.threads <= 256,
            "threads",
            "must be at most 256 (0 uses every core)",
        );
        check(
            self.thinking_budget <= self.context_size,
            "thinking_budget",
            "must fit in the context size (0 means no limit)",
        );
        if bad.is_empty() {
            Ok(())
        } else {
            Err(bad)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert_eq!(Settings::default().validate(), Ok(()));
    }

    #[test]
    fn every_bad_field_is_reported() {
        let mut s = Settings::default();
        s.sampling.temperature = 5.0;
        s.context_size = 10;
        let fields: Vec<&str> = s.validate().unwrap_err().iter().map(|e| e.field).collect();
        assert!(fields.contains(&"temperature"));
        assert!(fields.contains(&"context_size"));
        assert!(fields.contains(&"max_tokens"));
    }

    #[test]
    fn theme_names_round_trip() {
        for t in [Theme::System, Theme::Light, Theme::Dark] {
            assert_eq!(Theme::parse(t.as_str()), Some(t));
        }
        assert_eq!(Theme::parse("purple"), None);
    }
}
