//! Serving `/metrics`: a small HTTP/1.1 server on std threads, away from the executors.
//!
//! Why by hand: the exporter's own listener renders only the `metrics` facade, and our histograms
//! ([`super::histogram`]) must be in the same answer. A scrape is one GET and one answer, so this
//! needs no HTTP stack: it reads one request head (bounded in size and time), answers `GET /metrics`
//! (and `HEAD`), 404 for any other path, 405 for any other method, and closes. A peer that connects
//! and sends nothing holds one of [`MAX_CONCURRENT`] answering threads for [`IO_TIMEOUT`] at most;
//! beyond that many, connections are closed at once, so no client can take the node down.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Connections answered at once.
pub const MAX_CONCURRENT: usize = 16;
/// How long a request may take to arrive, and an answer to leave.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest request head read.
const MAX_REQUEST_BYTES: usize = 8 << 10;

/// Binds `addr` and answers scrapes with `render()` on a thread of its own; returns the address
/// bound.
pub fn serve(
    addr: SocketAddr,
    render: impl Fn() -> String + Send + Sync + 'static,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let bound = listener.local_addr()?;
    let render = Arc::new(render);
    let busy = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new().name("metrics-http".into()).spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            if busy.fetch_add(1, Ordering::AcqRel) >= MAX_CONCURRENT {
                busy.fetch_sub(1, Ordering::AcqRel);
                continue; // dropped: closed at once
            }
            let (render, busy) = (render.clone(), busy.clone());
            let spawned = std::thread::Builder::new().name("metrics-answer".into()).spawn(move || {
                let _ = answer(stream, &*render);
                busy.fetch_sub(1, Ordering::AcqRel);
            });
            if spawned.is_err() {
                tracing::warn!("metrics: cannot start a thread to answer a scrape");
            }
        }
    })?;
    tracing::info!(%bound, "serving metrics at http://{bound}/metrics");
    Ok(bound)
}

fn answer(mut stream: TcpStream, render: &dyn Fn() -> String) -> std::io::Result<()> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > MAX_REQUEST_BYTES {
            return respond(
                &mut stream,
                "431 Request Header Fields Too Large",
                "request head too large\n",
                true,
            );
        }
    }
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut words = line.split_whitespace();
    let (method, target) = (words.next().unwrap_or_default(), words.next().unwrap_or_default());
    let path = target.split('?').next().unwrap_or_default();
    match (method, path) {
        ("GET" | "HEAD", "/metrics") => {
            let body = render();
            let head_only = method == "HEAD";
            let header = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            stream.write_all(header.as_bytes())?;
            if !head_only {
                stream.write_all(body.as_bytes())?;
            }
            stream.flush()
        }
        ("GET" | "HEAD", _) => {
            respond(&mut stream, "404 Not Found", "autopaxos serves /metrics only\n", method == "GET")
        }
        _ => respond(&mut stream, "405 Method Not Allowed", "GET /metrics\n", true),
    }
}

fn respond(stream: &mut TcpStream, status: &str, body: &str, with_body: bool) -> std::io::Result<()> {
    let header = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(header.as_bytes())?;
    if with_body {
        stream.write_all(body.as_bytes())?;
    }
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(addr: SocketAddr, request: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(request).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn answers_metrics_and_refuses_the_rest() {
        let addr = serve("127.0.0.1:0".parse().unwrap(), || "x_total 1\n".to_string()).unwrap();
        let ok = get(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n") && ok.ends_with("\r\n\r\nx_total 1\n"), "{ok}");
        assert!(ok.contains("Content-Length: 10\r\n"), "{ok}");
        let head = get(addr, b"HEAD /metrics?x=1 HTTP/1.1\r\n\r\n");
        assert!(head.starts_with("HTTP/1.1 200 OK") && head.ends_with("\r\n\r\n"), "{head}");
        assert!(get(addr, b"GET / HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
        assert!(get(addr, b"POST /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405"));
        // A head too large is answered 431 and closed (the client may see a reset instead, since
        // the server closes with bytes unread).
        let mut s = TcpStream::connect(addr).unwrap();
        let _ = s.write_all(&vec![b'a'; MAX_REQUEST_BYTES + 2048]);
        let mut answer = String::new();
        if s.read_to_string(&mut answer).is_ok() {
            assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
        }
        // The server is still there after all of it.
        assert!(get(addr, b"GET /metrics HTTP/1.0\n\n").contains("x_total 1"));
    }

    #[test]
    fn silent_clients_do_not_block_scrapes() {
        let addr = serve("127.0.0.1:0".parse().unwrap(), || "y 2\n".to_string()).unwrap();
        // More silent connections than answering threads: the extra ones are closed at once, and
        // a scrape after them is answered once a thread frees up (here: they are all held).
        let silent: Vec<TcpStream> =
            (0..MAX_CONCURRENT + 4).map(|_| TcpStream::connect(addr).unwrap()).collect();
        std::thread::sleep(Duration::from_millis(100));
        drop(silent);
        assert!(get(addr, b"GET /metrics HTTP/1.1\r\n\r\n").contains("y 2"));
    }
}
