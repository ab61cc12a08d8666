//! Browser sessions of the built-in server: each browser gets its own conversations.
//!
//! On a browser's first request the server sets a cookie ([`CLIENT_COOKIE`], HttpOnly,
//! `SameSite=Strict`, `Path=/`) holding a session id it made: 16 random bytes and a tag, an
//! HMAC-SHA256 of those bytes under a key kept in the database (so ids outlive a restart). The
//! layer turns a valid id into the [`Owner`] whose conversations the chat UI shows; the owner
//! is a digest of the id, so the database never holds a value that would let someone take a
//! session over.
//!
//! Only ids this server made are accepted: a made-up value of the right shape fails the tag
//! and gets a fresh session. That matters because cookies are not separated by port: any page
//! served from 127.0.0.1 could plant a value, and two browsers (or a browser and whoever
//! planted it) would share conversations if any well-formed value were taken as a session.
//! Ids from before they were signed (random hex of the same length) are still honoured when
//! their owner already has conversations, which only a real, earlier-issued id can have.
//!
//! This is separation between the browsers of people who may already use the server, not a
//! login: in LAN mode the guard's key cookie is still required in front of it.

use crate::hub::local::hex;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::app::service::{ChatService, Owner};

/// Name of the cookie that tells one browser's conversations from another's (the guard's
/// login cookie is a different one).
pub const CLIENT_COOKIE: &str = "smollm3_client";

/// Random bytes in a session id.
const NONCE_BYTES: usize = 16;

/// Bytes of the tag that proves the server made the id.
const TAG_BYTES: usize = 16;

/// Length of an id as hex digits.
const TOKEN_HEX: usize = 2 * (NONCE_BYTES + TAG_BYTES);

/// How long a browser keeps its session: its conversations should survive a restart of the
/// browser, as the desktop's survive a restart of the app.
const MAX_AGE_S: u64 = 365 * 24 * 3600;

fn tag(key: &[u8; 32], nonce_hex: &str) -> Hmac<Sha256> {
    // A key of any length is accepted by HMAC; 32 bytes cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(b"smollm3-bot browser session v2\0");
    mac.update(nonce_hex.as_bytes());
    mac
}

/// A fresh session id signed with `key`: 128 random bits from the OS generator and a 128-bit
/// tag, as lowercase hex.
pub fn new_token(key: &[u8; 32]) -> String {
    let mut nonce = [0u8; NONCE_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let nonce = hex(&nonce);
    let t = tag(key, &nonce).finalize().into_bytes();
    format!("{nonce}{}", hex(&t[..TAG_BYTES]))
}

/// Whether a cookie value has the shape of an id this server hands out.
pub fn is_token(value: &str) -> bool {
    value.len() == TOKEN_HEX
        && value
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Whether `token` is an id signed with `key` (compared in constant time).
pub fn verify(key: &[u8; 32], token: &str) -> bool {
    if !is_token(token) {
        return false;
    }
    let (nonce, t) = token.split_at(NONCE_BYTES * 2);
    let Some(t) = unhex(t) else { return false };
    tag(key, nonce).verify_truncated_left(&t).is_ok()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The owner a session id stands for.
pub fn owner_for(token: &str) -> Owner {
    let mut h = Sha256::new();
    h.update(b"smollm3-bot browser session v1\0");
    h.update(token.as_bytes());
    Owner::browser(&hex(&h.finalize()))
}

/// The `Set-Cookie` value that gives a browser `token`.
pub fn set_cookie(token: &str) -> String {
    format!("{CLIENT_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={MAX_AGE_S}")
}

/// Whether `service` accepts `value` as a session id: signed by it, or an unsigned id from
/// before signing whose owner already has conversations.
fn accepted(service: &ChatService, key: &[u8; 32], value: &str) -> bool {
    is_token(value)
        && (verify(key, value) || service.owner_exists(&owner_for(value)).unwrap_or(false))
}

/// Middleware: finds the request's session (or starts one), puts its [`Owner`] into the
/// request's extensions for the chat UI's handlers, and sets the cookie on the response when
/// the session is new.
pub async fn attach(State(service): State<ChatService>, mut req: Request, next: Next) -> Response {
    let key = match service.session_secret() {
        Ok(k) => k,
        Err(e) => {
            tracing::warn!(error = %e, "no session key");
            return super::handler::UiError::from(e).into_response();
        }
    };
    let found = super::guard::cookie(req.headers(), CLIENT_COOKIE)
        .filter(|v| accepted(&service, &key, v))
        .map(str::to_string);
    let (token, fresh) = match found {
        Some(t) => (t, false),
        None => (new_token(&key), true),
    };
    req.extensions_mut().insert(owner_for(&token));
    let mut resp = next.run(req).await;
    if fresh {
        match HeaderValue::from_str(&set_cookie(&token)) {
            Ok(v) => {
                resp.headers_mut().append(header::SET_COOKIE, v);
            }
            Err(e) => tracing::warn!(error = %e, "could not set the session cookie"),
        }
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_signed_random_hex_and_owners_are_digests() {
        let key = [7u8; 32];
        let a = new_token(&key);
        let b = new_token(&key);
        assert_ne!(a, b);
        assert!(is_token(&a) && is_token(&b));
        assert!(verify(&key, &a) && verify(&key, &b));
        assert!(!verify(&[8u8; 32], &a), "another server's key");
        let mut forged = a.clone();
        let last = if forged.ends_with('0') { "1" } else { "0" };
        forged.replace_range(TOKEN_HEX - 1.., last);
        assert!(!verify(&key, &forged));
        assert!(!verify(&key, &"0".repeat(TOKEN_HEX)));
        assert!(!is_token("desktop"));
        assert!(!is_token(&a.to_uppercase()));
        assert!(!is_token(&a[1..]));
        let owner = owner_for(&a);
        assert_eq!(owner, owner_for(&a));
        assert_ne!(owner, owner_for(&b));
        assert!(owner.as_str().starts_with("web:"));
        assert!(!owner.as_str().contains(&a), "the id is not stored");
        assert_ne!(owner, Owner::desktop());
    }

    #[test]
    fn the_cookie_is_http_only_same_site_strict_for_the_whole_site() {
        let c = set_cookie("abc");
        assert!(c.starts_with("smollm3_client=abc;"));
        for part in ["HttpOnly", "SameSite=Strict", "Path=/"] {
            assert!(c.split("; ").any(|p| p == part), "{c}");
        }
    }
}
