//! `POST /tokenize` and `POST /detokenize` in llama.cpp's server's shapes, for tools that count
//! tokens or inspect how a text is split:
//!
//! - `/tokenize` `{"content": "…", "parse_special": true, "with_pieces": false}` →
//!   `{"tokens": [ids]}`, or with pieces `{"tokens": [{"id": 1, "piece": "…"}]}`;
//! - `/detokenize` `{"tokens": [ids]}` → `{"content": "…"}`.
//!
//! `add_special` is accepted and changes nothing: SmolLM3 adds no start token.

use super::wire::ApiError;
use super::ApiState;
use axum::body::Bytes;
use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

/// Most characters one `/tokenize` request may hold (the body limit bounds it anyway).
const MAX_TOKENIZE_CHARS: usize = 1 << 20;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenizeRequest {
    content: String,
    #[serde(default)]
    add_special: bool,
    #[serde(default = "yes")]
    parse_special: bool,
    #[serde(default)]
    with_pieces: bool,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DetokenizeRequest {
    tokens: Vec<u32>,
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(None, format!("the request body is not valid: {e}")))
}

pub(super) async fn tokenize(
    State(st): State<ApiState>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let req: TokenizeRequest = parse(&body)?;
    let _ = req.add_special;
    if req.content.chars().count() > MAX_TOKENIZE_CHARS {
        return Err(ApiError::bad_request(
            Some("content"),
            format!("content may hold at most {MAX_TOKENIZE_CHARS} characters"),
        ));
    }
    let engine = st.engine().clone();
    let (ids, pieces) = tokio::task::spawn_blocking(move || {
        let prompter = engine.prompter();
        let ids = prompter.tokenize(&req.content, req.parse_special)?;
        let pieces = if req.with_pieces {
            ids.iter()
                .map(|&id| prompter.detokenize(&[id]))
                .collect::<Result<Vec<_>, _>>()?
        } else {
            Vec::new()
        };
        Ok::<_, crate::engine::JobError>((ids, pieces))
    })
    .await
    .map_err(|e| ApiError::engine(format!("tokenizing stopped: {e}")))?
    .map_err(|e| ApiError::engine(e.to_string()))?;
    let tokens: Vec<Value> = if pieces.is_empty() {
        ids.iter().map(|&id| json!(id)).collect()
    } else {
        ids.iter()
            .zip(pieces)
            .map(|(&id, piece)| json!({ "id": id, "piece": piece }))
            .collect()
    };
    Ok(Json(json!({ "tokens": tokens })))
}

pub(super) async fn detokenize(
    State(st): State<ApiState>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let req: DetokenizeRequest = parse(&body)?;
    let content = st
        .engine()
        .prompter()
        .detokenize(&req.tokens)
        .map_err(|e| ApiError::bad_request(Some("tokens"), e.to_string()))?;
    Ok(Json(json!({ "content": content })))
}
