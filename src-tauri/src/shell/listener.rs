//! The built-in server's connections: HTTP/1.1 over TCP, with bounds on what a client may hold.
//!
//! `axum::serve` sets no timer, so a client that opens a connection and sends nothing (or a
//! byte now and then) holds a file descriptor for ever; a few hundred of them exhaust a
//! process's descriptors (256 by default on macOS) and the server stops answering, `/health`
//! included, before the guard ever sees a request. So connections are served here, with:
//!
//! - a header-read timeout: a request's headers must arrive whole within it, and a kept-alive
//!   connection waiting for its next request is closed after it too (hyper starts the timer
//!   whenever it waits for a request head);
//! - a body timeout: a request body may not stall longer than it between two pieces
//!   (`tower_http`'s `RequestBodyTimeoutLayer`);
//! - a cap on open connections: when it is reached, new connections wait in the kernel's
//!   queue until one closes (which the timeouts guarantee), so descriptors never run out and
//!   every client, `/health` included, is served in its turn.
//!
//! Responses in progress (a streamed reply, the `/events` stream) are not cut by these
//! timeouts: they bound what a client sends, not what the server is still sending.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tower::ServiceExt;
use tower_http::timeout::RequestBodyTimeoutLayer;

/// What one client may hold of the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Time to send a request's headers, and to start the next request on an idle connection.
    pub header_timeout: Duration,
    /// Longest pause inside a request body.
    pub body_timeout: Duration,
    /// Connections open at once.
    pub max_connections: usize,
    /// After shutdown, how long a response in progress (a streamed reply, the `/events`
    /// stream) may go on before its connection is closed anyway.
    pub shutdown_grace: Duration,
}

impl Default for ConnectionLimits {
    /// Ten seconds for headers (and idle keep-alive), thirty for a stalled body, 128
    /// connections: room for a household of browsers (each keeps a few), well under the
    /// smallest common descriptor limit; five seconds for streams to end after shutdown.
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            max_connections: 128,
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// Serves `router` on `listener` until `shutdown` completes, then lets open connections end
/// their responses for up to `limits.shutdown_grace` and closes the rest; returns when every
/// connection is closed. Each request carries the client's address as [`ConnectInfo`].
pub async fn serve<F>(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    shutdown: F,
) -> std::io::Result<()>
where
    F: Future<Output = ()> + Send,
{
    let router = router.layer(RequestBodyTimeoutLayer::new(limits.body_timeout));
    let max = limits.max_connections.clamp(1, Semaphore::MAX_PERMITS);
    let slots = Arc::new(Semaphore::new(max));
    let (closing_tx, closing_rx) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            biased;
            _ = &mut shutdown => break,
            s = slots.clone().acquire_owned() => match s {
                Ok(s) => s,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            biased;
            _ = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone().map_request(
            move |mut req: axum::http::Request<Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                req
            },
        ));
        let mut closing = closing_rx.clone();
        let (header_timeout, grace) = (limits.header_timeout, limits.shutdown_grace);
        tokio::spawn(async move {
            let _slot = slot;
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(%peer, error = %e, "connection closed");
                    }
                }
                _ = async { drop(closing.wait_for(|c| *c).await) } => {
                    conn.as_mut().graceful_shutdown();
                    // An endless response (an SSE stream) would hold the connection for ever.
                    let _ = tokio::time::timeout(grace, conn).await;
                }
            }
        });
    }
    let _ = closing_tx.send(true);
    // Each connection gives its slot back when it ends.
    let _ = slots.acquire_many(max as u32).await;
    Ok(())
}

/// After a failed `accept`: a client that gave up is nothing; running out of descriptors is
/// waited out (it passes as connections close) rather than spun on.
async fn accept_failed(e: std::io::Error) {
    use std::io::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset | ErrorKind::Interrupted
    ) {
        return;
    }
    tracing::warn!(error = %e, "cannot accept a connection; retrying shortly");
    tokio::time::sleep(Duration::from_millis(200)).await;
}

/// Reads a duration in seconds from the command line (`0.5`, `10`).
pub fn parse_seconds(s: &str) -> Result<Duration, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(v.is_finite() && v > 0.0 && v <= 86_400.0) {
        return Err(format!("{s} s is out of range (above 0, at most a day)"));
    }
    Ok(Duration::from_secs_f64(v))
}
