//! Browser sessions of the built-in server: each browser gets its own conversations.
//!
//! On a browser's first request the server sets a random cookie ([`CLIENT_COOKIE`], HttpOnly,
//! `SameSite=Strict`, `Path=/`); every later request carries it, and the layer turns it into
//! the [`Owner`] whose conversations the chat UI shows. The owner is a digest of the cookie,
//! so the database never holds a value that would let someone take a session over, and a
//! made-up cookie value names an owner nobody else has. This is separation between the
//! browsers of people who may already use the server, not a login: in LAN mode the guard's
//! key cookie is still required in front of it.

use axum::extract::Request;
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::app::service::Owner;

/// Name of the cookie that tells one browser's conversations from another's (the guard's
/// login cookie is a different one).
pub const CLIENT_COOKIE: &str = "smollm3_client";

/// Random bytes in a session token (shown as twice as many hex digits).
const TOKEN_BYTES: usize = 32;

/// How long a browser keeps its session: its conversations should survive a restart of the
/// browser, as the desktop's survive a restart of the app.
const MAX_AGE_S: u64 = 365 * 24 * 3600;

/// A fresh session token: 256 bits from the OS generator, as lowercase hex.
pub fn new_token() -> String {
    let mut bytes = [0u8; TOKEN_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex(&bytes)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether a cookie value has the shape of a token this server hands out; anything else is
/// replaced by a fresh one.
pub fn is_token(value: &str) -> bool {
    value.len() == TOKEN_BYTES * 2
        && value
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The owner a session token stands for.
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

/// Middleware: finds the request's session (or starts one), puts its [`Owner`] into the
/// request's extensions for the chat UI's handlers, and sets the cookie on the response when
/// the session is new.
pub async fn attach(mut req: Request, next: Next) -> Response {
    let found = super::guard::cookie(req.headers(), CLIENT_COOKIE)
        .filter(|v| is_token(v))
        .map(str::to_string);
    let (token, fresh) = match found {
        Some(t) => (t, false),
        None => (new_token(), true),
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
    fn tokens_are_random_hex_and_owners_are_digests() {
        let a = new_token();
        let b = new_token();
        assert_ne!(a, b);
        assert!(is_token(&a) && is_token(&b));
        assert!(!is_token("desktop"));
        assert!(!is_token(&a.to_uppercase()));
        assert!(!is_token(&a[1..]));
        let owner = owner_for(&a);
        assert_eq!(owner, owner_for(&a));
        assert_ne!(owner, owner_for(&b));
        assert!(owner.as_str().starts_with("web:"));
        assert!(!owner.as_str().contains(&a), "the token is not stored");
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
