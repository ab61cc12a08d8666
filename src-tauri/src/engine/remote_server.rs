//! The address of an OpenAI-compatible server replies can come from (see `remote.rs`): kept
//! apart from the generator so that the `Generator` trait can name it without a cycle.

/// Where replies come from: a server's base address (with or without its `/v1`), the key
/// it wants (if any) and the model to ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteServer {
    /// `http://host:port` or `https://host/…`; a trailing `/v1` is optional.
    pub base_url: String,
    /// Sent as `Authorization: Bearer …`; never logged.
    pub api_key: Option<String>,
    /// The model id the server lists in `GET /v1/models`.
    pub model: String,
}

impl RemoteServer {
    /// The address of an API path (`chat/completions`, `models`) under the server's `/v1`.
    pub fn endpoint(&self, path: &str) -> String {
        let base = self.base_url.trim().trim_end_matches('/');
        let base = base.strip_suffix("/v1").unwrap_or(base);
        format!("{base}/v1/{path}")
    }

    /// The model as a person reads it: llama.cpp's server names a model by its file's path,
    /// shown by the file's name; other ids (`org/model`, `llama3.3:70b`) as they are.
    pub fn model_name(&self) -> &str {
        let id = self.model.trim();
        if id.to_ascii_lowercase().ends_with(".gguf") {
            id.rsplit(['/', '\\']).next().unwrap_or(id)
        } else {
            id
        }
    }

    /// The server's host (and port), for messages.
    pub fn host(&self) -> String {
        reqwest::Url::parse(self.base_url.trim())
            .ok()
            .and_then(|u| {
                u.host_str()
                    .map(|h| u.port().map_or(h.to_string(), |p| format!("{h}:{p}")))
            })
            .unwrap_or_else(|| self.base_url.clone())
    }

    /// Checks the address before anything is sent: http or https, with a host.
    pub fn validate(&self) -> Result<(), String> {
        let url = reqwest::Url::parse(self.base_url.trim())
            .map_err(|e| format!("“{}” is not a server address: {e}", self.base_url))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(format!(
                "“{}” is not a server address: it must start with http:// or https:// and name a host",
                self.base_url
            ));
        }
        if self.model.trim().is_empty() {
            return Err("choose a model the server offers".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(model: &str) -> String {
        RemoteServer {
            base_url: "http://h:1".into(),
            api_key: None,
            model: model.into(),
        }
        .model_name()
        .to_string()
    }

    #[test]
    fn model_files_show_by_name_other_ids_whole() {
        assert_eq!(named("/models/tiny-smollm3.gguf"), "tiny-smollm3.gguf");
        assert_eq!(named("C:\\models\\Big.GGUF"), "Big.GGUF");
        assert_eq!(
            named("meta-llama/Llama-3.3-70B"),
            "meta-llama/Llama-3.3-70B"
        );
        assert_eq!(named("llama3.3:70b"), "llama3.3:70b");
    }
}
