//! Serving `/metrics`: a small HTTP/1.1 server on std threads, away from the executors.
//!
//! Why by hand: the exporter's own listener renders only the `metrics` facade, and our histograms
//! ([`super::histogram`]) must be in the same answer. A scrape is one GET and one answer, so this
//! needs no HTTP stack: it reads one request head (bounded in size and time), answers `GET /metrics`
//! (and `HEAD`), 404 for any other path, 405 for any other method, and closes. A connection has
//! [`IO_TIMEOUT`] in all to send its request and take the answer (a deadline for the whole
//! exchange, not per read, so trickling bytes does not extend it), and holds one of
//! [`MAX_CONCURRENT`] answering threads meanwhile. When every thread is taken, the connection that
//! has waited longest without sending its request is closed to make room: idle sockets cannot keep
//! a scrape out (sixteen of them, renewed every few seconds, once did), since a scrape sends its
//! request at once. So no client can take the node down, though a flood of them can delay scrapes.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Connections answered at once.
pub const MAX_CONCURRENT: usize = 16;
/// How long a connection may take to send its request and take the answer, in all.
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
    let waiting = Arc::new(Waiting::default());
    std::thread::Builder::new().name("metrics-http".into()).spawn(move || {
        for stream in listener.incoming() {
            let stream = match stream {
                Ok(stream) => stream,
                Err(e) => {
                    // Out of file descriptors or memory: the connection stays in the backlog, so
                    // retrying at once would spin; wait a little.
                    tracing::warn!("metrics: cannot accept a connection: {e}");
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
            };
            if busy.load(Ordering::Acquire) >= MAX_CONCURRENT {
                // Its thread sees the close, gives its slot back and ends; the new connection may
                // use one of the spare slots meanwhile.
                waiting.close_oldest();
            }
            let Some(slot) = Slot::take(&busy) else { continue }; // dropped: closed at once
            let (render, waiting) = (render.clone(), waiting.clone());
            let spawned = std::thread::Builder::new().name("metrics-answer".into()).spawn(move || {
                let _slot = slot;
                let _ = answer(stream, &*render, &waiting);
            });
            if spawned.is_err() {
                tracing::warn!("metrics: cannot start a thread to answer a scrape");
            }
        }
    })?;
    tracing::info!(%bound, "serving metrics at http://{bound}/metrics");
    Ok(bound)
}

/// Connections whose request has not come in yet, oldest first, each with a handle to close it.
#[derive(Default)]
struct Waiting {
    next_id: AtomicUsize,
    streams: std::sync::Mutex<std::collections::VecDeque<(usize, TcpStream)>>,
}

impl Waiting {
    /// Notes a connection waiting for its request; `None` if its handle cannot be had (it is
    /// then served, just not evictable).
    fn add(&self, stream: &TcpStream) -> Option<usize> {
        let handle = stream.try_clone().ok()?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.streams.lock().unwrap_or_else(|e| e.into_inner()).push_back((id, handle));
        Some(id)
    }

    fn remove(&self, id: usize) {
        self.streams.lock().unwrap_or_else(|e| e.into_inner()).retain(|(i, _)| *i != id);
    }

    fn close_oldest(&self) {
        if let Some((_, oldest)) = self.streams.lock().unwrap_or_else(|e| e.into_inner()).pop_front() {
            let _ = oldest.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// One of the answering threads, given back when dropped (also if the thread could not start or
/// its answer panicked).
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(busy: &Arc<AtomicUsize>) -> Option<Slot> {
        // Twice the answering threads: room for new connections while closed ones wind down.
        if busy.fetch_add(1, Ordering::AcqRel) >= 2 * MAX_CONCURRENT {
            busy.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Slot(busy.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A stream whose reads and writes share one deadline (socket timeouts apply per call: a peer
/// trickling bytes would extend them without end).
pub struct Deadlined {
    /// The stream.
    pub stream: TcpStream,
    /// When every read and write after it fails with `TimedOut`.
    pub deadline: Instant,
}

impl Deadlined {
    fn left(&self) -> std::io::Result<Duration> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "the scrape took too long"));
        }
        Ok(left)
    }
}

impl Read for Deadlined {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.stream.set_read_timeout(Some(self.left()?))?;
        self.stream.read(buf)
    }
}

impl Write for Deadlined {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.stream.set_write_timeout(Some(self.left()?))?;
        self.stream.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.stream.flush()
    }
}

fn answer(stream: TcpStream, render: &dyn Fn() -> String, waiting: &Waiting) -> std::io::Result<()> {
    let mut stream = Deadlined { stream, deadline: Instant::now() + IO_TIMEOUT };
    let id = waiting.add(&stream.stream);
    let head = read_head(&mut stream);
    if let Some(id) = id {
        waiting.remove(id);
    }
    let head = match head? {
        Some(head) => head,
        None => return Ok(()),
    };
    if head.len() > MAX_REQUEST_BYTES {
        return respond(&mut stream, "431 Request Header Fields Too Large", "request head too large\n", true);
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

/// The request head, or more than [`MAX_REQUEST_BYTES`] of it; `None` if the peer closed first.
fn read_head(stream: &mut Deadlined) -> std::io::Result<Option<Vec<u8>>> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Ok(None);
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > MAX_REQUEST_BYTES {
            break;
        }
    }
    Ok(Some(head))
}

fn respond(stream: &mut impl Write, status: &str, body: &str, with_body: bool) -> std::io::Result<()> {
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
        // Twice as many silent connections as answering threads, kept open: every scrape is still
        // answered, at once (the silent ones that waited longest are closed to make room).
        let silent: Vec<TcpStream> =
            (0..2 * MAX_CONCURRENT).map(|_| TcpStream::connect(addr).unwrap()).collect();
        std::thread::sleep(Duration::from_millis(100));
        for _ in 0..5 {
            let started = Instant::now();
            let answer = get(addr, b"GET /metrics HTTP/1.1\r\n\r\n");
            assert!(answer.contains("y 2"), "a scrape beside silent clients: {answer:?}");
            assert!(started.elapsed() < IO_TIMEOUT / 2, "answered only after {:?}", started.elapsed());
            // The attacker renews its silent connections.
            let _more: Vec<TcpStream> =
                (0..MAX_CONCURRENT).map(|_| TcpStream::connect(addr).unwrap()).collect();
            std::thread::sleep(Duration::from_millis(50));
        }
        drop(silent);
    }

    #[test]
    fn a_client_that_trickles_its_request_is_cut_off_at_the_deadline() {
        let addr = serve("127.0.0.1:0".parse().unwrap(), || "z 3\n".to_string()).unwrap();
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        let started = Instant::now();
        // A byte every half second never completes a head (nor reaches its size bound): the
        // server closes at IO_TIMEOUT in all, not IO_TIMEOUT after the last byte.
        let cut_off = loop {
            assert!(started.elapsed() < IO_TIMEOUT * 3, "the trickling client was never cut off");
            if s.write_all(b"G").is_err() {
                break started.elapsed();
            }
            let mut buf = [0u8; 16];
            match s.read(&mut buf) {
                Ok(0) => break started.elapsed(),
                Err(e)
                    if e.kind() != std::io::ErrorKind::WouldBlock
                        && e.kind() != std::io::ErrorKind::TimedOut =>
                {
                    break started.elapsed()
                }
                _ => {}
            }
        };
        assert!(cut_off >= IO_TIMEOUT && cut_off < IO_TIMEOUT + Duration::from_secs(2), "{cut_off:?}");
    }
}
