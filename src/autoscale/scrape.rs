//! Fetching and reading a node's `/metrics`: a small HTTP/1.1 GET over a std `TcpStream` with short
//! timeouts (the autoscaler needs one request per node per interval, not an HTTP stack), and a parser
//! for the Prometheus text exposition format (version 0.0.4): `# HELP`/`# TYPE` lines are skipped,
//! each sample is `name{label="value",...} value [timestamp]`, label values escape `\\`, `\"` and `\n`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// The most bytes a response may have; a node's exposition is a few kilobytes.
const MAX_RESPONSE_BYTES: u64 = 16 << 20;

/// Why a scrape failed.
#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    /// Connecting, sending or reading failed (refused, timed out, reset).
    #[error("GET http://{addr}/metrics: {source}")]
    Io {
        /// The endpoint.
        addr: SocketAddr,
        /// What the socket said.
        source: std::io::Error,
    },
    /// The answer was not a usable HTTP response.
    #[error("GET http://{addr}/metrics: {why}")]
    Http {
        /// The endpoint.
        addr: SocketAddr,
        /// What was wrong.
        why: String,
    },
}

impl ScrapeError {
    /// Whether the node refused the connection (nothing listening: stopped, or not started yet).
    pub fn is_refused(&self) -> bool {
        matches!(self, ScrapeError::Io { source, .. } if source.kind() == std::io::ErrorKind::ConnectionRefused)
    }
}

/// `GET http://addr/metrics`; the body of a 200 response. The whole exchange (connect, request,
/// answer) takes at most `timeout`, however slowly the node trickles its answer.
pub fn fetch(addr: SocketAddr, timeout: Duration) -> Result<String, ScrapeError> {
    let io = |source| ScrapeError::Io { addr, source };
    let deadline = std::time::Instant::now() + timeout;
    let stream = TcpStream::connect_timeout(&addr, timeout).map_err(io)?;
    let mut stream = crate::runtime::exposition::Deadlined { stream, deadline };
    // One write: a request in pieces is several segments, and a server that answers after the first one
    // and closes resets the connection.
    let request =
        format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nAccept: text/plain\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).map_err(io)?;
    let mut raw = Vec::new();
    stream.take(MAX_RESPONSE_BYTES).read_to_end(&mut raw).map_err(io)?;
    parse_response(&raw).map_err(|why| ScrapeError::Http { addr, why })
}

/// The body of a complete HTTP/1.1 response with status 200 (content-length, chunked, or to the close).
pub fn parse_response(raw: &[u8]) -> Result<String, String> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("no end of headers in {} bytes", raw.len()))?;
    let head = std::str::from_utf8(&raw[..split]).map_err(|_| "headers are not UTF-8".to_string())?;
    let body = &raw[split + 4..];
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default();
    let code = status.split_whitespace().nth(1).unwrap_or_default();
    if !status.starts_with("HTTP/1.") || code != "200" {
        return Err(format!("status '{status}', expected 200"));
    }
    let mut chunked = false;
    let mut length = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else { continue };
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") && value.eq_ignore_ascii_case("chunked") {
            chunked = true;
        } else if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.parse::<usize>().map_err(|_| format!("bad content-length '{value}'"))?);
        }
    }
    let body = if chunked {
        dechunk(body)?
    } else if let Some(n) = length {
        body.get(..n).ok_or_else(|| format!("body has {} of {n} bytes", body.len()))?.to_vec()
    } else {
        body.to_vec()
    };
    String::from_utf8(body).map_err(|_| "body is not UTF-8".to_string())
}

fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let end = rest.windows(2).position(|w| w == b"\r\n").ok_or("truncated chunk size")?;
        let line = std::str::from_utf8(&rest[..end]).map_err(|_| "bad chunk size")?;
        let hex = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(hex, 16).map_err(|_| format!("bad chunk size '{hex}'"))?;
        rest = &rest[end + 2..];
        if size == 0 {
            return Ok(out);
        }
        let chunk = rest.get(..size).ok_or("truncated chunk")?;
        out.extend_from_slice(chunk);
        rest = rest.get(size + 2..).ok_or("truncated chunk end")?;
    }
}

/// One sample of the exposition.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name.
    pub name: String,
    /// Labels in the order given.
    pub labels: Vec<(String, String)>,
    /// The value (`+Inf`, `-Inf` and `NaN` included).
    pub value: f64,
}

impl Sample {
    /// The value of label `name`, if present.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// A line that is not a sample, with its 1-based number.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("line {line}: {why}: '{text}'")]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// What was wrong.
    pub why: &'static str,
    /// The line.
    pub text: String,
}

/// Every sample of a text exposition; comments and blank lines are skipped.
pub fn parse(text: &str) -> Result<Vec<Sample>, ParseError> {
    let mut samples = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let err = |why| ParseError { line: i + 1, why, text: raw.to_string() };
        let name_end = line.find(|c: char| c == '{' || c.is_whitespace()).ok_or_else(|| err("no value"))?;
        let name = &line[..name_end];
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            return Err(err("bad metric name"));
        }
        let mut rest = &line[name_end..];
        let mut labels = Vec::new();
        if let Some(after) = rest.strip_prefix('{') {
            let (parsed, after) = parse_labels(after).ok_or_else(|| err("bad labels"))?;
            labels = parsed;
            rest = after;
        }
        let value = rest.split_whitespace().next().ok_or_else(|| err("no value"))?;
        let value = match value {
            "+Inf" | "Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v.parse().map_err(|_| err("bad value"))?,
        };
        samples.push(Sample { name: name.to_string(), labels, value });
    }
    Ok(samples)
}

/// Labels after the `{`; returns them and what follows the `}`.
fn parse_labels(mut s: &str) -> Option<(Vec<(String, String)>, &str)> {
    let mut labels = Vec::new();
    loop {
        s = s.trim_start();
        if let Some(after) = s.strip_prefix('}') {
            return Some((labels, after));
        }
        let eq = s.find('=')?;
        let key = s[..eq].trim();
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return None;
        }
        s = s[eq + 1..].trim_start().strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (_, c) => value.push(c),
            }
        };
        labels.push((key.to_string(), value));
        s = s[end + 1..].trim_start();
        s = s.strip_prefix(',').unwrap_or(s);
    }
}

/// The sum of `name`'s samples whose labels include all of `labels`; `None` if there are none.
pub fn sum(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for s in samples.iter().filter(|s| s.name == name) {
        if labels.iter().all(|(k, v)| s.label(k) == Some(v)) {
            *found.get_or_insert(0.0) += s.value;
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP autopaxos_commands_applied_total Commands applied to the state machine.\n\
# TYPE autopaxos_commands_applied_total counter\n\
autopaxos_commands_applied_total{role=\"replica\",node=\"7\"} 12345\n\
autopaxos_commands_applied_total{role=\"replica\",node=\"8\"} 12000\n\
autopaxos_frames_in_total{role=\"batcher\",node=\"9\"} 1.5e3\n\
autopaxos_bad_frames_total{role=\"batcher\",node=\"9\",reason=\"a \\\"quoted\\\", odd\\\\one\\n\"} 2\n\
up 1 1700000000000\n\
weird{} +Inf\n\
\n";

    #[test]
    fn parses_samples_labels_escapes_and_special_values() {
        let s = parse(TEXT).unwrap();
        assert_eq!(s.len(), 6);
        assert_eq!(s[0].name, "autopaxos_commands_applied_total");
        assert_eq!(s[0].label("node"), Some("7"));
        assert_eq!(s[0].value, 12345.0);
        assert_eq!(s[2].value, 1500.0);
        assert_eq!(s[3].label("reason"), Some("a \"quoted\", odd\\one\n"));
        assert_eq!(s[4].name, "up");
        assert!(s[4].labels.is_empty());
        assert_eq!(s[5].value, f64::INFINITY);
        assert_eq!(sum(&s, "autopaxos_commands_applied_total", &[("role", "replica")]), Some(24345.0));
        assert_eq!(sum(&s, "autopaxos_commands_applied_total", &[("node", "8")]), Some(12000.0));
        assert_eq!(sum(&s, "autopaxos_commands_applied_total", &[("node", "9")]), None);
    }

    #[test]
    fn bad_lines_are_named() {
        let e = parse("ok 1\nbroken{role=\"x\" 3\n").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.to_string().contains("bad labels"), "{e}");
        assert_eq!(parse("x notanumber").unwrap_err().why, "bad value");
        assert_eq!(parse("x").unwrap_err().why, "no value");
    }

    #[test]
    fn http_bodies_by_length_chunked_and_to_the_close() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello world").unwrap();
        assert_eq!(r, "hello");
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;x=y\r\n world\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r, "hello world");
        assert_eq!(parse_response(b"HTTP/1.0 200 OK\r\n\r\nall of it").unwrap(), "all of it");
        let e = parse_response(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n").unwrap_err();
        assert!(e.contains("404"), "{e}");
        assert!(parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 50\r\n\r\nshort").is_err());
        assert!(parse_response(b"garbage").is_err());
    }

    #[test]
    fn a_closed_port_is_refused_quickly() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let e = fetch(SocketAddr::from(([127, 0, 0, 1], port)), Duration::from_millis(500)).unwrap_err();
        assert!(e.is_refused(), "{e}");
    }

    #[test]
    fn fetches_from_a_tiny_server() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut raw = Vec::new();
            let mut buf = [0u8; 1024];
            while !raw.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = conn.read(&mut buf).unwrap();
                assert!(n > 0, "the request ends with an empty line");
                raw.extend_from_slice(&buf[..n]);
            }
            let request = String::from_utf8_lossy(&raw).into_owned();
            let body = "m{role=\"batcher\",node=\"9\"} 42\n";
            write!(conn, "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}", body.len()).unwrap();
            request
        });
        let text = fetch(addr, Duration::from_secs(2)).unwrap();
        assert_eq!(sum(&parse(&text).unwrap(), "m", &[("role", "batcher")]), Some(42.0));
        let request = server.join().unwrap();
        assert!(request.starts_with("GET /metrics HTTP/1.1\r\n"), "{request}");
    }
}
