//! Where a file lives on the Hugging Face hub (or a mirror), and what the hub says about it.
//!
//! The hub serves `{endpoint}/{repo}/resolve/{revision}/{file}`. For a file stored with LFS
//! (every GGUF) a `HEAD` is answered with a redirect to a CDN and the headers `X-Linked-Etag`
//! (the file's sha256, quoted) and `X-Linked-Size`; for a small file kept in git the answer is
//! a plain 200 whose `ETag` is the git blob sha1. We read those headers from the first answer,
//! as the hub's own clients do, following only redirects that stay on the same host (renamed
//! repositories).

use super::error::HubError;
use reqwest::header::{HeaderMap, LOCATION};
use serde::{Deserialize, Serialize};

/// The public hub, used when neither a setting nor `HF_ENDPOINT` names another.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// A Hugging Face token and the one place it may go: HTTPS to the hub's own host and port.
///
/// The token opens the user's gated and private repositories, so it is never sent to a mirror
/// (a mirror is someone else's server), never over plain HTTP (anyone on the path would read
/// it), and never to a host a redirect points to (reqwest drops `Authorization` on redirects
/// that change host, port or scheme; the `HEAD` requests follow redirects by hand and send no
/// token past the first).
#[derive(Clone)]
pub struct Credential {
    token: String,
    host: String,
    port: u16,
}

impl std::fmt::Debug for Credential {
    // The token must never end up in a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("host", &self.host)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl Credential {
    /// `token` for the hub at `hub` (a base URL such as `https://huggingface.co`); `None` when
    /// the hub is not HTTPS, since the token would then travel in the clear.
    pub fn for_hub(token: impl Into<String>, hub: &str) -> Option<Self> {
        let url = reqwest::Url::parse(hub.trim()).ok()?;
        if url.scheme() != "https" {
            return None;
        }
        Some(Self {
            token: token.into(),
            host: url.host_str()?.to_ascii_lowercase(),
            port: url.port_or_known_default()?,
        })
    }

    /// The token, when `url` is HTTPS on the hub's host and port; `None` for anything else.
    pub fn for_url(&self, url: &str) -> Option<&str> {
        let url = reqwest::Url::parse(url).ok()?;
        let same = url.scheme() == "https"
            && url
                .host_str()
                .is_some_and(|h| h.eq_ignore_ascii_case(&self.host))
            && url.port_or_known_default() == Some(self.port);
        same.then_some(self.token.as_str())
    }
}

/// Where to download from and with which credentials.
#[derive(Clone, Debug, Default)]
pub struct HubConfig {
    /// Base URL files are downloaded from (the hub, or a mirror), without a trailing slash.
    pub endpoint: String,
    /// The token for gated or private repositories, bound to the hub's host.
    pub credential: Option<Credential>,
    /// Certificates (DER) to trust besides the public roots: for a hub or mirror behind a
    /// private certificate authority.
    pub extra_roots: Vec<Vec<u8>>,
}

impl HubConfig {
    /// The hub is `HF_ENDPOINT` (default: the public hub) and `HF_TOKEN` is bound to it; files
    /// come from `mirror` when one is given (a setting or `--endpoint`), else from the hub.
    /// The token is only ever sent to the hub itself, over HTTPS (see [`Credential`]).
    pub fn from_env(mirror: Option<&str>) -> Self {
        let hub = std::env::var("HF_ENDPOINT")
            .ok()
            .filter(|e| !e.trim().is_empty())
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_owned());
        let hub = hub.trim().trim_end_matches('/').to_owned();
        let credential = std::env::var("HF_TOKEN")
            .ok()
            .filter(|t| !t.trim().is_empty())
            .and_then(|t| {
                let c = Credential::for_hub(t.trim(), &hub);
                if c.is_none() {
                    tracing::warn!(hub, "HF_TOKEN is not sent: the hub address is not HTTPS");
                }
                c
            });
        let endpoint = mirror
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(|e| e.trim_end_matches('/').to_owned())
            .unwrap_or(hub);
        Self {
            endpoint,
            credential,
            extra_roots: Vec::new(),
        }
    }

    /// The token for a request to `url`, if it may carry one.
    pub fn token_for(&self, url: &str) -> Option<&str> {
        self.credential.as_ref()?.for_url(url)
    }
}

/// One file of one repository at one revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteFile {
    /// `owner/name`.
    pub repo: String,
    /// Path of the file inside the repository.
    pub file: String,
    /// Branch, tag or commit; `main` by default.
    pub revision: String,
}

impl RemoteFile {
    /// A file at a revision, checking the names a user typed.
    pub fn new(
        repo: impl Into<String>,
        file: impl Into<String>,
        revision: impl Into<String>,
    ) -> Result<Self, HubError> {
        let (repo, file, revision) = (repo.into(), file.into(), revision.into());
        let parts: Vec<&str> = repo.split('/').collect();
        if parts.len() != 2
            || parts
                .iter()
                .any(|p| p.is_empty() || *p == "." || *p == "..")
        {
            return Err(HubError::InvalidInput(format!(
                "repository must look like OWNER/NAME, got {repo:?}"
            )));
        }
        if file.is_empty()
            || file
                .split('/')
                .any(|p| p.is_empty() || p == "." || p == "..")
        {
            return Err(HubError::InvalidInput(format!(
                "invalid file name {file:?}"
            )));
        }
        if revision.is_empty() || revision.contains("..") {
            return Err(HubError::InvalidInput(format!(
                "invalid revision {revision:?}"
            )));
        }
        Ok(Self {
            repo,
            file,
            revision,
        })
    }

    /// The download URL under `endpoint`.
    pub fn url(&self, endpoint: &str) -> String {
        // A revision such as `refs/pr/1` must stay one path segment.
        let revision = self.revision.replace('/', "%2F");
        format!(
            "{}/{}/resolve/{}/{}",
            endpoint.trim_end_matches('/'),
            self.repo,
            revision,
            self.file
        )
    }

    /// The name the file gets in the models folder: its last path component.
    pub fn local_name(&self) -> &str {
        self.file.rsplit('/').next().unwrap_or(&self.file)
    }
}

/// What the hub announces about a file before it is downloaded.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteMeta {
    /// Size in bytes, when announced.
    pub size: Option<u64>,
    /// sha256 of the content (LFS files), lower-case hex.
    pub sha256: Option<String>,
    /// git blob sha1 (files kept in git), lower-case hex.
    pub git_sha1: Option<String>,
    /// The commit the revision resolved to, when announced.
    pub commit: Option<String>,
}

/// Reads the hub's headers from the first answer to a `HEAD`.
pub(crate) fn meta_from_headers(headers: &HeaderMap) -> RemoteMeta {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.trim().to_owned())
    };
    let unquote = |s: String| {
        s.trim_start_matches("W/")
            .trim_matches('"')
            .to_ascii_lowercase()
    };
    let linked_etag = text("x-linked-etag").map(unquote);
    let etag = text("etag").map(unquote);
    let linked_size = text("x-linked-size").and_then(|s| s.parse().ok());
    let length = text("content-length").and_then(|s| s.parse().ok());
    let commit = text("x-repo-commit");
    match linked_etag {
        Some(sha) if is_hex(&sha, 64) => RemoteMeta {
            size: linked_size.or(length),
            sha256: Some(sha),
            git_sha1: None,
            commit,
        },
        _ => {
            // Not LFS: the ETag is the git blob sha1, and a 200 carries the real length.
            let git_sha1 = etag.filter(|e| is_hex(e, 40));
            RemoteMeta {
                size: linked_size.or(length),
                sha256: None,
                git_sha1,
                commit,
            }
        }
    }
}

/// Whether `s` is exactly `len` hex digits.
pub(crate) fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Asks the hub about `remote` with `HEAD`, following same-host redirects only.
pub(crate) async fn head(
    client: &reqwest::Client,
    config: &HubConfig,
    remote: &RemoteFile,
) -> Result<RemoteMeta, HubError> {
    let mut url = remote.url(&config.endpoint);
    for _ in 0..5 {
        let mut req = client.head(&url);
        if let Some(token) = config.token_for(&url) {
            req = req.bearer_auth(token);
        }
        let resp = req.send().await.map_err(|e| network_error(&url, &e))?;
        let status = resp.status();
        let meta = meta_from_headers(resp.headers());
        if status.is_redirection() {
            if meta.sha256.is_some() {
                return Ok(meta);
            }
            let location = resp
                .headers()
                .get(LOCATION)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| HubError::Protocol {
                    url: url.clone(),
                    detail: "redirect without a Location".into(),
                })?;
            let next = resp.url().join(location).map_err(|e| HubError::Protocol {
                url: url.clone(),
                detail: format!("bad redirect {location:?}: {e}"),
            })?;
            if next.host_str() != resp.url().host_str() {
                // A CDN redirect without the LFS headers: the CDN's own answer tells the size.
                let resp = client
                    .head(next.as_str())
                    .send()
                    .await
                    .map_err(|e| network_error(&url, &e))?;
                check_status(resp.status().as_u16(), &url, 1)?;
                return Ok(meta_from_headers(resp.headers()));
            }
            url = next.to_string();
            continue;
        }
        check_status(status.as_u16(), &url, 1)?;
        return Ok(meta);
    }
    Err(HubError::Protocol {
        url,
        detail: "too many redirects".into(),
    })
}

/// Maps a final HTTP status to an error (2xx passes).
pub(crate) fn check_status(status: u16, url: &str, attempts: u32) -> Result<(), HubError> {
    match status {
        200..=299 => Ok(()),
        401 | 403 => Err(HubError::Unauthorized {
            url: url.to_owned(),
            status,
        }),
        404 => Err(HubError::NotFound {
            url: url.to_owned(),
        }),
        _ => Err(HubError::Http {
            url: url.to_owned(),
            status,
            attempts,
        }),
    }
}

/// Whether a status is worth asking again for (server trouble, rate limits).
pub(crate) fn is_retryable_status(status: u16) -> bool {
    status == 408 || status == 429 || (500..=599).contains(&status)
}

/// A connection-level failure as a [`HubError::Network`].
pub(crate) fn network_error(url: &str, e: &reqwest::Error) -> HubError {
    let host = reqwest::Url::parse(url)
        .ok()
        .and_then(|u| {
            u.host_str().map(|h| match u.port() {
                Some(p) => format!("{h}:{p}"),
                None => h.to_owned(),
            })
        })
        .unwrap_or_else(|| url.to_owned());
    HubError::Network {
        host,
        detail: error_chain(e),
    }
}

/// An error and its causes on one line.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn urls_follow_the_hub_layout() {
        let f = RemoteFile::new("ggml-org/SmolLM3-3B-GGUF", "SmolLM3-Q4_K_M.gguf", "main").unwrap();
        assert_eq!(
            f.url("https://huggingface.co/"),
            "https://huggingface.co/ggml-org/SmolLM3-3B-GGUF/resolve/main/SmolLM3-Q4_K_M.gguf"
        );
        let f = RemoteFile::new("a/b", "sub/x.gguf", "refs/pr/1").unwrap();
        assert_eq!(
            f.url("http://h"),
            "http://h/a/b/resolve/refs%2Fpr%2F1/sub/x.gguf"
        );
        assert_eq!(f.local_name(), "x.gguf");
    }

    #[test]
    fn bad_names_are_refused() {
        assert!(RemoteFile::new("noslash", "f", "main").is_err());
        assert!(RemoteFile::new("a/b", "../etc/passwd", "main").is_err());
        assert!(RemoteFile::new("a/b/c", "f", "main").is_err());
        assert!(RemoteFile::new("a/b", "f", "").is_err());
    }

    #[test]
    fn lfs_headers_give_sha256_and_size() {
        let mut h = HeaderMap::new();
        let sha = "a".repeat(64);
        h.insert(
            "x-linked-etag",
            HeaderValue::from_str(&format!("\"{sha}\"")).unwrap(),
        );
        h.insert("x-linked-size", HeaderValue::from_static("1234"));
        h.insert("etag", HeaderValue::from_static("W/\"12-abc\""));
        h.insert("content-length", HeaderValue::from_static("12"));
        let m = meta_from_headers(&h);
        assert_eq!(m.sha256.as_deref(), Some(sha.as_str()));
        assert_eq!(m.size, Some(1234));
    }

    #[test]
    fn git_files_give_blob_sha1() {
        let mut h = HeaderMap::new();
        let sha1 = "b".repeat(40);
        h.insert(
            "etag",
            HeaderValue::from_str(&format!("\"{sha1}\"")).unwrap(),
        );
        h.insert("content-length", HeaderValue::from_static("99"));
        let m = meta_from_headers(&h);
        assert_eq!(m.sha256, None);
        assert_eq!(m.git_sha1.as_deref(), Some(sha1.as_str()));
        assert_eq!(m.size, Some(99));
    }

    #[test]
    fn the_token_goes_only_over_https_to_the_hub_host() {
        let c = Credential::for_hub("hf_secret", "https://huggingface.co").unwrap();
        assert_eq!(
            c.for_url("https://huggingface.co/a/b/resolve/main/f.gguf"),
            Some("hf_secret")
        );
        assert_eq!(c.for_url("https://HuggingFace.co:443/x"), Some("hf_secret"));
        for other in [
            "http://huggingface.co/x",
            "https://huggingface.co:8443/x",
            "https://hf-mirror.com/x",
            "https://huggingface.co.evil.example/x",
            "https://cdn-lfs.huggingface.co/x",
            "http://127.0.0.1:8080/x",
            "not a url",
        ] {
            assert_eq!(c.for_url(other), None, "{other}");
        }
        assert!(Credential::for_hub("t", "http://127.0.0.1:9").is_none());
        assert!(!format!("{c:?}").contains("hf_secret"));
    }
}
