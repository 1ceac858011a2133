//! RESP2, the Redis serialization protocol, as the gateway speaks it (issue 13): sans-IO. Requests
//! are parsed incrementally from whatever bytes have arrived ([`parse_request`]), replies encoded
//! into a buffer ([`Reply::encode`]). Nothing here reads a socket, so every edge (a request split at
//! any byte, a limit one byte over) is tested directly.
//!
//! A request is a multibulk (`*<n>\r\n` then n times `$<len>\r\n<bytes>\r\n`, what every client
//! library sends) or an inline command (`PING hello\r\n`, what a person types into `telnet`), split
//! on spaces with Redis's quoting rules ("double" with `\n`, `\xHH` ... escapes, 'single' with `\'`).
//! A framing error is answered with Redis's own wording (`-ERR Protocol error: ...`) and then, as
//! Redis does, the connection is closed: after one, where the next request starts is unknown.

use std::fmt;

/// The most a request may carry; a request over any of them is a protocol error naming the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of one bulk string (a key or a value).
    pub max_bulk: usize,
    /// Arguments of one multibulk request.
    pub max_args: usize,
    /// Bytes of one inline request line.
    pub max_inline: usize,
    /// Bytes of one whole request (an `MSET` of many large values, say): the other limits allow
    /// gigabytes, this is what bounds what a connection's buffer holds before a request is whole.
    pub max_request: usize,
}

/// The default [`Limits::max_request`].
pub const MAX_REQUEST_BYTES: usize = 8 << 20;

impl Default for Limits {
    fn default() -> Self {
        Limits { max_bulk: 1 << 20, max_args: 1 << 16, max_inline: 64 << 10, max_request: MAX_REQUEST_BYTES }
    }
}

impl Limits {
    /// The limits for a connection that has not yet given the password a gateway requires: Redis's
    /// own (at most 10 arguments of at most 16 KiB each), so that a client that has proven nothing
    /// cannot make the gateway hold megabytes per connection. `AUTH` and `HELLO` fit easily.
    pub fn before_auth(&self) -> Limits {
        const ARGS: usize = 10;
        const BULK: usize = 16 << 10;
        // `*10\r\n` and ten `$16384\r\n<16384 bytes>\r\n`, rounded up.
        const REQUEST: usize = 8 + ARGS * (BULK + 16);
        Limits {
            max_bulk: self.max_bulk.min(BULK),
            max_args: self.max_args.min(ARGS),
            max_inline: self.max_inline.min(BULK),
            max_request: self.max_request.min(REQUEST),
        }
    }
}

/// A framing error: the text Redis answers it with (after `-ERR `), then the connection closes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError(pub String);

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Protocol error: {}", self.0)
    }
}

impl std::error::Error for ProtocolError {}

/// One parsed request: its arguments (the command first), and how many bytes of the input it took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The arguments, binary-safe.
    pub args: Vec<Vec<u8>>,
    /// Bytes of the input this request took.
    pub consumed: usize,
}

fn err<T>(why: impl Into<String>) -> Result<T, ProtocolError> {
    Err(ProtocolError(why.into()))
}

/// The index of the `\r\n` that ends the line starting at `from`, if it has arrived.
fn line_end(buf: &[u8], from: usize) -> Option<usize> {
    buf.get(from..)?.windows(2).position(|w| w == b"\r\n").map(|i| from + i)
}

/// The longest line after a `*` or `$` (`-9223372036854775808` is 20 bytes). A longer one is refused
/// whether or not its end has arrived: the same bytes must parse the same however the network
/// splits them.
const MAX_LENGTH_LINE: usize = 32;

/// The index of the `\r\n` that ends the length line starting at `from`: `Ok(None)` until it
/// arrives, an error once it cannot end within [`MAX_LENGTH_LINE`] bytes.
fn length_line_end(buf: &[u8], from: usize, what: &str) -> Result<Option<usize>, ProtocolError> {
    let window = &buf[..buf.len().min(from + MAX_LENGTH_LINE + 2)];
    match line_end(window, from) {
        Some(end) => Ok(Some(end)),
        None if window.len() == from + MAX_LENGTH_LINE + 2 => err(format!("invalid {what} length")),
        None => Ok(None),
    }
}

/// Parses the length after a `*` or `$` on a line of its own (`-1` allowed only if `allow_null`).
fn parse_len(digits: &[u8], what: &str) -> Result<i64, ProtocolError> {
    let text = std::str::from_utf8(digits).map_err(|_| ProtocolError(format!("invalid {what} length")))?;
    text.parse::<i64>().map_err(|_| ProtocolError(format!("invalid {what} length")))
}

/// Parses the first request in `buf`. `Ok(None)`: it has not fully arrived (read more and call
/// again with the same bytes and more); never while `buf` holds more than [`Limits::max_request`]
/// bytes, so a caller that reads in chunks buffers at most that plus one chunk. Empty inline lines
/// are skipped (counted in `consumed`, with no arguments), as Redis does.
pub fn parse_request(buf: &[u8], limits: &Limits) -> Result<Option<Request>, ProtocolError> {
    let parsed = match buf.first() {
        None => Ok(None),
        Some(b'*') => parse_multibulk(buf, limits),
        Some(_) => parse_inline(buf, limits),
    };
    let too_big = match &parsed {
        Ok(None) => buf.len() > limits.max_request,
        // A whole request over the cap is refused too: the same bytes must not pass or fail with
        // how the network happened to split them.
        Ok(Some(r)) => r.consumed > limits.max_request,
        Err(_) => false,
    };
    if too_big {
        return err(format!("a request larger than {} bytes", limits.max_request));
    }
    parsed
}

fn parse_multibulk(buf: &[u8], limits: &Limits) -> Result<Option<Request>, ProtocolError> {
    let Some(end) = length_line_end(buf, 1, "multibulk")? else { return Ok(None) };
    let n = parse_len(&buf[1..end], "multibulk")?;
    if n > limits.max_args as i64 {
        return err(format!("invalid multibulk length: {n} arguments, the most is {}", limits.max_args));
    }
    let mut at = end + 2;
    if n <= 0 {
        return Ok(Some(Request { args: Vec::new(), consumed: at }));
    }
    let mut args = Vec::with_capacity(n as usize);
    for _ in 0..n {
        match buf.get(at) {
            None => return Ok(None),
            Some(b'$') => {}
            Some(&c) => return err(format!("expected '$', got '{}'", c as char)),
        }
        let Some(end) = length_line_end(buf, at + 1, "bulk")? else { return Ok(None) };
        let len = parse_len(&buf[at + 1..end], "bulk")?;
        if len < 0 {
            return err("invalid bulk length");
        }
        if len as u64 > limits.max_bulk as u64 {
            return err(format!("invalid bulk length: {len} bytes, the most is {}", limits.max_bulk));
        }
        let start = end + 2;
        let stop = start + len as usize;
        if buf.len() < stop + 2 {
            return Ok(None);
        }
        if &buf[stop..stop + 2] != b"\r\n" {
            return err("a bulk string does not end with CRLF");
        }
        args.push(buf[start..stop].to_vec());
        at = stop + 2;
    }
    Ok(Some(Request { args, consumed: at }))
}

fn parse_inline(buf: &[u8], limits: &Limits) -> Result<Option<Request>, ProtocolError> {
    let Some(newline) = buf.iter().position(|&b| b == b'\n') else {
        if buf.len() > limits.max_inline {
            return err(format!("too big inline request (the most is {} bytes)", limits.max_inline));
        }
        return Ok(None);
    };
    if newline > limits.max_inline {
        return err(format!("too big inline request (the most is {} bytes)", limits.max_inline));
    }
    let line = buf[..newline].strip_suffix(b"\r").unwrap_or(&buf[..newline]);
    let args = split_args(line).ok_or_else(|| ProtocolError("unbalanced quotes in request".into()))?;
    if args.iter().any(|a| a.len() > limits.max_bulk) {
        return err(format!("an inline argument is longer than {} bytes", limits.max_bulk));
    }
    Ok(Some(Request { args, consumed: newline + 1 }))
}

/// Splits an inline line into arguments as Redis's `sdssplitargs` does; `None` on unbalanced quotes
/// (or a closing quote not followed by a space).
pub fn split_args(line: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut args = Vec::new();
    let mut i = 0;
    loop {
        while i < line.len() && separates(line[i]) {
            i += 1;
        }
        if i == line.len() {
            return Some(args);
        }
        let mut arg = Vec::new();
        let (mut in_double, mut in_single) = (false, false);
        loop {
            let Some(&c) = line.get(i) else {
                if in_double || in_single {
                    return None;
                }
                break;
            };
            if in_double {
                if c == b'\\' && line.get(i + 1) == Some(&b'x') {
                    let hex = line.get(i + 2..i + 4).and_then(|h| std::str::from_utf8(h).ok());
                    if let Some(byte) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                        arg.push(byte);
                        i += 4;
                        continue;
                    }
                }
                if c == b'\\' && i + 1 < line.len() {
                    arg.push(match line[i + 1] {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'b' => 8,
                        b'a' => 7,
                        other => other,
                    });
                    i += 2;
                    continue;
                }
                if c == b'"' {
                    i = closed(line, i)?;
                    break;
                }
                arg.push(c);
            } else if in_single {
                if c == b'\\' && line.get(i + 1) == Some(&b'\'') {
                    arg.push(b'\'');
                    i += 2;
                    continue;
                }
                if c == b'\'' {
                    i = closed(line, i)?;
                    break;
                }
                arg.push(c);
            } else {
                match c {
                    // The same set the loop above skips: a byte that ends an argument but is not
                    // skipped would end every argument after it, empty, without end.
                    c if separates(c) => break,
                    b'"' => in_double = true,
                    b'\'' => in_single = true,
                    _ => arg.push(c),
                }
            }
            i += 1;
        }
        args.push(arg);
    }
}

/// The partition a key belongs to, by Redis Cluster's hash-tag convention: the bytes between the
/// first `{` and the first `}` after it, if there are any (`{volume-17}.primary` and
/// `{volume-17}.replica` share `volume-17`); otherwise the whole key (`{}x` and `a{b` are their
/// own partitions, as in Redis Cluster).
pub fn partition_of(key: &[u8]) -> &[u8] {
    if let Some(open) = key.iter().position(|&b| b == b'{') {
        if let Some(len) = key[open + 1..].iter().position(|&b| b == b'}') {
            if len > 0 {
                return &key[open + 1..open + 1 + len];
            }
        }
    }
    key
}

/// Whether `c` separates inline arguments: C's `isspace`, as Redis's `sdssplitargs`, and NUL.
fn separates(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c | 0)
}

/// Past the closing quote at `i`, which must be followed by a space or the end of the line.
fn closed(line: &[u8], i: usize) -> Option<usize> {
    match line.get(i + 1) {
        Some(&n) if !separates(n) => None,
        _ => Some(i + 1),
    }
}

/// A RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`: a status; must not contain CR or LF.
    Simple(String),
    /// `-ERR ...`: the whole text, its code first (`ERR`, `WRONGTYPE`, `CROSSSLOT`, ...); CR and LF
    /// are replaced by spaces.
    Error(String),
    /// `:42`.
    Integer(i64),
    /// `$3\r\nabc`, binary-safe.
    Bulk(Vec<u8>),
    /// `$-1`: no value.
    Nil,
    /// `*2\r\n...`.
    Array(Vec<Reply>),
    /// `*-1`: no array.
    NilArray,
}

impl Reply {
    /// `+OK`.
    pub fn ok() -> Reply {
        Reply::Simple("OK".into())
    }

    /// `-ERR <why>`.
    pub fn err(why: impl fmt::Display) -> Reply {
        Reply::Error(format!("ERR {why}"))
    }

    /// Appends the encoding of this reply to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Reply::Simple(s) => line(out, b'+', s.as_bytes()),
            Reply::Error(s) => {
                let clean: Vec<u8> =
                    s.bytes().map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }).collect();
                line(out, b'-', &clean)
            }
            Reply::Integer(n) => line(out, b':', n.to_string().as_bytes()),
            Reply::Bulk(bytes) => {
                line(out, b'$', bytes.len().to_string().as_bytes());
                out.extend_from_slice(bytes);
                out.extend_from_slice(b"\r\n");
            }
            Reply::Nil => out.extend_from_slice(b"$-1\r\n"),
            Reply::Array(items) => {
                line(out, b'*', items.len().to_string().as_bytes());
                for item in items {
                    item.encode(out);
                }
            }
            Reply::NilArray => out.extend_from_slice(b"*-1\r\n"),
        }
    }

    /// The encoding of this reply.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }
}

fn line(out: &mut Vec<u8>, tag: u8, body: &[u8]) {
    out.push(tag);
    out.extend_from_slice(body);
    out.extend_from_slice(b"\r\n");
}

/// Parses the first reply in `buf`, as a client reads it: `Ok(None)` until all of it has arrived;
/// otherwise the reply and how many bytes it took.
pub fn parse_reply(buf: &[u8]) -> Result<Option<(Reply, usize)>, ProtocolError> {
    parse_reply_nested(buf, 0)
}

/// Arrays nested deeper than this in a reply are refused: Redis's own replies nest a few levels
/// (`COMMAND DOCS` about six), and a hostile server's `*1\r\n*1\r\n...` must not overflow the stack.
const MAX_REPLY_DEPTH: usize = 64;

fn parse_reply_nested(buf: &[u8], depth: usize) -> Result<Option<(Reply, usize)>, ProtocolError> {
    if depth > MAX_REPLY_DEPTH {
        return err(format!("a reply nests arrays more than {MAX_REPLY_DEPTH} deep"));
    }
    let Some(end) = line_end(buf, 0) else { return Ok(None) };
    let text = || String::from_utf8_lossy(&buf[1..end]).into_owned();
    let reply = match buf[0] {
        b'+' => Reply::Simple(text()),
        b'-' => Reply::Error(text()),
        b':' => Reply::Integer(parse_len(&buf[1..end], "integer")?),
        b'$' => match parse_len(&buf[1..end], "bulk")? {
            -1 => Reply::Nil,
            n if n < 0 => return err("invalid bulk length"),
            n => {
                // Checked: a length near i64::MAX must not wrap around into a short slice.
                let Some(stop) = usize::try_from(n).ok().and_then(|n| (end + 2).checked_add(n)) else {
                    return err("invalid bulk length");
                };
                if buf.len().saturating_sub(2) < stop {
                    return Ok(None);
                }
                return Ok(Some((Reply::Bulk(buf[end + 2..stop].to_vec()), stop + 2)));
            }
        },
        b'*' => match parse_len(&buf[1..end], "multibulk")? {
            -1 => Reply::NilArray,
            n if n < 0 => return err("invalid multibulk length"),
            n => {
                let mut at = end + 2;
                let mut items = Vec::new();
                for _ in 0..n {
                    let Some((item, used)) = parse_reply_nested(&buf[at..], depth + 1)? else {
                        return Ok(None);
                    };
                    items.push(item);
                    at += used;
                }
                return Ok(Some((Reply::Array(items), at)));
            }
        },
        other => return err(format!("unexpected reply type '{}'", other as char)),
    };
    Ok(Some((reply, end + 2)))
}

/// The multibulk encoding of a request (what a client library sends).
pub fn encode_request(args: &[&[u8]]) -> Vec<u8> {
    Reply::Array(args.iter().map(|a| Reply::Bulk(a.to_vec())).collect()).to_bytes()
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_nul_or_any_space_in_an_inline_line_separates_arguments_and_never_loops() {
        // Regression: a NUL ended an argument but was not skipped, so the split never advanced.
        assert_eq!(split_args(b"GET\0k"), Some(vec![b"GET".to_vec(), b"k".to_vec()]));
        assert_eq!(split_args(b"\0\0"), Some(vec![]));
        assert_eq!(split_args(b"a\x0bb\x0cc"), Some(vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]));
        assert_eq!(split_args(b"\"x\"\0y"), Some(vec![b"x".to_vec(), b"y".to_vec()]));
    }

    use super::*;
    use proptest::prelude::*;

    #[test]
    fn replies_parse_back_whole_and_only_whole() {
        let replies = vec![
            Reply::ok(),
            Reply::err("boom"),
            Reply::Integer(-7),
            Reply::Bulk(b"a\r\nb".to_vec()),
            Reply::Nil,
            Reply::NilArray,
            Reply::Array(vec![Reply::Bulk(b"x".to_vec()), Reply::Array(vec![Reply::Integer(1)]), Reply::Nil]),
        ];
        for reply in replies {
            let bytes = reply.to_bytes();
            for cut in 0..bytes.len() {
                assert_eq!(parse_reply(&bytes[..cut]), Ok(None), "{reply:?} cut at {cut}");
            }
            assert_eq!(parse_reply(&bytes), Ok(Some((reply, bytes.len()))));
        }
        assert!(parse_reply(b"?what\r\n").is_err());
        // A hostile server: arrays nested without end, a bulk length near i64::MAX.
        let deep = b"*1\r\n".repeat(100_000);
        assert!(parse_reply(&deep).unwrap_err().0.contains("more than 64 deep"));
        let nested = b"*1\r\n".repeat(64).into_iter().chain(b":1\r\n".iter().copied()).collect::<Vec<_>>();
        assert!(matches!(parse_reply(&nested), Ok(Some((Reply::Array(_), _)))));
        assert_eq!(parse_reply(b"$9223372036854775807\r\nabc\r\n"), Ok(None), "incomplete, no panic");
    }

    fn parse(buf: &[u8]) -> Result<Option<Request>, ProtocolError> {
        parse_request(buf, &Limits::default())
    }

    fn args(r: &Request) -> Vec<&[u8]> {
        r.args.iter().map(Vec::as_slice).collect()
    }

    #[test]
    fn a_multibulk_request_parses_whole_and_says_what_it_took() {
        let mut buf = encode_request(&[b"SET", b"k", b"v\r\n\0"]);
        let len = buf.len();
        buf.extend_from_slice(b"*1\r\n$4\r\nPING\r\n");
        let r = parse(&buf).unwrap().unwrap();
        assert_eq!(args(&r), vec![&b"SET"[..], b"k", b"v\r\n\0"]);
        assert_eq!(r.consumed, len);
        let next = parse(&buf[r.consumed..]).unwrap().unwrap();
        assert_eq!(args(&next), vec![&b"PING"[..]]);
        // Values of 0 bytes are values.
        let empty = parse(&encode_request(&[b"SET", b"k", b""])).unwrap().unwrap();
        assert_eq!(empty.args[2], b"");
        assert_eq!(parse(b"*0\r\n").unwrap().unwrap(), Request { args: vec![], consumed: 4 });
    }

    #[test]
    fn a_request_cut_at_any_byte_waits_for_the_rest() {
        let buf = encode_request(&[b"MSET", b"{a}x", b"1", b"{a}y", b"22"]);
        for cut in 0..buf.len() {
            assert_eq!(parse(&buf[..cut]).unwrap(), None, "cut at {cut}");
        }
        assert!(parse(&buf).unwrap().is_some());
        let inline = b"SET k \"a b\"\r\n";
        for cut in 0..inline.len() {
            assert_eq!(parse(&inline[..cut]).unwrap(), None, "cut at {cut}");
        }
    }

    #[test]
    fn inline_requests_follow_redis_quoting() {
        let r = parse(b"SET key \"a b\\n\\x41\" 'it\\'s'\r\n").unwrap().unwrap();
        assert_eq!(args(&r), vec![&b"SET"[..], b"key", b"a b\nA", b"it's"]);
        let r = parse(b"  PING   \n").unwrap().unwrap();
        assert_eq!((args(&r), r.consumed), (vec![&b"PING"[..]], 10));
        assert_eq!(parse(b"\r\n").unwrap().unwrap().args, Vec::<Vec<u8>>::new());
        assert_eq!(parse(b"SET k \"open\r\n").unwrap_err().0, "unbalanced quotes in request");
        assert_eq!(parse(b"SET k \"a\"b\r\n").unwrap_err().0, "unbalanced quotes in request");
        // A NUL separates, as a space does (it once ended every argument after it, without end).
        assert_eq!(
            split_args(b"GET \0k\x0bv\x0c"),
            Some(vec![b"GET".to_vec(), b"k".to_vec(), b"v".to_vec()])
        );
    }

    #[test]
    fn before_auth_a_request_is_bounded_as_redis_bounds_it_and_auth_still_fits() {
        let limits = Limits::default().before_auth();
        let p = |b: &[u8]| parse_request(b, &limits);
        let auth = p(b"*3\r\n$4\r\nAUTH\r\n$7\r\ndefault\r\n$28\r\ncorrect horse battery staple\r\n");
        assert_eq!(auth.unwrap().unwrap().args.len(), 3);
        assert!(p(b"*11\r\n").unwrap_err().0.contains("11 arguments, the most is 10"));
        assert!(p(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$16385\r\n").unwrap_err().0.contains("the most is 16384"));
        // The largest request it allows is whole before the buffer limit refuses it.
        let mut big = b"*10\r\n".to_vec();
        for _ in 0..10 {
            big.extend_from_slice(b"$16384\r\n");
            big.extend(std::iter::repeat_n(b'x', 16384));
            big.extend_from_slice(b"\r\n");
        }
        assert_eq!(p(&big).unwrap().unwrap().consumed, big.len());
        assert!(limits.max_request < Limits::default().max_request / 40);
        // Never looser than the gateway's own limits.
        let tight = Limits { max_bulk: 4, max_args: 3, max_inline: 16, max_request: 30 };
        assert_eq!(tight.before_auth(), tight);
    }

    #[test]
    fn framing_errors_have_redis_words_and_limits_are_named() {
        let limits = Limits { max_bulk: 4, max_args: 3, max_inline: 16, max_request: 30 };
        let p = |b: &[u8]| parse_request(b, &limits);
        assert_eq!(p(b"*x\r\n").unwrap_err().to_string(), "Protocol error: invalid multibulk length");
        assert!(p(b"*4\r\n").unwrap_err().0.contains("the most is 3"));
        assert_eq!(p(b"*1\r\n+PING\r\n").unwrap_err().0, "expected '$', got '+'");
        assert!(p(b"*1\r\n$5\r\n").unwrap_err().0.contains("5 bytes, the most is 4"));
        assert_eq!(p(b"*1\r\n$-1\r\n").unwrap_err().0, "invalid bulk length");
        assert_eq!(p(b"*1\r\n$2\r\nabXY").unwrap_err().0, "a bulk string does not end with CRLF");
        assert!(p(&[b'a'; 17]).unwrap_err().0.contains("too big inline request"));
        assert!(p(b"GET abcde\r\n").unwrap_err().0.contains("longer than 4 bytes"));
        // A length line that never ends is refused rather than buffered for ever.
        assert!(p(&[b'*', b'1'].repeat(20)).is_err());
        // So is a request past the cap, whole or not.
        let big = b"*3\r\n$4\r\nabcd\r\n$4\r\nabcd\r\n$4\r\nabcd\r\n";
        assert_eq!(p(big).unwrap_err().0, "a request larger than 30 bytes");
        assert_eq!(p(&big[..31]).unwrap_err().0, "a request larger than 30 bytes");
        assert_eq!(p(&big[..30]), Ok(None));
    }

    #[test]
    fn replies_encode_as_redis_sends_them() {
        let r = Reply::Array(vec![
            Reply::ok(),
            Reply::err("wrong number of arguments for 'get' command"),
            Reply::Integer(-3),
            Reply::Bulk(b"a\r\nb".to_vec()),
            Reply::Nil,
            Reply::NilArray,
            Reply::Error("CROSSSLOT Keys in request don't hash to the same slot\r\n".into()),
        ]);
        let expected: &[u8] = b"*7\r\n+OK\r\n-ERR wrong number of arguments for 'get' command\r\n:-3\r\n\
$4\r\na\r\nb\r\n$-1\r\n*-1\r\n-CROSSSLOT Keys in request don't hash to the same slot  \r\n";
        assert_eq!(r.to_bytes(), expected);
    }

    #[test]
    fn hash_tags_name_the_partition_as_in_redis_cluster() {
        assert_eq!(partition_of(b"{volume-17}.primary"), b"volume-17");
        assert_eq!(partition_of(b"{volume-17}.replica"), b"volume-17");
        assert_eq!(partition_of(b"user:{42}:name"), b"42");
        assert_eq!(partition_of(b"{a}{b}"), b"a", "the first tag");
        assert_eq!(partition_of(b"plain"), b"plain");
        assert_eq!(partition_of(b"{}x"), b"{}x", "an empty tag is no tag");
        assert_eq!(partition_of(b"a{b"), b"a{b");
        assert_eq!(partition_of(b"a}b{c}"), b"c");
        assert_eq!(partition_of(b""), b"");
    }

    proptest! {
        /// Any requests, encoded back to back and delivered in any two pieces, parse back to the
        /// same arguments, one after the other.
        #[test]
        fn multibulk_round_trips_whatever_the_split(
            requests in proptest::collection::vec(
                proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 1..6), 1..5),
            split in any::<prop::sample::Index>(),
        ) {
            let mut wire = Vec::new();
            for r in &requests {
                let parts: Vec<&[u8]> = r.iter().map(Vec::as_slice).collect();
                wire.extend(encode_request(&parts));
            }
            let cut = split.index(wire.len() + 1);
            let mut buf = wire[..cut].to_vec();
            let mut rest = &wire[cut..];
            let mut got = Vec::new();
            loop {
                match parse(&buf).unwrap() {
                    Some(r) => {
                        got.push(r.args.clone());
                        buf.drain(..r.consumed);
                    }
                    None if rest.is_empty() => break,
                    None => {
                        buf.extend_from_slice(rest);
                        rest = &[];
                    }
                }
            }
            prop_assert_eq!(got, requests);
            prop_assert!(buf.is_empty());
        }
    }
}
