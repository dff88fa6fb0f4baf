//! Store keys: an X25519 key pair per store generation. Capture needs only the public key; the
//! private key lives on disk sealed under a passphrase (Argon2id → ChaCha20-Poly1305), so neither a
//! stolen disk nor a root shell on the capture host can play recordings back.
//!
//! Each recording's random data key is wrapped for the public key: an ephemeral X25519 exchange,
//! HKDF-SHA256 into a key-encryption key, and ChaCha20-Poly1305 bound to the recording's file id.
//! Rotation re-wraps data keys (a header rewrite) without touching audio.

use std::fs;
use std::path::Path;

use argon2::{Algorithm, Argon2, Params, Version};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hkdf::Hkdf;
use rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha256};
use thiserror::Error;
use x25519_dalek::{EphemeralSecret, PublicKey, StaticSecret};
use zeroize::Zeroizing;

#[derive(Debug, Error)]
pub enum KeyError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: String, source: std::io::Error },
    #[error("{path} is not a callrec key file ({why})")]
    BadFile { path: String, why: &'static str },
    #[error("wrong passphrase for {path} (or the key file was altered)")]
    WrongPassphrase { path: String },
    #[error("the passphrase file {path} is empty")]
    EmptyPassphrase { path: String },
    #[error("the data key of this recording is wrapped for key {found}, not for key {expected}")]
    KeyMismatch { expected: String, found: String },
    #[error("the wrapped data key does not open (the header was altered or belongs to another store)")]
    Unwrap,
}

pub const KEY_ID_LEN: usize = 8;
pub type KeyId = [u8; KEY_ID_LEN];

pub fn key_id_hex(id: &KeyId) -> String {
    hex(id)
}

/// Lower-case hex of bytes (key ids, file ids, MD5 watermarks).
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The store's public key: all that capture needs.
#[derive(Clone)]
pub struct PublicStoreKey {
    pub key: PublicKey,
    pub id: KeyId,
}

/// The store's private key, unsealed in memory.
pub struct PrivateStoreKey {
    secret: StaticSecret,
    pub id: KeyId,
}

fn key_id_of(p: &PublicKey) -> KeyId {
    let h = Sha256::digest(p.as_bytes());
    h[..KEY_ID_LEN].try_into().unwrap()
}

const PUB_MAGIC: &[u8; 8] = b"CRPUBv1\0";
const SEALED_MAGIC: &[u8; 8] = b"CRKEYv1\0";
/// Argon2id cost: 64 MiB, 3 passes (RFC 9106's second recommended option).
const ARGON_M_KIB: u32 = 64 * 1024;
const ARGON_T: u32 = 3;

/// Reads a passphrase from a file (one trailing newline is not part of it).
pub fn read_passphrase(path: &Path) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    let mut v =
        Zeroizing::new(fs::read(path).map_err(|source| KeyError::Read { path: path.display().to_string(), source })?);
    while v.last().is_some_and(|&b| b == b'\n' || b == b'\r') {
        v.pop();
    }
    if v.is_empty() {
        return Err(KeyError::EmptyPassphrase { path: path.display().to_string() });
    }
    Ok(v)
}

fn kek_from_passphrase(pass: &[u8], salt: &[u8], m: u32, t: u32) -> Result<Zeroizing<[u8; 32]>, KeyError> {
    let params = Params::new(m, t, 1, Some(32)).map_err(|_| KeyError::Unwrap)?;
    let mut out = Zeroizing::new([0u8; 32]);
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password_into(pass, salt, &mut *out)
        .map_err(|_| KeyError::Unwrap)?;
    Ok(out)
}

/// Creates a new key pair: returns the public key and the sealed private key file's bytes.
pub fn generate(passphrase: &[u8]) -> Result<(PublicStoreKey, Vec<u8>), KeyError> {
    let secret = StaticSecret::random_from_rng(OsRng);
    let public = PublicKey::from(&secret);
    let id = key_id_of(&public);
    let mut salt = [0u8; 16];
    OsRng.fill_bytes(&mut salt);
    let kek = kek_from_passphrase(passphrase, &salt, ARGON_M_KIB, ARGON_T)?;
    let sealed = ChaCha20Poly1305::new(Key::from_slice(&*kek))
        .encrypt(Nonce::from_slice(&[0u8; 12]), Payload { msg: secret.as_bytes(), aad: &id })
        .map_err(|_| KeyError::Unwrap)?;
    let mut file = Vec::with_capacity(128);
    file.extend_from_slice(SEALED_MAGIC);
    file.extend_from_slice(&id);
    file.extend_from_slice(&ARGON_M_KIB.to_le_bytes());
    file.extend_from_slice(&ARGON_T.to_le_bytes());
    file.extend_from_slice(&salt);
    file.extend_from_slice(&sealed);
    Ok((PublicStoreKey { key: public, id }, file))
}

impl PublicStoreKey {
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = PUB_MAGIC.to_vec();
        v.extend_from_slice(&self.id);
        v.extend_from_slice(self.key.as_bytes());
        v
    }

    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let b = fs::read(path).map_err(|source| KeyError::Read { path: path.display().to_string(), source })?;
        let bad = |why| KeyError::BadFile { path: path.display().to_string(), why };
        if b.len() != 8 + KEY_ID_LEN + 32 || &b[..8] != PUB_MAGIC {
            return Err(bad("wrong size or magic"));
        }
        let key = PublicKey::from(<[u8; 32]>::try_from(&b[16..48]).unwrap());
        let id = key_id_of(&key);
        if id[..] != b[8..16] {
            return Err(bad("key id does not match the key"));
        }
        Ok(PublicStoreKey { key, id })
    }

    /// Wraps a data key for this public key with an ephemeral key of its own; returns
    /// (ephemeral public key, wrapped key).
    pub fn wrap(&self, data_key: &[u8; 32], file_id: &[u8; 16]) -> ([u8; 32], [u8; 48]) {
        let (eph_pub, shared) = self.exchange();
        wrap_with(&shared, &eph_pub, self.key.as_bytes(), data_key, file_id)
    }

    /// A fresh ephemeral X25519 exchange with this key: (ephemeral public key, shared secret).
    fn exchange(&self) -> ([u8; 32], Zeroizing<[u8; 32]>) {
        let eph = EphemeralSecret::random_from_rng(OsRng);
        let eph_pub = PublicKey::from(&eph);
        let shared = eph.diffie_hellman(&self.key);
        (*eph_pub.as_bytes(), Zeroizing::new(*shared.as_bytes()))
    }
}

fn wrap_with(
    shared: &[u8; 32],
    eph_pub: &[u8; 32],
    recipient: &[u8; 32],
    data_key: &[u8; 32],
    file_id: &[u8; 16],
) -> ([u8; 32], [u8; 48]) {
    let kek = derive_kek(shared, eph_pub, recipient, file_id);
    let ct = ChaCha20Poly1305::new(Key::from_slice(&*kek))
        .encrypt(Nonce::from_slice(&[0u8; 12]), Payload { msg: data_key, aad: file_id })
        .expect("encryption of 32 bytes cannot fail");
    (*eph_pub, ct.try_into().expect("32 + 16 bytes"))
}

/// How long one ephemeral exchange wraps the data keys of new recordings ([`KeyWrapper`]).
pub const EPHEMERAL_LIFETIME: std::time::Duration = std::time::Duration::from_secs(1);
/// At most this many recordings share one ephemeral exchange.
pub const EPHEMERAL_MAX_USES: u32 = 4096;

/// Wraps the data keys of new recordings for the store's public key, reusing one ephemeral
/// X25519 exchange for the recordings one recorder (a capture or import worker's `StoreSink`)
/// starts within [`EPHEMERAL_LIFETIME`].
///
/// Why: the exchange (two scalar multiplications, 47-50 µs here) was two thirds of creating a
/// recording, paid in the worker for every call start; at 3,000 call starts a second that is a
/// seventh of a core, when the workers have least to spare. Each recording still gets its own
/// random data key and its own key-encryption key, HKDF of the shared secret *and its random
/// file id*, so the files, their headers and how they are opened (`unwrap_key`) are unchanged.
/// What changes is what a thief of the capture process's memory gets: the shared secret of the
/// current second opens the data keys of the recordings started in it, which that memory holds
/// anyway while those calls are being recorded. The secret is zeroed when replaced or dropped.
pub struct KeyWrapper {
    key: PublicStoreKey,
    current: Option<Ephemeral>,
}

struct Ephemeral {
    eph_pub: [u8; 32],
    shared: Zeroizing<[u8; 32]>,
    since: std::time::Instant,
    uses: u32,
}

impl KeyWrapper {
    pub fn new(key: PublicStoreKey) -> KeyWrapper {
        KeyWrapper { key, current: None }
    }

    pub fn key(&self) -> &PublicStoreKey {
        &self.key
    }

    /// Wraps `data_key` for the store key, bound to `file_id`; returns (ephemeral public key,
    /// wrapped key) as [`PublicStoreKey::wrap`] does.
    pub fn wrap(&mut self, data_key: &[u8; 32], file_id: &[u8; 16]) -> ([u8; 32], [u8; 48]) {
        let fresh = |e: &Ephemeral| e.uses < EPHEMERAL_MAX_USES && e.since.elapsed() < EPHEMERAL_LIFETIME;
        if !self.current.as_ref().is_some_and(fresh) {
            let (eph_pub, shared) = self.key.exchange();
            self.current = Some(Ephemeral { eph_pub, shared, since: std::time::Instant::now(), uses: 0 });
        }
        let e = self.current.as_mut().expect("set above");
        e.uses += 1;
        wrap_with(&e.shared, &e.eph_pub, self.key.key.as_bytes(), data_key, file_id)
    }
}

fn derive_kek(shared: &[u8], eph: &[u8], recipient: &[u8], file_id: &[u8]) -> Zeroizing<[u8; 32]> {
    let mut salt = Vec::with_capacity(64);
    salt.extend_from_slice(eph);
    salt.extend_from_slice(recipient);
    let hk = Hkdf::<Sha256>::new(Some(&salt), shared);
    let mut info = b"callrec data-key wrap v1".to_vec();
    info.extend_from_slice(file_id);
    let mut okm = Zeroizing::new([0u8; 32]);
    hk.expand(&info, &mut *okm).expect("32 bytes is a valid HKDF length");
    okm
}

impl PrivateStoreKey {
    /// Opens a sealed private key file with its passphrase.
    pub fn unseal(path: &Path, passphrase: &[u8]) -> Result<Self, KeyError> {
        let b = fs::read(path).map_err(|source| KeyError::Read { path: path.display().to_string(), source })?;
        let bad = |why| KeyError::BadFile { path: path.display().to_string(), why };
        if b.len() != 8 + 8 + 4 + 4 + 16 + 48 || &b[..8] != SEALED_MAGIC {
            return Err(bad("wrong size or magic"));
        }
        let id: KeyId = b[8..16].try_into().unwrap();
        let m = u32::from_le_bytes(b[16..20].try_into().unwrap());
        let t = u32::from_le_bytes(b[20..24].try_into().unwrap());
        if !(8..=4 * 1024 * 1024).contains(&m) || !(1..=64).contains(&t) {
            return Err(bad("implausible Argon2 parameters"));
        }
        let kek = kek_from_passphrase(passphrase, &b[24..40], m, t)?;
        let plain = Zeroizing::new(
            ChaCha20Poly1305::new(Key::from_slice(&*kek))
                .decrypt(Nonce::from_slice(&[0u8; 12]), Payload { msg: &b[40..88], aad: &id })
                .map_err(|_| KeyError::WrongPassphrase { path: path.display().to_string() })?,
        );
        let secret = StaticSecret::from(<[u8; 32]>::try_from(&plain[..]).unwrap());
        if key_id_of(&PublicKey::from(&secret)) != id {
            return Err(bad("key id does not match the sealed key"));
        }
        Ok(PrivateStoreKey { secret, id })
    }

    pub fn public(&self) -> PublicStoreKey {
        PublicStoreKey { key: PublicKey::from(&self.secret), id: self.id }
    }

    /// Unwraps a recording's data key.
    pub fn unwrap_key(
        &self,
        key_id: &KeyId,
        eph_pub: &[u8; 32],
        wrapped: &[u8; 48],
        file_id: &[u8; 16],
    ) -> Result<Zeroizing<[u8; 32]>, KeyError> {
        if key_id != &self.id {
            return Err(KeyError::KeyMismatch { expected: key_id_hex(&self.id), found: key_id_hex(key_id) });
        }
        let eph = PublicKey::from(*eph_pub);
        let shared = self.secret.diffie_hellman(&eph);
        let kek = derive_kek(shared.as_bytes(), eph_pub, PublicKey::from(&self.secret).as_bytes(), file_id);
        let plain = ChaCha20Poly1305::new(Key::from_slice(&*kek))
            .decrypt(Nonce::from_slice(&[0u8; 12]), Payload { msg: wrapped, aad: file_id })
            .map_err(|_| KeyError::Unwrap)?;
        Ok(Zeroizing::new(plain.try_into().map_err(|_| KeyError::Unwrap)?))
    }
}

/// Writes a file atomically (temp file, fsync, rename) with mode 0600.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), KeyError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let w = |source| KeyError::Write { path: path.display().to_string(), source };
    let mut f = fs::OpenOptions::new().create(true).truncate(true).write(true).mode(0o600).open(&tmp).map_err(w)?;
    f.write_all(bytes).map_err(w)?;
    f.sync_all().map_err(w)?;
    fs::rename(&tmp, path).map_err(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A new key pair, its sealed half written to `dir` and unsealed again with `pass`.
    fn key_pair(dir: &Path, pass: &[u8]) -> (PublicStoreKey, PrivateStoreKey) {
        let (public, sealed) = generate(pass).unwrap();
        let p = dir.join("k.sealed");
        write_private(&p, &sealed).unwrap();
        assert!(matches!(PrivateStoreKey::unseal(&p, b"wrong"), Err(KeyError::WrongPassphrase { .. })));
        let private = PrivateStoreKey::unseal(&p, pass).unwrap();
        (public, private)
    }

    #[test]
    fn seal_unseal_wrap_unwrap() {
        let dir = tempfile::tempdir().unwrap();
        let (public, private) = key_pair(dir.path(), b"correct horse");
        assert_eq!(private.id, public.id);
        let dk = [7u8; 32];
        let fid = [1u8; 16];
        let (eph, wrapped) = public.wrap(&dk, &fid);
        assert_eq!(*private.unwrap_key(&public.id, &eph, &wrapped, &fid).unwrap(), dk);
        assert!(private.unwrap_key(&public.id, &eph, &wrapped, &[2u8; 16]).is_err());
        let mut bad = wrapped;
        bad[0] ^= 1;
        assert!(private.unwrap_key(&public.id, &eph, &bad, &fid).is_err());
    }

    /// Recordings started together share an ephemeral key but not a key-encryption key: each
    /// data key opens with its own file id only, and the exchange is renewed after
    /// EPHEMERAL_MAX_USES wraps and after EPHEMERAL_LIFETIME.
    #[test]
    fn a_shared_ephemeral_still_binds_each_data_key_to_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let (public, private) = key_pair(dir.path(), b"pw");
        let mut w = KeyWrapper::new(public.clone());
        let (dk1, fid1, dk2, fid2) = ([1u8; 32], [1u8; 16], [2u8; 32], [2u8; 16]);
        let (e1, w1) = w.wrap(&dk1, &fid1);
        let (e2, w2) = w.wrap(&dk2, &fid2);
        assert_eq!(e1, e2, "one exchange for recordings started together");
        assert_ne!(w1[32..], w2[32..], "distinct tags: distinct key-encryption keys");
        assert_eq!(*private.unwrap_key(&public.id, &e1, &w1, &fid1).unwrap(), dk1);
        assert_eq!(*private.unwrap_key(&public.id, &e2, &w2, &fid2).unwrap(), dk2);
        assert!(private.unwrap_key(&public.id, &e1, &w1, &fid2).is_err(), "a wrapped key moved to another file");
        // The same data key under two file ids does not give the same wrapped bytes.
        assert_ne!(w.wrap(&dk1, &fid1).1, w.wrap(&dk1, &fid2).1);
        for _ in 0..EPHEMERAL_MAX_USES {
            w.wrap(&dk1, &fid1);
        }
        assert_ne!(w.wrap(&dk1, &fid1).0, e1, "renewed after the maximum number of uses");
        let (e3, _) = w.wrap(&dk1, &fid1);
        std::thread::sleep(EPHEMERAL_LIFETIME + std::time::Duration::from_millis(50));
        let (e4, w4) = w.wrap(&dk2, &fid2);
        assert_ne!(e3, e4, "renewed after its lifetime");
        assert_eq!(*private.unwrap_key(&public.id, &e4, &w4, &fid2).unwrap(), dk2);
    }
}
