//! The cluster secret: the one thing a process must know to be heard by the cluster's nodes.
//!
//! A secret file holds at least [`MIN_SECRET_BYTES`] bytes (`autopaxos config --new-secret` writes 32
//! random bytes as hex; `openssl rand -hex 32` does as well). Its mode must keep it from group and
//! others, as ssh insists for its keys. Every key the cluster uses is derived from it with BLAKE3's key
//! derivation, one context string per purpose, so no key serves two purposes:
//!
//! - the handshake key: nodes prove knowledge of the secret to each other (`wire::handshake`);
//! - the KV hash key: the replicas' hash maps are keyed with it, the same on every replica, so a client
//!   cannot craft keys that collide (the state digest does not depend on it).
//!
//! Must never: print or log a secret or a key derived from it (`Debug` is redacted); accept a file
//! others can read.

use crate::protocol::state_machine::HashKey;
use std::fmt;
use std::io::Write;
use std::path::Path;

/// The least a secret may hold: 256 bits of entropy if random.
pub const MIN_SECRET_BYTES: usize = 32;
/// A secret file larger than this is not a secret file.
const MAX_SECRET_FILE_BYTES: u64 = 4096;

/// The keys derived from a cluster secret. Cheap to clone; never shown.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterSecret {
    handshake: [u8; 32],
    kv_hash: [u8; 32],
}

/// Why a secret file cannot be used. Each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The file cannot be read.
    #[error("cannot read the {what} {path}: {source}")]
    Read { what: &'static str, path: String, source: std::io::Error },
    /// Group or others may read (or write) the file.
    #[error("the {what} {path} is accessible by group or others (mode {mode:04o}): run `chmod 600 {path}`")]
    Mode { what: &'static str, path: String, mode: u32 },
    /// Not a regular file (a directory, say).
    #[error("the {what} {path} is not a file")]
    NotAFile { what: &'static str, path: String },
    /// Too little in it to be a secret.
    #[error("the cluster secret {path} holds {len} bytes, fewer than {MIN_SECRET_BYTES}: create one with `autopaxos config --new-secret {path}`")]
    TooShort { path: String, len: usize },
    /// Far too much in it: probably the wrong file.
    #[error("the {what} {path} is {len} bytes, more than a secret file holds ({MAX_SECRET_FILE_BYTES}): is it the right file?")]
    TooLong { what: &'static str, path: String, len: u64 },
    /// Writing a new secret failed (it never overwrites one).
    #[error("cannot write a new cluster secret to {path}: {source}")]
    Write { path: String, source: std::io::Error },
}

impl ClusterSecret {
    /// Derives the keys from the secret's bytes (surrounding whitespace is not part of it).
    pub fn from_bytes(secret: &[u8]) -> ClusterSecret {
        let secret = secret.trim_ascii();
        ClusterSecret {
            handshake: blake3::derive_key("autopaxos 2026-12 cluster secret: handshake key", secret),
            kv_hash: blake3::derive_key("autopaxos 2026-12 cluster secret: kv hash key", secret),
        }
    }

    /// A secret of fresh random bytes, known only to this process (`local`, `bench`).
    pub fn random() -> ClusterSecret {
        ClusterSecret::from_bytes(&new_secret_text())
    }

    /// Reads a secret file, refusing one that group or others can access.
    pub fn load(path: &Path) -> Result<ClusterSecret, SecretError> {
        read_secret(path).map(|bytes| ClusterSecret::from_bytes(&bytes))
    }

    /// Writes a new random secret to `path` with mode 0600; never replaces an existing file.
    pub fn generate(path: &Path) -> Result<(), SecretError> {
        let write = |source| SecretError::Write { path: path.display().to_string(), source };
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(path).map_err(write)?;
        let mut text = new_secret_text();
        text.push(b'\n');
        file.write_all(&text).and_then(|()| file.sync_all()).map_err(write)
    }

    /// The key nodes prove knowledge of the secret with.
    pub fn handshake_key(&self) -> &[u8; 32] {
        &self.handshake
    }

    /// The key of the replicas' hash maps (SipHash-1-3 takes 128 bits).
    pub fn kv_hash_key(&self) -> HashKey {
        let mut key = [0; 16];
        key.copy_from_slice(&self.kv_hash[..16]);
        HashKey::from_bytes(key)
    }
}

impl fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterSecret(<redacted>)")
    }
}

/// A secret file's bytes (surrounding whitespace removed), refusing a file that group or others can
/// access, one too short to be a secret, or one far too long to be one. For the paths that carry the
/// secret itself to a node (EC2 user-data); everything else holds only [`ClusterSecret`]'s keys.
pub fn read_secret(path: &Path) -> Result<Vec<u8>, SecretError> {
    let bytes = read_private_file(path, "cluster secret")?;
    if bytes.len() < MIN_SECRET_BYTES {
        return Err(SecretError::TooShort { path: path.display().to_string(), len: bytes.len() });
    }
    Ok(bytes)
}

/// The bytes (surrounding whitespace removed) of a file only its owner may access, no larger than a
/// secret file: the cluster secret, a gateway's password. `what` names it in errors.
pub fn read_private_file(path: &Path, what: &'static str) -> Result<Vec<u8>, SecretError> {
    let shown = path.display().to_string();
    let read = |source| SecretError::Read { what, path: shown.clone(), source };
    let meta = std::fs::metadata(path).map_err(read)?;
    if !meta.is_file() {
        return Err(SecretError::NotAFile { what, path: shown });
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(SecretError::Mode { what, path: shown, mode });
        }
    }
    if meta.len() > MAX_SECRET_FILE_BYTES {
        return Err(SecretError::TooLong { what, path: shown, len: meta.len() });
    }
    let bytes = std::fs::read(path).map_err(read)?;
    Ok(bytes.trim_ascii().to_vec())
}

/// 32 random bytes from the OS's entropy, as 64 lowercase hex characters.
fn new_secret_text() -> Vec<u8> {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().flat_map(|b| format!("{b:02x}").into_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("autopaxos-secret-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("cluster.secret")
    }

    #[test]
    fn a_generated_secret_is_private_loads_and_is_never_overwritten() {
        let path = scratch("gen");
        ClusterSecret::generate(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let first = ClusterSecret::load(&path).unwrap();
        assert!(ClusterSecret::generate(&path).is_err(), "an existing secret must not be replaced");
        assert_eq!(ClusterSecret::load(&path).unwrap(), first);
        assert_ne!(ClusterSecret::random(), first, "fresh secrets differ");
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn a_readable_short_or_huge_file_is_refused_with_what_to_do() {
        let path = scratch("bad");
        std::fs::write(&path, "0123456789abcdef0123456789abcdef\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = ClusterSecret::load(&path).unwrap_err().to_string();
        assert!(err.contains("mode 0644") && err.contains("chmod 600"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert!(ClusterSecret::load(&path).is_ok(), "32 bytes, owner-only: usable");
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, "short").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let err = ClusterSecret::load(&path).unwrap_err().to_string();
        assert!(err.contains("fewer than 32") && err.contains("--new-secret"), "{err}");
        std::fs::write(&path, vec![b'a'; 10_000]).unwrap();
        assert!(ClusterSecret::load(&path).unwrap_err().to_string().contains("right file"));
        // A directory (mode 0755 or 1777) is not a file: no advice to chmod it.
        let err = ClusterSecret::load(path.parent().unwrap()).unwrap_err().to_string();
        assert!(err.ends_with("is not a file") && !err.contains("chmod"), "{err}");
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn keys_differ_by_purpose_whitespace_does_not_count_and_debug_shows_nothing() {
        let s = ClusterSecret::from_bytes(b"  an operator's long secret phrase, 32+ bytes\n");
        assert_eq!(s, ClusterSecret::from_bytes(b"an operator's long secret phrase, 32+ bytes"));
        assert_ne!(HashKey::from_bytes(s.handshake_key()[..16].try_into().unwrap()), s.kv_hash_key());
        assert_eq!(format!("{s:?}"), "ClusterSecret(<redacted>)");
    }
}
