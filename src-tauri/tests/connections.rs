//! The real server under idle and slow clients: connections that send nothing, or headers a
//! byte at a time, or a body that stalls, are closed after the timeouts (short ones here), and
//! with hundreds of them open `/health` still answers: the connection cap keeps descriptors
//! from running out, and the timeouts free places for the clients waiting their turn.

mod serve_support;

use serve_support::Server;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Reads until the server closes the connection (end of stream or reset); false if it is
/// still open at `deadline`.
fn closed_by(stream: &mut TcpStream, deadline: Instant) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return false,
            Err(_) => return true,
        }
    }
}

#[test]
fn idle_and_slow_clients_are_cut_off_and_health_keeps_answering() {
    let server = Server::start(
        "connections",
        &[
            "--header-timeout",
            "0.5",
            "--body-timeout",
            "0.5",
            "--max-connections",
            "32",
        ],
    );
    let addr = server.base.trim_start_matches("http://").to_string();

    // Three hundred connections that never send a byte.
    let mut idle: Vec<TcpStream> = (0..300)
        .map(|_| TcpStream::connect(&addr).expect("connect"))
        .collect();
    let t0 = Instant::now();
    let mut health = TcpStream::connect(&addr).unwrap();
    write!(
        health,
        "GET /health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    health
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut answer = String::new();
    health.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"status\":\"ok\""), "{answer}");
    eprintln!(
        "/health answered in {:?} with 300 idle connections open",
        t0.elapsed()
    );
    assert!(t0.elapsed() < Duration::from_secs(30));

    // Every idle one was closed by the server.
    let deadline = Instant::now() + Duration::from_secs(30);
    for (i, s) in idle.iter_mut().enumerate() {
        assert!(closed_by(s, deadline), "idle connection {i} is still open");
    }

    // Headers a byte at a time: the timeout is for the whole head, not each byte.
    let mut slow = TcpStream::connect(&addr).unwrap();
    let started = Instant::now();
    let head = format!("GET /health HTTP/1.1\r\nHost: {addr}\r\nX-Slow: ");
    let mut cut = false;
    for b in head.bytes().chain(std::iter::repeat(b'a')) {
        if slow.write_all(&[b]).is_err() {
            cut = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
        if started.elapsed() > Duration::from_secs(10) {
            break;
        }
    }
    assert!(
        cut || closed_by(&mut slow, Instant::now() + Duration::from_secs(5)),
        "a trickling client kept its connection"
    );
    assert!(started.elapsed() < Duration::from_secs(10));

    // A body that stops halfway.
    let mut stalled = TcpStream::connect(&addr).unwrap();
    write!(
        stalled,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: 200\r\n\r\n{{\"messages\": ["
    )
    .unwrap();
    assert!(
        closed_by(&mut stalled, Instant::now() + Duration::from_secs(10)),
        "a stalled body kept its connection"
    );
}
