//! The cluster secret and the keys derived from it (HMAC-SHA256).
//!
//! Every connection starts with a mutual challenge-response (see `tcp::handshake`): each side
//! sends a fresh 32-byte nonce and proves it holds the secret by a MAC over both nonces, under a
//! label that differs by direction, so a proof cannot be reflected back. Both sides then derive
//! one key per direction from the secret and both nonces; every later frame on the connection is
//! MACed with its direction's key and carries a sequence number, so a frame replayed from this
//! connection (or another one) fails its MAC or its sequence check.

use crate::error::{Error, Result};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::path::Path;

type HmacSha256 = Hmac<Sha256>;

/// Environment variable holding the cluster secret.
pub const SECRET_ENV: &str = "FAASCALE_CLUSTER_SECRET";
/// Shortest secret accepted (bytes).
pub const MIN_SECRET_BYTES: usize = 16;
/// Longest secret accepted (bytes): a file, not a data set.
pub const MAX_SECRET_BYTES: usize = 4096;
/// Bytes of a MAC tag.
pub const MAC_BYTES: usize = 32;
/// Bytes of a handshake nonce.
pub const NONCE_BYTES: usize = 32;

/// A key for HMAC-SHA256.
#[derive(Clone)]
pub struct Key([u8; 32]);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

impl Key {
    pub fn from_bytes(bytes: [u8; 32]) -> Key {
        Key(bytes)
    }

    /// HMAC-SHA256 over the concatenation of `parts`.
    pub fn mac(&self, parts: &[&[u8]]) -> [u8; MAC_BYTES] {
        let mut m = <HmacSha256 as Mac>::new_from_slice(&self.0).expect("HMAC takes any key length");
        for p in parts {
            m.update(p);
        }
        m.finalize().into_bytes().into()
    }

    /// Whether `tag` is the MAC of `parts`, compared in constant time.
    pub fn verify(&self, parts: &[&[u8]], tag: &[u8]) -> bool {
        let mut m = <HmacSha256 as Mac>::new_from_slice(&self.0).expect("HMAC takes any key length");
        for p in parts {
            m.update(p);
        }
        m.verify_slice(tag).is_ok()
    }
}

/// The shared cluster secret. Never printed.
#[derive(Clone)]
pub struct Secret {
    bytes: Vec<u8>,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret({} bytes)", self.bytes.len())
    }
}

impl Secret {
    pub fn new(bytes: Vec<u8>) -> Result<Secret> {
        if bytes.len() < MIN_SECRET_BYTES {
            return Err(Error::Secret(format!(
                "{} bytes; need at least {MIN_SECRET_BYTES} (use 32 random bytes)",
                bytes.len()
            )));
        }
        if bytes.len() > MAX_SECRET_BYTES {
            return Err(Error::Secret(format!("{} bytes; at most {MAX_SECRET_BYTES}", bytes.len())));
        }
        Ok(Secret { bytes })
    }

    /// Reads the secret from a file (trailing newlines stripped).
    pub fn from_file(path: &Path) -> Result<Secret> {
        let meta = std::fs::metadata(path).map_err(|e| Error::Secret(format!("{}: {e}", path.display())))?;
        if meta.len() > MAX_SECRET_BYTES as u64 + 2 {
            return Err(Error::Secret(format!("{}: {} bytes; at most {MAX_SECRET_BYTES}", path.display(), meta.len())));
        }
        let mut bytes = std::fs::read(path).map_err(|e| Error::Secret(format!("{}: {e}", path.display())))?;
        while bytes.last().is_some_and(|&b| b == b'\n' || b == b'\r') {
            bytes.pop();
        }
        Secret::new(bytes).map_err(|e| Error::Secret(format!("{}: {}", path.display(), bare(e))))
    }

    /// Reads the secret from `FAASCALE_CLUSTER_SECRET`.
    pub fn from_env() -> Result<Secret> {
        let v = std::env::var_os(SECRET_ENV).ok_or_else(|| {
            Error::Secret(format!(
                "{SECRET_ENV} is not set (or pass --secret-file); every process needs the cluster secret"
            ))
        })?;
        let bytes = std::os::unix::ffi::OsStrExt::as_bytes(v.as_os_str()).to_vec();
        Secret::new(bytes).map_err(|e| Error::Secret(format!("{SECRET_ENV}: {}", bare(e))))
    }

    /// `--secret-file` when given, else the environment variable.
    pub fn load(file: Option<&Path>) -> Result<Secret> {
        match file {
            Some(p) => Secret::from_file(p),
            None => Secret::from_env(),
        }
    }

    /// 32 fresh random bytes from the kernel, hex-encoded: a secret for a one-off local cluster.
    pub fn random() -> Result<Secret> {
        Secret::new(hex(&random_bytes::<32>()?).into_bytes())
    }

    /// The bytes (for handing to child processes through their environment).
    pub fn expose(&self) -> &[u8] {
        &self.bytes
    }

    /// A key derived from the secret under `label` and `context`.
    pub fn derive(&self, label: &str, context: &[&[u8]]) -> Key {
        let mut m = <HmacSha256 as Mac>::new_from_slice(&self.bytes).expect("HMAC takes any key length");
        m.update(label.as_bytes());
        m.update(&[0]);
        for c in context {
            m.update(c);
        }
        Key(m.finalize().into_bytes().into())
    }
}

/// The message of a `Secret` error without its prefix (for wrapping it with where it came from).
fn bare(e: Error) -> String {
    match e {
        Error::Secret(m) => m,
        e => e.to_string(),
    }
}

/// `N` random bytes from getrandom(2).
pub fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    let mut out = [0u8; N];
    let mut filled = 0;
    let mut tries = 0;
    while filled < N {
        // SAFETY: writes at most N - filled bytes into `out` from `filled` on.
        let r = unsafe { libc::getrandom(out.as_mut_ptr().add(filled) as *mut libc::c_void, N - filled, 0) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            tries += 1;
            if e.kind() == std::io::ErrorKind::Interrupted && tries < 100 {
                continue;
            }
            return Err(Error::Secret(format!("getrandom: {e}")));
        }
        filled += r as usize;
    }
    Ok(out)
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_and_long_secrets_are_refused() {
        assert!(Secret::new(b"short".to_vec()).is_err());
        assert!(Secret::new(vec![1; MAX_SECRET_BYTES + 1]).is_err());
        assert!(Secret::new(vec![1; 32]).is_ok());
    }

    #[test]
    fn secret_file_strips_newline_and_reports_its_path() {
        let p = std::env::temp_dir().join(format!("rdma-secret-{}", std::process::id()));
        std::fs::write(&p, b"0123456789abcdef0123\n").unwrap();
        assert_eq!(Secret::from_file(&p).unwrap().expose(), b"0123456789abcdef0123");
        std::fs::write(&p, b"tiny\n").unwrap();
        let e = Secret::from_file(&p).unwrap_err().to_string();
        assert!(e.contains(&p.display().to_string()) && e.contains("at least"), "{e}");
        std::fs::remove_file(&p).unwrap();
        assert!(Secret::from_file(&p).is_err());
    }

    #[test]
    fn macs_depend_on_key_and_every_part() {
        let s = Secret::new(vec![7; 32]).unwrap();
        let k = s.derive("a", &[b"x"]);
        let tag = k.mac(&[b"hello", b"world"]);
        assert!(k.verify(&[b"hello", b"world"], &tag));
        assert!(!k.verify(&[b"hello", b"worle"], &tag));
        assert!(!s.derive("b", &[b"x"]).verify(&[b"hello", b"world"], &tag));
        assert!(!s.derive("a", &[b"y"]).verify(&[b"hello", b"world"], &tag));
        assert_ne!(random_bytes::<32>().unwrap(), random_bytes::<32>().unwrap());
    }
}
