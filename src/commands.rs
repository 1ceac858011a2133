//! The gateway's commands: a parsed RESP request becomes either a reply the gateway gives itself
//! (`PING`, `HELLO`, `CLIENT SETNAME`, ...) or a few KV ops for the log and the rule that turns
//! their results into the reply ([`plan`], [`render`]). Sans-IO, like the codec in `crate::resp`.
//!
//! Keys map onto the store's (partition, item) by Redis Cluster's hash-tag rule
//! ([`crate::resp::partition_of`]): `{volume-17}.primary` is item `{volume-17}.primary` of
//! partition `volume-17`; a key without a tag is the item `""` of its own partition. A command over
//! many keys must keep them in one partition (else `-CROSSSLOT`, as Redis Cluster answers), and a
//! transaction (`APX.TXN`) is all or nothing within it, as Physalia's are.
//!
//! Errors use Redis's wording where Redis has one, so client libraries map them as they do for
//! Redis; a command that fails leaves the connection usable.

use crate::protocol::state_machine::kv::{
    Condition, KvError, KvOp, KvResult, Write, MAX_BATCH_OPS, MAX_KEY_BYTES, MAX_TXN_OPS, MAX_VALUE_BYTES,
};
use crate::resp::{partition_of, Reply};
use bytes::Bytes;

/// What a request needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// The gateway answers at once.
    Reply(Reply),
    /// The gateway answers, then closes the connection (`QUIT`).
    Close(Reply),
    /// Ops for the log, in order, and how their results become the reply.
    Cluster(Vec<KvOp>, Render),
}

/// How the results of a command's ops become its reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Render {
    /// `[Get]`: the value or nil.
    Value,
    /// `[Get]`: `[value, version]` or nil (`APX.GETV`).
    ValueAndVersion,
    /// `[Get]?` then a put or a transaction (`SET`): `+OK`/nil, or with `GET` the old value.
    Set {
        /// The first op read the old value, which is the reply.
        get: bool,
    },
    /// `[Delete]*`: how many existed.
    Deleted,
    /// `[Get]*`: how many exist (a key named twice counts twice, as in Redis).
    Exists,
    /// `[Increment]`: the new value.
    Integer,
    /// `[Get]*`: an array of values and nils.
    Values,
    /// `[Txn]` with no conditions: `+OK`.
    Ok,
    /// `[Get, Delete]`: the value that was there, or nil.
    Taken,
    /// `[Txn]`: `["committed", version]` or `["failed", index of the first condition that did not hold]`.
    Transaction,
}

/// What `INFO`, `HELLO` and `CLIENT` report of the gateway and the connection.
#[derive(Debug, Clone, Default)]
pub struct Context {
    /// The cluster's id.
    pub cluster_id: String,
    /// This gateway's node id.
    pub node: u32,
    /// The leader the gateway was last told of.
    pub leader: Option<u32>,
    /// Whether the cluster keeps its state on disk, if known.
    pub durable: Option<bool>,
    /// Connections open now.
    pub connections: usize,
}

impl Context {
    /// Whether the cluster is durable, as `INFO` and `CONFIG GET appendonly` say it.
    fn durable_word(&self) -> &'static str {
        match self.durable {
            Some(true) => "yes",
            Some(false) => "no",
            None => "unknown",
        }
    }
}

/// Per connection: what `CLIENT` commands set, and whether it authenticated.
#[derive(Debug, Clone, Default)]
pub struct Connection {
    /// The connection's id (`CLIENT ID`).
    pub id: u64,
    /// Its name (`CLIENT SETNAME`).
    pub name: Option<Vec<u8>>,
    /// The password the gateway requires (Redis's `requirepass`), if any.
    pub password: Option<Password>,
    /// Whether the connection gave it (`AUTH`, `HELLO ... AUTH`).
    pub authenticated: bool,
}

impl Connection {
    /// A new connection `id` to a gateway that requires `password` (if any).
    pub fn new(id: u64, password: Option<Password>) -> Self {
        Connection { id, name: None, password, authenticated: false }
    }

    /// `CLIENT SETNAME` and `HELLO ... SETNAME`: as Redis, a name has no spaces, newlines or
    /// special characters, and an empty one removes the name.
    fn set_name(&mut self, name: &[u8]) -> Result<(), Plan> {
        if name.iter().any(|b| *b <= b' ' || *b > b'~') {
            return Err(error("ERR Client names cannot contain spaces, newlines or special characters."));
        }
        self.name = (!name.is_empty()).then(|| name.to_vec());
        Ok(())
    }

    /// Whether the connection may run commands other than `AUTH`, `HELLO` and `QUIT`.
    pub fn may_run_commands(&self) -> bool {
        self.authenticated || self.password.is_none()
    }

    /// `AUTH [user] password` (`user` None: the one-argument form): Redis's default user is the only
    /// one. With no password required, the default user takes any password, as Redis's `nopass`
    /// default user does, but the one-argument form is told that no password is configured.
    fn authenticate(&mut self, user: Option<&[u8]>, given: &[u8]) -> Result<(), Plan> {
        let wrong = || error("WRONGPASS invalid username-password pair or user is disabled.");
        let Some(password) = &self.password else {
            return match user {
                None => Err(error(
                    "ERR AUTH <password> called without any password configured for the default user. \
                     Are you sure your configuration is correct?",
                )),
                Some(b"default") => Ok(()),
                Some(_) => Err(wrong()),
            };
        };
        if user.is_some_and(|u| u != b"default") || !password.matches(given) {
            return Err(wrong());
        }
        self.authenticated = true;
        Ok(())
    }
}

/// The password a gateway requires, kept as its hash: compared in constant time, never shown.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(blake3::Hash);

impl Password {
    /// The password `text` (without surrounding whitespace, as read from a file).
    pub fn new(text: &[u8]) -> Password {
        Password(blake3::hash(text.trim_ascii()))
    }

    /// Whether `given` is the password (constant time: `blake3::Hash`'s `==`).
    pub fn matches(&self, given: &[u8]) -> bool {
        blake3::hash(given) == self.0
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// The version `INFO` and `HELLO` report as `redis_version`: the Redis release whose commands and
/// replies the gateway follows, so that tools which check it accept the gateway.
const REDIS_VERSION: &str = "7.2.0";

fn error(text: impl Into<String>) -> Plan {
    Plan::Reply(Reply::Error(text.into()))
}

fn arity(name: &str) -> Plan {
    error(format!("ERR wrong number of arguments for '{name}' command"))
}

fn syntax() -> Plan {
    error("ERR syntax error")
}

fn not_integer() -> Plan {
    error("ERR value is not an integer or out of range")
}

fn lower(arg: &[u8]) -> String {
    String::from_utf8_lossy(arg).to_ascii_lowercase()
}

/// An integer argument as Redis reads one (`string2ll`): an optional `-`, then digits without a
/// leading zero ("0" alone aside); no `+`, no spaces, no "-0".
fn int_arg(arg: &[u8]) -> Option<i64> {
    let canonical = match arg.strip_prefix(b"-").unwrap_or(arg) {
        [b'0'] => arg.len() == 1,
        [b'1'..=b'9', rest @ ..] => rest.iter().all(u8::is_ascii_digit),
        _ => false,
    };
    canonical.then(|| std::str::from_utf8(arg).ok()?.parse().ok()).flatten()
}

/// A key as the store holds it: (partition, item).
fn key(k: &[u8]) -> (Bytes, Bytes) {
    let partition = partition_of(k);
    if partition.len() == k.len() {
        (Bytes::copy_from_slice(k), Bytes::new())
    } else {
        (Bytes::copy_from_slice(partition), Bytes::copy_from_slice(k))
    }
}

/// The one partition of `keys`, or the error that refuses them.
fn one_partition<'a>(keys: impl IntoIterator<Item = &'a [u8]>) -> Result<Bytes, Plan> {
    let mut found: Option<&[u8]> = None;
    for k in keys {
        if k.len() > MAX_KEY_BYTES {
            return Err(error(format!("ERR key is longer than the limit of {MAX_KEY_BYTES} bytes")));
        }
        let p = partition_of(k);
        match found {
            Some(f) if f != p => {
                return Err(error("CROSSSLOT Keys in request don't hash to the same slot"));
            }
            _ => found = Some(p),
        }
    }
    Ok(Bytes::copy_from_slice(found.unwrap_or_default()))
}

fn check_value(v: &[u8]) -> Result<Bytes, Plan> {
    if v.len() > MAX_VALUE_BYTES {
        return Err(error(format!("ERR value is longer than the limit of {MAX_VALUE_BYTES} bytes")));
    }
    Ok(Bytes::copy_from_slice(v))
}

/// The item of `k` (whose partition was checked).
fn item(k: &[u8]) -> Bytes {
    key(k).1
}

/// Plans one request. `args` is never empty (the codec skips empty requests). `ctx` is asked only by
/// the few commands that report on the gateway (`INFO`, `CONFIG GET`): the data commands of the hot
/// path never build it.
pub fn plan(args: &[Vec<u8>], conn: &mut Connection, ctx: &dyn Fn() -> Context) -> Plan {
    let Some(first) = args.first() else { return error("ERR empty command") };
    let name = lower(first);
    let rest = &args[1..];
    if !conn.may_run_commands() && !matches!(name.as_str(), "auth" | "hello" | "quit") {
        return error("NOAUTH Authentication required.");
    }
    match name.as_str() {
        "get" | "getdel" | "apx.getv" | "incr" | "decr" if rest.len() != 1 => arity(&name),
        "get" => single(&rest[0], |p, i| (vec![KvOp::Get { partition: p, item: i }], Render::Value)),
        "apx.getv" => {
            single(&rest[0], |p, i| (vec![KvOp::Get { partition: p, item: i }], Render::ValueAndVersion))
        }
        "getdel" => single(&rest[0], |p, i| {
            let ops = vec![
                KvOp::Get { partition: p.clone(), item: i.clone() },
                KvOp::Delete { partition: p, item: i },
            ];
            (ops, Render::Taken)
        }),
        "incr" | "decr" => {
            let delta = if name == "incr" { 1 } else { -1 };
            single(&rest[0], |p, i| (vec![KvOp::Increment { partition: p, item: i, delta }], Render::Integer))
        }
        "incrby" | "decrby" => {
            if rest.len() != 2 {
                return arity(&name);
            }
            let Some(by) = int_arg(&rest[1]) else { return not_integer() };
            let delta = if name == "incrby" {
                by
            } else {
                match by.checked_neg() {
                    Some(d) => d,
                    None => return error("ERR decrement would overflow"),
                }
            };
            single(&rest[0], |p, i| (vec![KvOp::Increment { partition: p, item: i, delta }], Render::Integer))
        }
        "set" => set(rest),
        "del" | "exists" | "mget" => {
            if rest.is_empty() {
                return arity(&name);
            }
            if rest.len() > MAX_BATCH_OPS {
                return error(format!("ERR {} takes at most {MAX_BATCH_OPS} keys here", name.to_uppercase()));
            }
            let partition = match one_partition(rest.iter().map(|k| &k[..])) {
                Ok(p) => p,
                Err(e) => return e,
            };
            let ops = rest
                .iter()
                .map(|k| match name.as_str() {
                    "del" => KvOp::Delete { partition: partition.clone(), item: item(k) },
                    _ => KvOp::Get { partition: partition.clone(), item: item(k) },
                })
                .collect();
            let render = match name.as_str() {
                "del" => Render::Deleted,
                "exists" => Render::Exists,
                _ => Render::Values,
            };
            Plan::Cluster(ops, render)
        }
        "mset" => mset(rest),
        "apx.txn" => transaction(rest),
        _ => local(&name, first, rest, conn, ctx),
    }
}

/// A command on one key: checks the key, then builds its ops.
fn single(k: &[u8], build: impl FnOnce(Bytes, Bytes) -> (Vec<KvOp>, Render)) -> Plan {
    if let Err(e) = one_partition([k]) {
        return e;
    }
    let (p, i) = key(k);
    let (ops, render) = build(p, i);
    Plan::Cluster(ops, render)
}

/// `SET key value [NX | XX | IFEQ comparison] [GET] [KEEPTTL]`.
fn set(rest: &[Vec<u8>]) -> Plan {
    if rest.len() < 2 {
        return arity("set");
    }
    let (k, v) = (&rest[0], &rest[1]);
    if let Err(e) = one_partition([&k[..]]) {
        return e;
    }
    let value = match check_value(v) {
        Ok(v) => v,
        Err(e) => return e,
    };
    let (mut get, mut condition): (bool, Option<Condition>) = (false, None);
    let (partition, it) = key(k);
    let mut options = rest[2..].iter();
    while let Some(option) = options.next() {
        let new = match lower(option).as_str() {
            // As Redis: an option given twice is taken once (IFEQ, which takes an argument, aside).
            "get" => {
                get = true;
                continue;
            }
            "keepttl" => continue, // keys never expire here: keeping no TTL is what happens
            "nx" => Condition::Absent { item: it.clone() },
            "xx" => Condition::Exists { item: it.clone() },
            "ifeq" => match options.next() {
                Some(expected) => match check_value(expected) {
                    Ok(expected) => Condition::ValueEquals { item: it.clone(), value: expected },
                    Err(e) => return e,
                },
                None => return syntax(),
            },
            "ex" | "px" | "exat" | "pxat" => {
                return error(
                    "ERR keys do not expire in autopaxos: SET with EX, PX, EXAT or PXAT is not supported",
                )
            }
            _ => return syntax(),
        };
        match &condition {
            None => condition = Some(new),
            Some(Condition::Absent { .. }) if matches!(new, Condition::Absent { .. }) => {}
            Some(Condition::Exists { .. }) if matches!(new, Condition::Exists { .. }) => {}
            Some(_) => return syntax(), // NX, XX and IFEQ exclude each other
        }
    }
    let mut ops = Vec::with_capacity(2);
    if get {
        ops.push(KvOp::Get { partition: partition.clone(), item: it.clone() });
    }
    ops.push(match condition {
        None => KvOp::Put { partition, item: it, value },
        Some(c) => KvOp::Txn { partition, conditions: vec![c], writes: vec![Write::Put { item: it, value }] },
    });
    Plan::Cluster(ops, Render::Set { get })
}

/// `MSET key value [key value ...]`, one partition, all or nothing.
fn mset(rest: &[Vec<u8>]) -> Plan {
    if rest.is_empty() || !rest.len().is_multiple_of(2) {
        return arity("mset");
    }
    if rest.len() / 2 > MAX_TXN_OPS {
        return error(format!("ERR MSET takes at most {MAX_TXN_OPS} keys here"));
    }
    let partition = match one_partition(rest.iter().step_by(2).map(|k| &k[..])) {
        Ok(p) => p,
        Err(e) => return e,
    };
    let mut writes = Vec::with_capacity(rest.len() / 2);
    for pair in rest.chunks(2) {
        match check_value(&pair[1]) {
            Ok(value) => writes.push(Write::Put { item: item(&pair[0]), value }),
            Err(e) => return e,
        }
    }
    Plan::Cluster(vec![KvOp::Txn { partition, conditions: Vec::new(), writes }], Render::Ok)
}

/// `APX.TXN [IF EXISTS key | IF ABSENT key | IF VERSION key n | IF VALUE key value]...
/// [SET key value | DEL key | INCRBY key n]...`: conditions first, then writes, all on keys of one
/// partition; all the writes happen, under one version, if every condition holds.
fn transaction(rest: &[Vec<u8>]) -> Plan {
    let usage = || {
        error(
            "ERR syntax error: APX.TXN [IF EXISTS key | IF ABSENT key | IF VERSION key n | IF VALUE key value]... \
             [SET key value | DEL key | INCRBY key n]...",
        )
    };
    let (mut conditions, mut writes, mut keys) = (Vec::new(), Vec::new(), Vec::<&[u8]>::new());
    let mut args = rest.iter();
    while let Some(word) = args.next() {
        let word = lower(word);
        let mut take = || args.next().map(|a| &a[..]);
        if word == "if" {
            if !writes.is_empty() {
                return error("ERR APX.TXN: conditions come before writes");
            }
            let (Some(kind), Some(k)) = (take(), take()) else { return usage() };
            keys.push(k);
            let it = item(k);
            conditions.push(match lower(kind).as_str() {
                "exists" => Condition::Exists { item: it },
                "absent" => Condition::Absent { item: it },
                "version" => match take().and_then(int_arg).and_then(|n| u64::try_from(n).ok()) {
                    Some(version) => Condition::VersionEquals { item: it, version },
                    None => return not_integer(),
                },
                "value" => match take().map(check_value) {
                    Some(Ok(value)) => Condition::ValueEquals { item: it, value },
                    Some(Err(e)) => return e,
                    None => return usage(),
                },
                _ => return usage(),
            });
            continue;
        }
        let Some(k) = take() else { return usage() };
        keys.push(k);
        let it = item(k);
        writes.push(match word.as_str() {
            "set" => match take().map(check_value) {
                Some(Ok(value)) => Write::Put { item: it, value },
                Some(Err(e)) => return e,
                None => return usage(),
            },
            "del" => Write::Delete { item: it },
            "incrby" => match take().and_then(int_arg) {
                Some(delta) => Write::Increment { item: it, delta },
                None => return not_integer(),
            },
            _ => return usage(),
        });
    }
    if keys.is_empty() {
        return arity("apx.txn");
    }
    if conditions.len() + writes.len() > MAX_TXN_OPS {
        return error(format!("ERR APX.TXN takes at most {MAX_TXN_OPS} conditions and writes"));
    }
    let partition = match one_partition(keys) {
        Ok(p) => p,
        Err(e) => return e,
    };
    Plan::Cluster(vec![KvOp::Txn { partition, conditions, writes }], Render::Transaction)
}

/// The commands the gateway answers itself.
fn local(
    name: &str,
    first: &[u8],
    rest: &[Vec<u8>],
    conn: &mut Connection,
    ctx: &dyn Fn() -> Context,
) -> Plan {
    let reply = match (name, rest.len()) {
        ("ping", 0) => Reply::Simple("PONG".into()),
        ("ping", 1) => Reply::Bulk(rest[0].clone()),
        ("echo", 1) => Reply::Bulk(rest[0].clone()),
        ("quit", _) => return Plan::Close(Reply::ok()),
        ("select", 1) => match int_arg(&rest[0]) {
            Some(0) => Reply::ok(),
            Some(_) => Reply::err("DB index is out of range"),
            None => return not_integer(),
        },
        ("hello", _) => return hello(rest, conn),
        ("info", _) => Reply::Bulk(info(&ctx(), rest).into_bytes()),
        ("command", _) => return command(rest),
        ("client" | "config", 0) => return arity(name),
        ("client", _) => return client(rest, conn),
        ("config", 1) if lower(&rest[0]) == "get" => return arity("config|get"),
        ("config", _) if lower(&rest[0]) == "get" => config_get(&rest[1..], &ctx()),
        ("config", _) => Reply::err("CONFIG is not supported by autopaxos except CONFIG GET"),
        ("auth", 1) => match conn.authenticate(None, &rest[0]) {
            Ok(()) => Reply::ok(),
            Err(refused) => return refused,
        },
        ("auth", 2) => match conn.authenticate(Some(&rest[0]), &rest[1]) {
            Ok(()) => Reply::ok(),
            Err(refused) => return refused,
        },
        ("auth", _) => return syntax(),
        ("readonly" | "readwrite" | "reset", 0) => {
            if name == "reset" {
                // As Redis: a reset connection must authenticate again.
                *conn = Connection::new(conn.id, conn.password.clone());
                Reply::Simple("RESET".into())
            } else {
                Reply::ok()
            }
        }
        ("ping" | "echo" | "select" | "readonly" | "readwrite" | "reset", _) => return arity(name),
        _ => return unknown_command(first, rest),
    };
    Plan::Reply(reply)
}

fn hello_syntax(option: &[u8]) -> Plan {
    error(format!("ERR Syntax error in HELLO option '{}'", String::from_utf8_lossy(option)))
}

/// Redis's answer to a command it does not know: the name as sent, and the arguments while they
/// fit in 128 bytes (each as C reads it: up to its first NUL).
fn unknown_command(name: &[u8], args: &[Vec<u8>]) -> Plan {
    const SHOWN: usize = 128;
    let c_string = |b: &[u8]| {
        let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
        String::from_utf8_lossy(&b[..end]).into_owned()
    };
    let mut shown = String::new();
    for arg in args {
        if shown.len() >= SHOWN {
            break;
        }
        let arg = c_string(arg);
        let room = SHOWN - shown.len();
        let cut = (0..=room.min(arg.len())).rev().find(|&i| arg.is_char_boundary(i)).unwrap_or(0);
        shown += &format!("'{}' ", &arg[..cut]);
    }
    let name = c_string(&name[..name.len().min(SHOWN)]);
    error(format!("ERR unknown command '{name}', with args beginning with: {shown}"))
}

/// `HELLO [protover [AUTH user pass] [SETNAME name]]`: RESP2 only; a client asking for 3 is told
/// `-NOPROTO` and falls back, as clients do with a Redis 6 server.
fn hello(rest: &[Vec<u8>], conn: &mut Connection) -> Plan {
    let mut args = rest.iter();
    if let Some(version) = args.next() {
        match int_arg(version) {
            Some(2) => {}
            Some(_) => return error("NOPROTO unsupported protocol version"),
            None => return error("ERR Protocol version is not an integer or out of range"),
        }
    }
    let mut name = None;
    while let Some(option) = args.next() {
        match lower(option).as_str() {
            "setname" => match args.next() {
                Some(given) => name = Some(given),
                None => return hello_syntax(option),
            },
            "auth" => match (args.next(), args.next()) {
                (Some(user), Some(password)) => {
                    if let Err(refused) = conn.authenticate(Some(user), password) {
                        return refused;
                    }
                }
                _ => return hello_syntax(option),
            },
            _ => return hello_syntax(option),
        }
    }
    if let Some(name) = name {
        if let Err(refused) = conn.set_name(name) {
            return refused;
        }
    }
    if !conn.may_run_commands() {
        return error(
            "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO \
             <proto> AUTH <user> <pass> option can be used to authenticate the client and select the \
             RESP protocol version at the same time",
        );
    }
    let field = |k: &str, v: Reply| [Reply::Bulk(k.into()), v];
    let map: Vec<Reply> = [
        field("server", Reply::Bulk(b"autopaxos".to_vec())),
        field("version", Reply::Bulk(REDIS_VERSION.into())),
        field("proto", Reply::Integer(2)),
        field("id", Reply::Integer(conn.id as i64)),
        field("mode", Reply::Bulk(b"standalone".to_vec())),
        field("role", Reply::Bulk(b"master".to_vec())),
        field("modules", Reply::Array(Vec::new())),
    ]
    .into_iter()
    .flatten()
    .collect();
    Plan::Reply(Reply::Array(map))
}

/// `INFO [section ...]`: the sections asked for (all with none, `default`, `all` or `everything`;
/// nothing for a section the gateway does not have), as Redis answers.
fn info(ctx: &Context, asked: &[Vec<u8>]) -> String {
    let leader = ctx.leader.map_or("unknown".to_string(), |l| l.to_string());
    let durable = ctx.durable_word();
    let sections = [
        (
            "server",
            format!(
                "# Server\r\nredis_version:{REDIS_VERSION}\r\nautopaxos_version:{}\r\nredis_mode:standalone\r\n\
                 role:gateway\r\n",
                env!("CARGO_PKG_VERSION")
            ),
        ),
        ("clients", format!("# Clients\r\nconnected_clients:{}\r\n", ctx.connections)),
        (
            "cluster",
            format!(
                "# Cluster\r\ncluster_id:{}\r\ngateway_node:{}\r\nleader:{leader}\r\ndurable:{durable}\r\n",
                ctx.cluster_id, ctx.node
            ),
        ),
    ];
    let everything = asked.is_empty()
        || asked.iter().any(|a| matches!(lower(a).as_str(), "default" | "all" | "everything"));
    let wanted: Vec<String> = sections
        .into_iter()
        .filter(|(name, _)| everything || asked.iter().any(|a| lower(a) == *name))
        .map(|(_, text)| text)
        .collect();
    wanted.join("\r\n")
}

/// What `COMMAND` says of one command, as Redis 7 does, in this order: its name, arity (negative: at least), flags,
/// first key, last key and step between keys, ACL categories, then the group and a summary for
/// `COMMAND DOCS`. `APX.TXN` names its keys among keywords: movable keys, as `EVAL`'s.
struct CommandInfo(
    &'static str,
    i64,
    &'static [&'static str],
    (i64, i64, i64),
    &'static [&'static str],
    &'static str,
    &'static str,
);

const READ_FAST: &[&str] = &["readonly", "fast"];
const WRITE: &[&str] = &["write", "denyoom"];
const WRITE_FAST: &[&str] = &["write", "denyoom", "fast"];
const CONNECTION: &[&str] = &["@fast", "@connection"];
const NO_AUTH: &[&str] = &["noscript", "loading", "stale", "fast", "no_auth"];
const NONE: (i64, i64, i64) = (0, 0, 0);
const ONE: (i64, i64, i64) = (1, 1, 1);
const ALL: (i64, i64, i64) = (1, -1, 1);

/// The commands the gateway knows, for `COMMAND` and its subcommands.
const COMMANDS: [CommandInfo; 26] = [
    CommandInfo(
        "apx.getv",
        2,
        READ_FAST,
        ONE,
        &["@read", "@string", "@fast"],
        "string",
        "Returns a key's value and the version of the write that stored it.",
    ),
    CommandInfo(
        "apx.txn",
        -3,
        &["write", "denyoom", "movablekeys"],
        NONE,
        &["@write", "@string", "@slow"],
        "string",
        "Applies writes to keys of one partition, all or nothing, if every condition holds.",
    ),
    CommandInfo("auth", -2, NO_AUTH, NONE, CONNECTION, "connection", "Authenticates the connection."),
    CommandInfo(
        "client",
        -2,
        &[],
        NONE,
        &["@slow"],
        "connection",
        "A container for client connection commands.",
    ),
    CommandInfo(
        "command",
        -1,
        &["loading", "stale"],
        NONE,
        &["@slow", "@connection"],
        "server",
        "Returns detailed information about all commands.",
    ),
    CommandInfo(
        "config",
        -2,
        &[],
        NONE,
        &["@slow"],
        "server",
        "A container for server configuration commands.",
    ),
    CommandInfo(
        "decr",
        2,
        WRITE_FAST,
        ONE,
        &["@write", "@string", "@fast"],
        "string",
        "Decrements the integer value of a key by one.",
    ),
    CommandInfo(
        "decrby",
        3,
        WRITE_FAST,
        ONE,
        &["@write", "@string", "@fast"],
        "string",
        "Decrements a number from the integer value of a key.",
    ),
    CommandInfo(
        "del",
        -2,
        &["write"],
        ALL,
        &["@keyspace", "@write", "@slow"],
        "generic",
        "Deletes one or more keys.",
    ),
    CommandInfo("echo", 2, &["fast"], NONE, CONNECTION, "connection", "Returns the given string."),
    CommandInfo(
        "exists",
        -2,
        READ_FAST,
        ALL,
        &["@keyspace", "@read", "@fast"],
        "generic",
        "Determines whether one or more keys exist.",
    ),
    CommandInfo(
        "get",
        2,
        READ_FAST,
        ONE,
        &["@read", "@string", "@fast"],
        "string",
        "Returns the string value of a key.",
    ),
    CommandInfo(
        "getdel",
        2,
        &["write", "fast"],
        ONE,
        &["@write", "@string", "@fast"],
        "string",
        "Returns the string value of a key after deleting the key.",
    ),
    CommandInfo("hello", -1, NO_AUTH, NONE, CONNECTION, "connection", "Handshakes with the server."),
    CommandInfo(
        "incr",
        2,
        WRITE_FAST,
        ONE,
        &["@write", "@string", "@fast"],
        "string",
        "Increments the integer value of a key by one.",
    ),
    CommandInfo(
        "incrby",
        3,
        WRITE_FAST,
        ONE,
        &["@write", "@string", "@fast"],
        "string",
        "Increments the integer value of a key by a number.",
    ),
    CommandInfo(
        "info",
        -1,
        &["loading", "stale"],
        NONE,
        &["@slow", "@dangerous"],
        "server",
        "Returns information and statistics about the server.",
    ),
    CommandInfo(
        "mget",
        -2,
        READ_FAST,
        ALL,
        &["@read", "@string", "@fast"],
        "string",
        "Atomically returns the string values of one or more keys.",
    ),
    CommandInfo(
        "mset",
        -3,
        WRITE,
        (1, -1, 2),
        &["@write", "@string", "@slow"],
        "string",
        "Atomically creates or modifies the string values of one or more keys.",
    ),
    CommandInfo(
        "ping",
        -1,
        &["fast"],
        NONE,
        CONNECTION,
        "connection",
        "Returns the server's liveliness response.",
    ),
    CommandInfo("quit", -1, NO_AUTH, NONE, CONNECTION, "connection", "Closes the connection."),
    CommandInfo(
        "readonly",
        1,
        &["loading", "stale", "fast"],
        NONE,
        CONNECTION,
        "cluster",
        "Enables read-only queries for a connection to a Redis Cluster replica node.",
    ),
    CommandInfo(
        "readwrite",
        1,
        &["loading", "stale", "fast"],
        NONE,
        CONNECTION,
        "cluster",
        "Enables read-write queries for a connection to a Redis Cluster replica node.",
    ),
    CommandInfo("reset", 1, NO_AUTH, NONE, CONNECTION, "connection", "Resets the connection."),
    CommandInfo(
        "select",
        2,
        &["loading", "stale", "fast"],
        NONE,
        CONNECTION,
        "connection",
        "Changes the selected database.",
    ),
    CommandInfo(
        "set",
        -3,
        WRITE,
        ONE,
        &["@write", "@string", "@slow"],
        "string",
        "Sets the string value of a key, ignoring its type.",
    ),
];

fn find_command(name: &[u8]) -> Option<&'static CommandInfo> {
    let name = lower(name);
    COMMANDS.iter().find(|c| c.0 == name)
}

impl CommandInfo {
    /// Its `COMMAND INFO` entry (Redis 7's ten fields; no tips, key specs or subcommands).
    fn entry(&self) -> Reply {
        let CommandInfo(name, arity, flags, (first, last, step), categories, _, _) = *self;
        let words = |w: &[&str]| Reply::Array(w.iter().map(|f| Reply::Simple(f.to_string())).collect());
        Reply::Array(vec![
            Reply::Bulk(name.into()),
            Reply::Integer(arity),
            words(flags),
            Reply::Integer(first),
            Reply::Integer(last),
            Reply::Integer(step),
            words(categories),
            Reply::Array(Vec::new()),
            Reply::Array(Vec::new()),
            Reply::Array(Vec::new()),
        ])
    }

    /// Its `COMMAND DOCS` pair: the name, then a map of summary, since and group.
    fn docs(&self) -> [Reply; 2] {
        let CommandInfo(name, _, _, _, _, group, summary) = *self;
        let field = |k: &str, v: &str| [Reply::Bulk(k.into()), Reply::Bulk(v.into())];
        let docs = [field("summary", summary), field("since", "1.0.0"), field("group", group)];
        [Reply::Bulk(name.into()), Reply::Array(docs.into_iter().flatten().collect())]
    }
}

/// `COMMAND`, `COMMAND COUNT`, `COMMAND LIST`, `COMMAND DOCS [name...]`, `COMMAND INFO [name...]`:
/// as Redis answers them, over the commands the gateway knows.
fn command(rest: &[Vec<u8>]) -> Plan {
    let named = || rest[1..].iter().map(|n| find_command(n));
    let reply = match rest.first().map(|s| lower(s)).as_deref() {
        None => Reply::Array(COMMANDS.iter().map(CommandInfo::entry).collect()),
        Some("count") => Reply::Integer(COMMANDS.len() as i64),
        Some("list") => Reply::Array(COMMANDS.iter().map(|c| Reply::Bulk(c.0.into())).collect()),
        Some("info") if rest.len() == 1 => Reply::Array(COMMANDS.iter().map(CommandInfo::entry).collect()),
        Some("info") => Reply::Array(named().map(|c| c.map_or(Reply::Nil, CommandInfo::entry)).collect()),
        Some("docs") if rest.len() == 1 => {
            Reply::Array(COMMANDS.iter().flat_map(CommandInfo::docs).collect())
        }
        Some("docs") => Reply::Array(named().flatten().flat_map(CommandInfo::docs).collect()),
        Some(_) => Reply::err(format!(
            "unknown subcommand '{}'. Try COMMAND HELP.",
            String::from_utf8_lossy(&rest[0])
        )),
    };
    Plan::Reply(reply)
}

/// The `CLIENT` subcommands that tools send on connecting.
fn client(rest: &[Vec<u8>], conn: &mut Connection) -> Plan {
    let sub = lower(&rest[0]);
    let reply = match (sub.as_str(), rest.len()) {
        ("setname", 2) => match conn.set_name(&rest[1]) {
            Ok(()) => Reply::ok(),
            Err(refused) => return refused,
        },
        ("getname", 1) => conn.name.clone().map_or(Reply::Nil, Reply::Bulk),
        ("id", 1) => Reply::Integer(conn.id as i64),
        ("setinfo", 3) => match lower(&rest[1]).as_str() {
            "lib-name" | "lib-ver" if rest[2].iter().all(|b| *b > b' ' && *b <= b'~') => Reply::ok(),
            "lib-name" | "lib-ver" => Reply::err(format!(
                "{} cannot contain spaces, newlines or special characters.",
                lower(&rest[1])
            )),
            _ => Reply::err(format!("Unrecognized option '{}'", String::from_utf8_lossy(&rest[1]))),
        },
        ("no-evict", 2) | ("no-touch", 2) => Reply::ok(),
        ("info", 1) | ("list", _) => {
            let name = conn.name.as_deref().map(String::from_utf8_lossy).unwrap_or_default();
            Reply::Bulk(format!("id={} name={name} db=0 resp=2\n", conn.id).into_bytes())
        }
        ("setname" | "getname" | "id" | "setinfo" | "info", _) => {
            return error(format!("ERR wrong number of arguments for 'client|{sub}' command"))
        }
        _ => Reply::err(format!(
            "unknown subcommand '{}'. Try CLIENT HELP.",
            String::from_utf8_lossy(&rest[0])
        )),
    };
    Plan::Reply(reply)
}

/// `CONFIG GET` of what benchmark tools ask for (`save`, `appendonly`): an honest answer about
/// durability, and nothing for the rest.
fn config_get(patterns: &[Vec<u8>], ctx: &Context) -> Reply {
    let appendonly = ctx.durable_word();
    let known = [("save", ""), ("appendonly", appendonly)];
    let mut out = Vec::new();
    for (name, value) in known {
        if patterns.iter().any(|p| lower(p) == name || &p[..] == b"*") {
            out.push(Reply::Bulk(name.into()));
            out.push(Reply::Bulk(value.into()));
        }
    }
    Reply::Array(out)
}

/// The reply to an op that the store refused.
fn refused(e: &KvError) -> Reply {
    match e {
        KvError::KeyTooLarge => Reply::err(format!("key is longer than the limit of {MAX_KEY_BYTES} bytes")),
        KvError::ValueTooLarge => {
            Reply::err(format!("value is longer than the limit of {MAX_VALUE_BYTES} bytes"))
        }
        KvError::NotAnInteger => Reply::err("value is not an integer or out of range"),
        KvError::Overflow => Reply::err("increment or decrement would overflow"),
        other => Reply::err(other),
    }
}

/// The reply of a planned command from the results of its ops (as many as it planned).
pub fn render(render: Render, results: &[KvResult]) -> Reply {
    // Any refused op answers for the whole command.
    if let Some(KvResult::Error(e)) = results.iter().find(|r| matches!(r, KvResult::Error(_))) {
        return refused(e);
    }
    let value = |r: &KvResult| match r {
        KvResult::Value { value, .. } => Reply::Bulk(value.to_vec()),
        _ => Reply::Nil,
    };
    let count =
        |pred: fn(&KvResult) -> bool| Reply::Integer(results.iter().filter(|r| pred(r)).count() as i64);
    match (render, results) {
        (Render::Value | Render::Taken, [first, ..]) => value(first),
        (Render::ValueAndVersion, [KvResult::Value { value, version }]) => {
            Reply::Array(vec![Reply::Bulk(value.to_vec()), Reply::Integer(*version as i64)])
        }
        (Render::ValueAndVersion, [_]) => Reply::Nil,
        (Render::Set { get: true }, [old, _]) => value(old),
        (Render::Set { get: false }, [KvResult::Written { .. } | KvResult::Committed { .. }]) => Reply::ok(),
        (Render::Set { get: false }, [KvResult::ConditionFailed { .. }]) => Reply::Nil,
        (Render::Deleted, _) => count(|r| matches!(r, KvResult::Deleted { existed: true })),
        (Render::Exists, _) => count(|r| matches!(r, KvResult::Value { .. })),
        (Render::Integer, [KvResult::Incremented { value, .. }]) => Reply::Integer(*value),
        (Render::Values, _) => Reply::Array(results.iter().map(value).collect()),
        (Render::Ok, [KvResult::Committed { .. }]) => Reply::ok(),
        (Render::Transaction, [KvResult::Committed { version }]) => {
            Reply::Array(vec![Reply::Bulk(b"committed".to_vec()), Reply::Integer(*version as i64)])
        }
        (Render::Transaction, [KvResult::ConditionFailed { index }]) => {
            Reply::Array(vec![Reply::Bulk(b"failed".to_vec()), Reply::Integer(i64::from(*index))])
        }
        (render, results) => Reply::err(format!("internal: unexpected results {results:?} for {render:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::state_machine::kv::KvStore;

    fn args(line: &str) -> Vec<Vec<u8>> {
        crate::resp::split_args(line.as_bytes()).expect("well quoted")
    }

    /// Runs `line` against `store` as the gateway and the log would.
    fn run(store: &mut KvStore, line: &str) -> Reply {
        let mut conn = Connection::new(7, None);
        match plan(&args(line), &mut conn, &Context::default) {
            Plan::Reply(r) | Plan::Close(r) => r,
            Plan::Cluster(ops, how) => {
                let results: Vec<_> = ops.iter().map(|op| store.execute(op)).collect();
                render(how, &results)
            }
        }
    }

    fn bulk(s: &str) -> Reply {
        Reply::Bulk(s.as_bytes().to_vec())
    }

    fn err(r: &Reply) -> &str {
        match r {
            Reply::Error(e) => e,
            other => panic!("not an error: {other:?}"),
        }
    }

    #[test]
    fn strings_and_counters() {
        let s = &mut KvStore::new();
        assert_eq!(run(s, "GET a"), Reply::Nil);
        assert_eq!(run(s, "SET a 1"), Reply::ok());
        assert_eq!(run(s, "get a"), bulk("1"));
        assert_eq!(run(s, "INCR a"), Reply::Integer(2));
        assert_eq!(run(s, "INCRBY a -10"), Reply::Integer(-8));
        assert_eq!(run(s, "DECR a"), Reply::Integer(-9));
        assert_eq!(run(s, "DECRBY a 1"), Reply::Integer(-10));
        assert_eq!(run(s, "GET a"), bulk("-10"));
        assert_eq!(err(&run(s, "INCRBY a x")), "ERR value is not an integer or out of range");
        assert_eq!(err(&run(s, "DECRBY a -9223372036854775808")), "ERR decrement would overflow");
        // Increments are integers as Redis reads them: no '+', no leading zero, no "-0".
        for bad in ["+1", "01", "00", "-0", " 1", "1 ", "1.0", ""] {
            assert_eq!(
                err(&run(s, &format!("INCRBY a \"{bad}\""))),
                "ERR value is not an integer or out of range"
            );
        }
        assert_eq!(run(s, "INCRBY a 0"), Reply::Integer(-10));
        run(s, "SET s hello");
        assert_eq!(err(&run(s, "INCR s")), "ERR value is not an integer or out of range");
        run(s, "SET big 9223372036854775807");
        assert_eq!(err(&run(s, "INCR big")), "ERR increment or decrement would overflow");
        assert_eq!(run(s, "EXISTS a a"), Reply::Integer(2), "a key named twice counts twice");
        assert_eq!(run(s, "EXISTS nope"), Reply::Integer(0));
        assert_eq!(run(s, "GETDEL s"), bulk("hello"));
        assert_eq!(run(s, "GETDEL s"), Reply::Nil);
        assert_eq!(run(s, "DEL a"), Reply::Integer(1));
        assert_eq!(run(s, "DEL a"), Reply::Integer(0));
        assert_eq!(
            run(s, "APX.GETV big"),
            Reply::Array(vec![bulk("9223372036854775807"), Reply::Integer(1)])
        );
    }

    #[test]
    fn set_options_follow_redis_and_valkey() {
        let s = &mut KvStore::new();
        assert_eq!(run(s, "SET k v1 XX"), Reply::Nil);
        assert_eq!(run(s, "SET k v1 NX"), Reply::ok());
        assert_eq!(run(s, "SET k v2 NX"), Reply::Nil);
        assert_eq!(run(s, "SET k v2 NX GET"), bulk("v1"), "GET returns the old value even when NX fails");
        assert_eq!(run(s, "SET k v2 XX GET"), bulk("v1"));
        assert_eq!(run(s, "SET k v3 IFEQ v1"), Reply::Nil);
        assert_eq!(run(s, "SET k v3 IFEQ v2"), Reply::ok());
        assert_eq!(run(s, "set k v4 ifeq v3 get"), bulk("v3"));
        assert_eq!(run(s, "SET absent v IFEQ x"), Reply::Nil, "IFEQ never creates a key");
        assert_eq!(run(s, "GET absent"), Reply::Nil);
        assert_eq!(run(s, "SET k v5 GET KEEPTTL"), bulk("v4"));
        assert_eq!(err(&run(s, "SET k v NX XX")), "ERR syntax error");
        // An option given twice is taken once, as Redis does (IFEQ, with its argument, aside).
        assert_eq!(run(s, "SET n v NX NX"), Reply::ok());
        assert_eq!(run(s, "SET n w XX xx GET get"), bulk("v"));
        assert_eq!(err(&run(s, "SET n v IFEQ w IFEQ w")), "ERR syntax error");
        assert_eq!(err(&run(s, "SET k v IFEQ")), "ERR syntax error");
        assert_eq!(err(&run(s, "SET k v BOGUS")), "ERR syntax error");
        assert!(err(&run(s, "SET k v EX 10")).contains("do not expire"));
        assert_eq!(err(&run(s, "SET k")), "ERR wrong number of arguments for 'set' command");
    }

    #[test]
    fn multi_key_commands_stay_in_one_partition() {
        let s = &mut KvStore::new();
        assert_eq!(run(s, "MSET {v17}.primary a {v17}.replica b"), Reply::ok());
        assert_eq!(
            run(s, "MGET {v17}.primary {v17}.replica {v17}.none"),
            Reply::Array(vec![bulk("a"), bulk("b"), Reply::Nil])
        );
        let crossslot = "CROSSSLOT Keys in request don't hash to the same slot";
        assert_eq!(err(&run(s, "MGET a b")), crossslot);
        assert_eq!(err(&run(s, "MSET a 1 b 2")), crossslot);
        assert_eq!(err(&run(s, "DEL {v17}.primary other")), crossslot);
        // An untagged key and the tag of the same name share a partition but are different keys.
        run(s, "SET v17 plain");
        assert_eq!(run(s, "MGET v17 {v17}.primary"), Reply::Array(vec![bulk("plain"), bulk("a")]));
        assert_eq!(err(&run(s, "MSET a")), "ERR wrong number of arguments for 'mset' command");
    }

    #[test]
    fn transactions_are_all_or_nothing_in_one_partition() {
        let s = &mut KvStore::new();
        let committed = |v| Reply::Array(vec![bulk("committed"), Reply::Integer(v)]);
        let failed = |i| Reply::Array(vec![bulk("failed"), Reply::Integer(i)]);
        assert_eq!(run(s, "APX.TXN IF ABSENT {c}.lock SET {c}.lock me SET {c}.n 1"), committed(1));
        assert_eq!(run(s, "APX.TXN IF ABSENT {c}.lock SET {c}.n 2"), failed(0));
        assert_eq!(run(s, "GET {c}.n"), bulk("1"), "a failed transaction writes nothing");
        assert_eq!(
            run(s, "APX.TXN IF VALUE {c}.lock me IF VERSION {c}.n 1 INCRBY {c}.n 5 DEL {c}.lock"),
            committed(2)
        );
        assert_eq!(run(s, "MGET {c}.n {c}.lock"), Reply::Array(vec![bulk("6"), Reply::Nil]));
        assert_eq!(run(s, "APX.TXN IF EXISTS {c}.n IF VERSION {c}.n 1 SET {c}.x y"), failed(1));
        assert!(err(&run(s, "APX.TXN SET {c}.a 1 IF EXISTS {c}.a")).contains("conditions come before writes"));
        assert!(err(&run(s, "APX.TXN IF MAYBE {c}.a")).contains("syntax error"));
        assert!(err(&run(s, "APX.TXN SET a 1 SET b 2")).starts_with("CROSSSLOT"));
        assert!(err(&run(s, "APX.TXN IF VERSION {c}.n x")).contains("not an integer"));
        assert!(err(&run(s, "APX.TXN IF VERSION {c}.n +1 SET {c}.x y")).contains("not an integer"));
        assert!(err(&run(s, "APX.TXN INCRBY {c}.n 007")).contains("not an integer"));
    }

    #[test]
    fn limits_are_named_and_the_store_is_untouched() {
        let s = &mut KvStore::new();
        let big = "x".repeat(MAX_VALUE_BYTES + 1);
        assert_eq!(
            err(&run(s, &format!("SET k {big}"))),
            format!("ERR value is longer than the limit of {MAX_VALUE_BYTES} bytes")
        );
        let long_key = "k".repeat(MAX_KEY_BYTES + 1);
        assert!(
            err(&run(s, &format!("GET {long_key}"))).contains("key is longer than the limit of 1024 bytes")
        );
        assert_eq!(run(s, &format!("SET k {}", "x".repeat(MAX_VALUE_BYTES))), Reply::ok());
        assert!(s.len() == 1);
    }

    #[test]
    fn connection_commands_answer_as_redis_does() {
        let s = &mut KvStore::new();
        assert_eq!(run(s, "PING"), Reply::Simple("PONG".into()));
        assert_eq!(run(s, "PING hi"), bulk("hi"));
        assert_eq!(run(s, "ECHO x"), bulk("x"));
        assert_eq!(run(s, "SELECT 0"), Reply::ok());
        assert_eq!(err(&run(s, "SELECT 1")), "ERR DB index is out of range");
        assert_eq!(err(&run(s, "HELLO 3")), "NOPROTO unsupported protocol version");
        assert!(matches!(run(s, "HELLO 2"), Reply::Array(fields) if fields.len() == 14));
        assert_eq!(err(&run(s, "SELECT 00")), "ERR value is not an integer or out of range");
        assert_eq!(err(&run(s, "SELECT -0")), "ERR value is not an integer or out of range");
        assert_eq!(run(s, "CLIENT SETINFO LIB-NAME redis-py"), Reply::ok());
        assert_eq!(err(&run(s, "CLIENT SETINFO foo 1")), "ERR Unrecognized option 'foo'");
        assert_eq!(err(&run(s, "CLIENT")), "ERR wrong number of arguments for 'client' command");
        assert_eq!(err(&run(s, "CLIENT Foo")), "ERR unknown subcommand 'Foo'. Try CLIENT HELP.");
        assert_eq!(err(&run(s, "CONFIG GET")), "ERR wrong number of arguments for 'config|get' command");
        assert_eq!(err(&run(s, "HELLO 2 FOO")), "ERR Syntax error in HELLO option 'FOO'");
        let refused_name = "ERR Client names cannot contain spaces, newlines or special characters.";
        assert_eq!(err(&run(s, "HELLO 2 SETNAME \"a b\"")), refused_name, "as CLIENT SETNAME");
        assert_eq!(err(&run(s, "CLIENT SETNAME \"a\\nb\"")), refused_name);
        assert_eq!(run(s, "CLIENT ID"), Reply::Integer(7));
        let info = |line: &str| match run(&mut KvStore::new(), line) {
            Reply::Bulk(b) => String::from_utf8(b).unwrap(),
            other => panic!("{other:?}"),
        };
        assert!(info("INFO").contains("role:gateway") && info("INFO").contains("# Cluster"));
        assert_eq!(info("INFO all"), info("INFO"));
        assert!(info("INFO CLUSTER").starts_with("# Cluster\r\n") && !info("INFO cluster").contains("role:"));
        assert_eq!(info("INFO server clients").matches("# ").count(), 2);
        assert_eq!(info("INFO keyspace"), "", "a section the gateway does not have is empty");
        assert_eq!(
            err(&run(s, "LPUSH l a b c d")),
            "ERR unknown command 'LPUSH', with args beginning with: 'l' 'a' 'b' 'c' 'd' "
        );
        let long = format!("NOPE {} {}", "x".repeat(100), "y".repeat(100));
        let shown = format!(
            "ERR unknown command 'NOPE', with args beginning with: '{}' '{}' ",
            "x".repeat(100),
            "y".repeat(25)
        );
        assert_eq!(err(&run(s, &long)), shown, "arguments shown up to 128 bytes, as Redis");
        // COMMAND: every command the gateway knows, with Redis's fields, so that clients can find
        // the keys of a command.
        let Reply::Array(all) = run(s, "COMMAND") else { panic!() };
        assert_eq!(run(s, "COMMAND COUNT"), Reply::Integer(all.len() as i64));
        let Reply::Array(listed) = run(s, "COMMAND LIST") else { panic!() };
        assert_eq!(listed.len(), all.len());
        let Reply::Array(info_get) = run(s, "COMMAND INFO get nosuch MSET") else { panic!() };
        let Reply::Array(get) = &info_get[0] else { panic!("{info_get:?}") };
        assert_eq!(get.len(), 10);
        assert_eq!(get[..2], [bulk("get"), Reply::Integer(2)]);
        assert_eq!(get[3..6], [Reply::Integer(1), Reply::Integer(1), Reply::Integer(1)]);
        assert_eq!(info_get[1], Reply::Nil, "an unknown command's entry is nil");
        let Reply::Array(mset) = &info_get[2] else { panic!() };
        assert_eq!(mset[3..6], [Reply::Integer(1), Reply::Integer(-1), Reply::Integer(2)]);
        let Reply::Array(docs) = run(s, "COMMAND DOCS get") else { panic!() };
        assert_eq!(docs[0], bulk("get"));
        assert!(matches!(&docs[1], Reply::Array(fields) if fields.contains(&bulk("summary"))));
        assert!(err(&run(s, "COMMAND Nope")).contains("unknown subcommand 'Nope'"));
        assert_eq!(err(&run(s, "GET")), "ERR wrong number of arguments for 'get' command");
        let mut conn = Connection::default();
        assert_eq!(plan(&args("QUIT"), &mut conn, &Context::default), Plan::Close(Reply::ok()));
    }

    #[test]
    fn with_a_password_only_auth_hello_and_quit_run_until_it_is_given() {
        let mut conn = Connection::new(1, Some(Password::new(b"s3cret\n")));
        let run = |conn: &mut Connection, line: &str| plan(&args(line), conn, &Context::default);
        let err = |text: &str| Plan::Reply(Reply::Error(text.into()));
        assert_eq!(run(&mut conn, "GET k"), err("NOAUTH Authentication required."));
        assert_eq!(run(&mut conn, "PING"), err("NOAUTH Authentication required."));
        assert!(matches!(run(&mut conn, "HELLO 2"), Plan::Reply(Reply::Error(e)) if e.starts_with("NOAUTH")));
        let wrong = err("WRONGPASS invalid username-password pair or user is disabled.");
        assert_eq!(run(&mut conn, "AUTH nope"), wrong);
        assert_eq!(run(&mut conn, "AUTH admin s3cret"), wrong, "only the default user");
        assert_eq!(run(&mut conn, "AUTH s3cret"), Plan::Reply(Reply::ok()));
        assert!(matches!(run(&mut conn, "GET k"), Plan::Cluster(..)));
        assert_eq!(run(&mut conn, "RESET"), Plan::Reply(Reply::Simple("RESET".into())));
        assert_eq!(run(&mut conn, "PING"), err("NOAUTH Authentication required."), "RESET forgets AUTH");
        assert!(matches!(run(&mut conn, "HELLO 2 AUTH default s3cret"), Plan::Reply(Reply::Array(_))));
        assert_eq!(run(&mut conn, "PING"), Plan::Reply(Reply::Simple("PONG".into())));
        assert_eq!(run(&mut conn, "QUIT"), Plan::Close(Reply::ok()));
        let mut open = Connection::new(2, None);
        assert!(
            matches!(run(&mut open, "AUTH x"), Plan::Reply(Reply::Error(e)) if e.contains("without any password"))
        );
        // With no password, the default user takes any, as Redis's `nopass` default user.
        assert_eq!(run(&mut open, "AUTH default anything"), Plan::Reply(Reply::ok()));
        assert_eq!(run(&mut open, "AUTH admin anything"), wrong);
        assert!(matches!(run(&mut open, "HELLO 2 AUTH default pw"), Plan::Reply(Reply::Array(_))));
        assert_eq!(format!("{:?}", Password::new(b"s3cret")), "Password(<redacted>)");
        assert_eq!(plan(&args("CLIENT SETNAME app"), &mut conn, &Context::default), Plan::Reply(Reply::ok()));
        assert_eq!(conn.name.as_deref(), Some(&b"app"[..]));
    }
}
