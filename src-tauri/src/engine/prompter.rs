//! A request's prompt as token ids: the chat template rendered, message text tokenized as plain
//! text, and assistant messages that carry the ids the model generated spliced in as those ids.
//! The engine's worker and its callers (the API checks a prompt's length before queueing it)
//! share one [`Prompter`], so both count the same tokens.

use super::loader::LoadedModel;
use super::request::{GenerateRequest, JobError};
use crate::text::chat_template::{ChatTemplate, RenderOptions};
use crate::text::prompt::{self, AddedTokens, PromptError};
use crate::text::tokenizer;
use tokenizers::Tokenizer;

/// The template and tokenizer of one model.
pub struct Prompter {
    template: ChatTemplate,
    tokenizer: Tokenizer,
    /// The tokenizer's added tokens, matched only in the template's markup.
    added: AddedTokens,
    /// `</think>`, after which a reply's ids are what the template renders as its content.
    end_think: Option<u32>,
}

impl std::fmt::Debug for Prompter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prompter").finish_non_exhaustive()
    }
}

impl Prompter {
    /// The chat template from the GGUF, a `tokenizer_config.json` beside the model, or the
    /// bundled SmolLM3 one; the model's tokenizer.
    pub fn for_model(loaded: &LoadedModel) -> Result<Self, JobError> {
        let cfg_json = loaded.gguf.path().with_file_name("tokenizer_config.json");
        let template = ChatTemplate::from_sources(
            loaded.gguf_chat_template(),
            cfg_json.exists().then_some(cfg_json.as_path()),
        )
        .map_err(|e| JobError::Template(e.to_string()))?;
        Ok(Self {
            template,
            added: AddedTokens::of(&loaded.tokenizer),
            tokenizer: loaded.tokenizer.clone(),
            end_think: loaded.specials.end_think,
        })
    }

    /// The prompt's token ids: the rendered conversation, then the assistant prefix if the
    /// request has one. Assistant messages that carry the ids the model generated are spliced
    /// in as those ids (when they still decode to the message text), so the prompt matches the
    /// cache token for token; everything else is tokenized from the rendered text. The result
    /// depends on the request alone.
    pub fn prompt(&self, req: &GenerateRequest) -> Result<Vec<u32>, JobError> {
        let mut ids = self.conversation_ids(req)?;
        ids.extend(self.prefix_ids(req)?);
        Ok(ids)
    }

    /// Text as token ids: with `special`, control-token text (`<|im_start|>`) becomes those
    /// tokens; without, everything is plain text, as message text is in a prompt.
    pub fn tokenize(&self, text: &str, special: bool) -> Result<Vec<u32>, JobError> {
        let ids = if special {
            tokenizer::encode(&self.tokenizer, text)
        } else {
            tokenizer::encode_plain(&self.tokenizer, text)
        };
        ids.map_err(|e| JobError::Model(e.to_string()))
    }

    /// Token ids as text, control tokens written out; an unknown id is an error.
    pub fn detokenize(&self, ids: &[u32]) -> Result<String, JobError> {
        tokenizer::decode(&self.tokenizer, ids).map_err(|e| JobError::Model(e.to_string()))
    }

    /// The token ids of the request's assistant prefix (none without one).
    pub(crate) fn prefix_ids(&self, req: &GenerateRequest) -> Result<Vec<u32>, JobError> {
        match req.assistant_prefix.as_deref() {
            Some(p) if !p.is_empty() => {
                tokenizer::encode(&self.tokenizer, p).map_err(|e| JobError::Model(e.to_string()))
            }
            _ => Ok(Vec::new()),
        }
    }

    /// The rendered conversation up to the start of the assistant turn, as token ids (see
    /// [`Prompter::prompt`]). Message text is tokenized as plain text: special-token text typed
    /// into a message never becomes a control token (see `text::prompt`).
    pub(crate) fn conversation_ids(&self, req: &GenerateRequest) -> Result<Vec<u32>, JobError> {
        if let Some(ids) = &req.raw_prompt {
            let size = self.tokenizer.get_vocab_size(true);
            if let Some(bad) = ids.iter().find(|&&id| id as usize >= size) {
                return Err(JobError::Settings(format!(
                    "token id {bad} is not in the vocabulary ({size} tokens)"
                )));
            }
            if ids.is_empty() {
                return Err(JobError::Settings("the prompt is empty".into()));
            }
            return Ok(ids.clone());
        }
        let splices: Vec<Option<Vec<u32>>> = req
            .messages
            .iter()
            .map(|m| match (&m.token_ids, m.role.as_str()) {
                (Some(ids), "assistant") => self.content_ids(ids, &m.content),
                _ => None,
            })
            .collect();
        let mut opts = RenderOptions::for_date(req.today).with_thinking(req.enable_thinking);
        if !req.tools.is_empty() {
            opts.extra.insert(
                "xml_tools".into(),
                serde_json::Value::Array(req.tools.clone()),
            );
        }
        prompt::conversation_ids(
            &self.template,
            &self.tokenizer,
            &self.added,
            &req.messages,
            &splices,
            &opts,
        )
        .map_err(|e| match e {
            PromptError::Template(e) => JobError::Template(e.to_string()),
            other => JobError::Model(other.to_string()),
        })
    }

    /// The part of a reply's generated ids that the template renders as the message content:
    /// after `</think>` (history drops the reasoning) and without the leading newlines the
    /// template strips. `None` when they do not decode to exactly `content`.
    fn content_ids(&self, generated: &[u32], content: &str) -> Option<Vec<u32>> {
        let tok = &self.tokenizer;
        let mut ids = generated;
        if let Some(end) = self.end_think {
            if let Some(p) = ids.iter().position(|&t| t == end) {
                ids = &ids[p + 1..];
            }
        }
        while let Some((&first, rest)) = ids.split_first() {
            match tok.decode(&[first], false) {
                Ok(s) if !s.is_empty() && s.chars().all(|c| c == '\n') => ids = rest,
                _ => break,
            }
        }
        let text = tok.decode(ids, false).ok()?;
        (text == content.trim_start_matches('\n') && !ids.is_empty()).then(|| ids.to_vec())
    }
}
