//! The recording file: a fixed 256-byte header, then authenticated encrypted chunks.
//!
//! ```text
//! header  magic "CRECv1\0\0" | version u16 | header_len u16 | cipher u8 | 3 zero bytes | file_id [16]
//!         | created_ns i64 | key_id [8] | ephemeral X25519 public [32] | wrapped data key [48]
//!         | zero padding to 256
//! chunk   ciphertext_len u32 LE | AEAD(data key, nonce = index u64 LE ‖ final u32 LE, aad = file_id)
//!                                 of a run of records
//! ```
//! The AEAD is the header's cipher: `1` ChaCha20-Poly1305 (RFC 8439), `2` AES-256-GCM. Version 1
//! files (written before the cipher byte existed) have a zero there and are ChaCha20-Poly1305;
//! version 2 files name their cipher. A writer picks AES-256-GCM where the CPU has AES and
//! carry-less multiply instructions (3.6 times ChaCha20-Poly1305's speed here, see [`Cipher`]), and
//! ChaCha20-Poly1305 elsewhere, where it is the faster of the two in software.
//!
//! The nonce carries the chunk's position and whether it is the last one, so reordered, dropped or
//! truncated chunks fail authentication and a recording without its final chunk is known to be
//! incomplete. Chunks are flushed every [`FLUSH_INTERVAL_NS`] (two seconds) of capture time or
//! sooner (a chunk due by time may wait up to [`BATCH_GRACE_NS`] for a batch), so a crash of the
//! process loses about a call's last two seconds. Only the header names
//! the key, so key rotation rewrites 256 bytes per file.
//!
//! Records inside chunks (all little-endian):
//! `1` RTP: stream u8, side u8, ts_ns i64, len u16, raw RTP packet
//! `2` payload types: side u8, count u8, then (pt u8, clock u32, name_len u8, name)…
//! `3` call summary: len u32, JSON
//! `4` start: ts_ns i64, call_id_len u16, call_id

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::Arc;

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Tag};
use md5::{Digest, Md5};
use rand_core::{OsRng, RngCore};
use thiserror::Error;
use zeroize::Zeroizing;

use super::keys::{KeyError, KeyId, KeyWrapper, PrivateStoreKey, PublicStoreKey, hex};
use super::md5x::{self, Md5State};
use super::writeback::WriteQueue;
use crate::model::{CallSummary, Side};

pub const MAGIC: &[u8; 8] = b"CRECv1\0\0";
pub const HEADER_LEN: usize = 256;
/// The version written: the header names the chunk cipher.
const VERSION: u16 = 2;
/// The first version: chunks are ChaCha20-Poly1305 and the cipher byte is zero. Still read, and
/// kept as it is when key rotation rewrites such a file's header.
const VERSION_1: u16 = 1;
/// Flush a chunk when this much plaintext is pending. Small, because every call in progress holds
/// one pending chunk in memory: 8 KiB is under half a second of G.711 (both directions), so 20,000
/// concurrent calls hold about 200 MB, while a chunk still amortises its 20 bytes of framing and
/// its write over 40-odd packets.
const CHUNK_TARGET: usize = 8 * 1024;
/// Largest chunk a reader accepts.
const MAX_CHUNK: usize = 1 << 20;
/// A chunk buffer's size: the target, the slack, the largest record that usually pushes a chunk past
/// target + slack (a full-size Ethernet RTP packet; bigger ones grow the buffer once), framing and
/// the tag: 10 KiB.
const CHUNK_CAPACITY: usize = FRAME + CHUNK_TARGET + CHUNK_SLACK + 15 + 1500 + 16;
/// A chunk waiting for a batched flush (see [`RecordingWriter::rtp`]) flushes alone once it holds
/// this much more than [`CHUNK_TARGET`]: the batch is an optimisation, never a reason to grow.
const CHUNK_SLACK: usize = 512;
/// Room kept in front of pending records for the chunk's length, so that length, ciphertext and
/// tag are one contiguous buffer: one write, one MD5 update.
const FRAME: usize = 4;
/// The AEAD tag after each chunk's ciphertext (both ciphers).
const AEAD_TAG: usize = 16;
/// Flush a recording's pending records at least this often in capture time, so that a crash loses
/// at most this much of a call in progress.
///
/// Why two seconds and not one: a call at G.711's 100 packets a second fills a chunk
/// (`CHUNK_TARGET`) in half a second and never waits for this; it is the calls whose packets
/// come slower (silence suppression, loss upstream, a lagging source) that flush by time, once a
/// flush interval each, so with many of them the writes, seals and the filesystem's block
/// allocations grow with the number of calls instead of the bytes. In alternating live-bench runs
/// at 20,000 calls going on (the generator flat out, 13-19 packets a second per call), one second
/// with the sync thread's period at one second lost 0.59 and 1.27 % (the worker waited for the
/// writing thread's buffers 182,018 and 188,455 times), a two-second sync period alone 0.34 and
/// 0.79 %; both at two seconds lost nothing in the socket in either run (2,242 and 0 waits), the
/// writing thread needed 0.63-0.76 of the CPU it had needed and the kernel's writeback workers
/// 0.53-0.60 (docs/BENCHMARKS.md, "Flushing and syncing every two seconds").
pub const FLUSH_INTERVAL_NS: i64 = 2_000_000_000;
/// How long past its flush interval a chunk waits for a batch ([`flush_batch`], where the MD5
/// watermarks of several recordings advance side by side) before its writer flushes it alone, on
/// its next record.
///
/// Why: a chunk past its flush interval is ready for a batch ([`RecordingWriter::rtp`]'s
/// return), like a full one. The calls whose chunks flush by time are the slow ones (see
/// [`FLUSH_INTERVAL_NS`]), and on the live bench at 24,000 calls going on (13 packets a second per
/// call) that was nearly every chunk: flushed alone, one-stream MD5 (`md5x::compress`) was 23 % of
/// the inline reader's samples (perf, docs/BENCHMARKS.md). A sink that batches
/// ([`super::StoreSink`]) flushes what is ready within a fraction of this; a writer used alone
/// flushes on its next record after it, or on its [`RecordingWriter::tick`] at the interval.
pub const BATCH_GRACE_NS: i64 = 100_000_000;
/// Chunk writes end on a multiple of this (the page and ext4 block size); see
/// [`RecordingWriter::write_sealed`].
const BLOCK: u64 = 4096;

#[derive(Debug, Error)]
pub enum FileError {
    #[error("I/O error on {path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("{path}: not a callrec recording ({why})")]
    NotRecording { path: String, why: &'static str },
    #[error("{path}: chunk {chunk} at byte {offset} failed authentication (altered, reordered or from another file)")]
    Tampered { path: String, chunk: u64, offset: u64 },
    #[error("{path}: chunk {chunk} at byte {offset} is cut short (file truncated)")]
    Truncated { path: String, chunk: u64, offset: u64 },
    #[error("{path}: chunk {chunk} at byte {offset} has an impossible length {len}")]
    BadChunk { path: String, chunk: u64, offset: u64, len: u64 },
    #[error("{path}: record {what} is malformed in chunk {chunk}")]
    BadRecord { path: String, chunk: u64, what: &'static str },
    #[error("{path}: {source}")]
    Key { path: String, source: KeyError },
}

/// The parsed fixed header.
#[derive(Debug, Clone)]
pub struct Header {
    /// 1 or 2 (see the module doc).
    pub version: u16,
    pub cipher: Cipher,
    pub file_id: [u8; 16],
    pub created_ns: i64,
    pub key_id: KeyId,
    pub eph_pub: [u8; 32],
    pub wrapped: [u8; 48],
}

impl Header {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[..8].copy_from_slice(MAGIC);
        h[8..10].copy_from_slice(&self.version.to_le_bytes());
        h[10..12].copy_from_slice(&(HEADER_LEN as u16).to_le_bytes());
        if self.version != VERSION_1 {
            h[12] = self.cipher as u8;
        }
        h[16..32].copy_from_slice(&self.file_id);
        h[32..40].copy_from_slice(&self.created_ns.to_le_bytes());
        h[40..48].copy_from_slice(&self.key_id);
        h[48..80].copy_from_slice(&self.eph_pub);
        h[80..128].copy_from_slice(&self.wrapped);
        h
    }

    pub fn decode(h: &[u8], path: &str) -> Result<Header, FileError> {
        let bad = |why| FileError::NotRecording { path: path.to_string(), why };
        if h.len() < HEADER_LEN || &h[..8] != MAGIC {
            return Err(bad("bad magic"));
        }
        let version = u16::from_le_bytes([h[8], h[9]]);
        if !(VERSION_1..=VERSION).contains(&version) || u16::from_le_bytes([h[10], h[11]]) as usize != HEADER_LEN {
            return Err(bad("unsupported version (written by a newer callrec?)"));
        }
        let cipher = match (version, h[12]) {
            (VERSION_1, 0) => Cipher::ChaCha20Poly1305,
            (VERSION_1, _) => return Err(bad("reserved header bytes are not zero")),
            (_, id) => Cipher::from_id(id).ok_or_else(|| bad("unknown chunk cipher"))?,
        };
        if h[13..16] != [0; 3] || h[128..HEADER_LEN].iter().any(|&b| b != 0) {
            return Err(bad("reserved header bytes are not zero"));
        }
        Ok(Header {
            version,
            cipher,
            file_id: h[16..32].try_into().unwrap(),
            created_ns: i64::from_le_bytes(h[32..40].try_into().unwrap()),
            key_id: h[40..48].try_into().unwrap(),
            eph_pub: h[48..80].try_into().unwrap(),
            wrapped: h[80..128].try_into().unwrap(),
        })
    }
}

fn nonce(index: u64, last: bool) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[..8].copy_from_slice(&index.to_le_bytes());
    n[8..].copy_from_slice(&(last as u32).to_le_bytes());
    n
}

/// The AEAD that seals a recording's chunks (the header's cipher byte). Both take a 256-bit key
/// and a 96-bit nonce and add a 128-bit tag, so chunk framing is the same for both.
///
/// Why two: sealing was the largest part of the store's CPU time. With AES and carry-less
/// multiply instructions, `ring`'s AES-256-GCM seals 8 KiB chunks at 8.4 GB/s on this machine
/// (Zen 4, VAES) against 2.3 GB/s for its ChaCha20-Poly1305: 24 against 85 ns per 200-byte packet
/// (benches: `crypto`). Without them AES is slow (or not constant-time), and ChaCha20-Poly1305 is
/// the right choice, so the writer asks the CPU ([`Cipher::preferred`]) and the header says which.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cipher {
    ChaCha20Poly1305 = 1,
    Aes256Gcm = 2,
}

impl Cipher {
    pub fn from_id(id: u8) -> Option<Cipher> {
        match id {
            1 => Some(Cipher::ChaCha20Poly1305),
            2 => Some(Cipher::Aes256Gcm),
            _ => None,
        }
    }

    /// AES-256-GCM where this CPU has AES and carry-less multiply instructions, else
    /// ChaCha20-Poly1305.
    pub fn preferred() -> Cipher {
        #[cfg(target_arch = "x86_64")]
        let hw = std::arch::is_x86_feature_detected!("aes") && std::arch::is_x86_feature_detected!("pclmulqdq");
        #[cfg(target_arch = "aarch64")]
        let hw = std::arch::is_aarch64_feature_detected!("aes") && std::arch::is_aarch64_feature_detected!("pmull");
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        let hw = false;
        if hw { Cipher::Aes256Gcm } else { Cipher::ChaCha20Poly1305 }
    }

    fn ring_algorithm(self) -> &'static ring::aead::Algorithm {
        match self {
            Cipher::ChaCha20Poly1305 => &ring::aead::CHACHA20_POLY1305,
            Cipher::Aes256Gcm => &ring::aead::AES_256_GCM,
        }
    }
}

/// Opens chunks when reading. RustCrypto's implementations, while the writer seals with `ring`'s:
/// every test that reads a recording back checks one implementation against the other.
enum Opener {
    ChaCha(Box<ChaCha20Poly1305>),
    Aes(Box<aes_gcm::Aes256Gcm>),
}

impl Opener {
    fn new(cipher: Cipher, key: &[u8; 32]) -> Opener {
        match cipher {
            Cipher::ChaCha20Poly1305 => Opener::ChaCha(Box::new(ChaCha20Poly1305::new(Key::from_slice(key)))),
            Cipher::Aes256Gcm => {
                Opener::Aes(Box::new(aes_gcm::Aes256Gcm::new(aes_gcm::Key::<aes_gcm::Aes256Gcm>::from_slice(key))))
            }
        }
    }

    /// Decrypts `buf` in place; false when it does not authenticate.
    fn open(&self, nonce: &[u8; 12], aad: &[u8], buf: &mut [u8], tag: &[u8]) -> bool {
        let n = chacha20poly1305::Nonce::from_slice(nonce);
        match self {
            Opener::ChaCha(c) => c.decrypt_in_place_detached(n, aad, buf, Tag::from_slice(tag)).is_ok(),
            Opener::Aes(c) => c.decrypt_in_place_detached(n, aad, buf, aes_gcm::Tag::from_slice(tag)).is_ok(),
        }
    }
}

/// Writes one recording. Plaintext exists only in `pending`, in memory.
///
/// The file stays open between chunks only when the sink's open-file budget allows (`keep_open`);
/// otherwise it is reopened for each chunk (at least once a flush interval), so the number of calls
/// recorded at once is not limited by the process's open-file limit.
#[repr(C)]
pub struct RecordingWriter {
    // `repr(C)`, these first: every record reads them (see `StoreSink::prefetch_call`).
    /// The tail (`tail_len` bytes), then `FRAME` bytes for the length, then the records of the
    /// next chunk.
    pending: Vec<u8>,
    pending_since: Option<i64>,
    /// The end of the chunks sealed so far that does not fill a block, kept at the front of
    /// `pending` (so it costs no memory: chunks are smaller by as much): written with the next
    /// chunk, or alone once `tail_since` is a flush interval old, or by `finish`.
    tail_len: usize,
    /// Capture time of the oldest record in the tail.
    tail_since: Option<i64>,
    file: Option<Arc<File>>,
    keep_open: bool,
    path: Arc<str>,
    /// Where writes go when a [`super::writeback::Writeback`] thread performs them; `None`: this
    /// thread writes.
    queue: Option<WriteQueue>,
    /// The data key for sealing chunks, with the header's [`Cipher`]. `ring`'s assembly: its
    /// ChaCha20-Poly1305 seals at 2.3 GB/s here against 0.87 GB/s for RustCrypto's, its
    /// AES-256-GCM at 8.4 GB/s (benches: `crypto`); reading ([`read_recording`]) uses RustCrypto's,
    /// so every test that reads a recording back checks one implementation against the other.
    cipher: ring::aead::LessSafeKey,
    file_id: [u8; 16],
    chunk: u64,
    md5: Md5State,
    /// `pending` is a sealed chunk (encrypted, framed), waiting for its MD5 update and write.
    sealed: bool,
    /// Bytes written to the file.
    bytes: u64,
}

/// What a finished recording is: its size and MD5 watermark.
#[derive(Debug, Clone)]
pub struct Finished {
    pub bytes: u64,
    pub md5: String,
}

impl RecordingWriter {
    /// Creates the file (must not exist) and writes its header, sealing with this CPU's
    /// [`Cipher::preferred`]. With `keep_open` false the file is closed after each write and
    /// reopened for the next.
    pub fn create(path: &Path, key: &PublicStoreKey, created_ns: i64, keep_open: bool) -> Result<Self, FileError> {
        Self::create_with(path, key, created_ns, keep_open, Cipher::preferred())
    }

    /// [`RecordingWriter::create`] with a chosen cipher.
    pub fn create_with(
        path: &Path,
        key: &PublicStoreKey,
        created_ns: i64,
        keep_open: bool,
        cipher: Cipher,
    ) -> Result<Self, FileError> {
        Self::create_inner(path, key.id, |dk, id| key.wrap(dk, id), created_ns, keep_open, cipher)
    }

    /// [`RecordingWriter::create`] for a recorder (`StoreSink`): the data key is wrapped by `wrapper`,
    /// which shares an ephemeral exchange between the recordings started within a second (see
    /// [`KeyWrapper`]). The file is the same as from `create`.
    pub fn create_wrapped(
        path: &Path,
        wrapper: &mut KeyWrapper,
        created_ns: i64,
        keep_open: bool,
    ) -> Result<Self, FileError> {
        let id = wrapper.key().id;
        Self::create_inner(path, id, |dk, fid| wrapper.wrap(dk, fid), created_ns, keep_open, Cipher::preferred())
    }

    fn create_inner(
        path: &Path,
        key_id: KeyId,
        wrap: impl FnOnce(&[u8; 32], &[u8; 16]) -> ([u8; 32], [u8; 48]),
        created_ns: i64,
        keep_open: bool,
        cipher: Cipher,
    ) -> Result<Self, FileError> {
        let p = path.display().to_string();
        let io = |source| FileError::Io { path: p.clone(), source };
        let mut file_id = [0u8; 16];
        OsRng.fill_bytes(&mut file_id);
        let mut dk = Zeroizing::new([0u8; 32]);
        OsRng.fill_bytes(&mut *dk);
        let (eph_pub, wrapped) = wrap(&dk, &file_id);
        let header = Header { version: VERSION, cipher, file_id, created_ns, key_id, eph_pub, wrapped }.encode();
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(io)?;
        file.write_all(&header).map_err(io)?;
        let mut md5 = Md5State::new();
        md5.update(&header);
        Ok(RecordingWriter {
            file: keep_open.then(|| Arc::new(file)),
            keep_open,
            path: p.into(),
            queue: None,
            cipher: ring::aead::LessSafeKey::new(
                ring::aead::UnboundKey::new(cipher.ring_algorithm(), &*dk).expect("a 32-byte key"),
            ),
            file_id,
            chunk: 0,
            // Grows to a chunk's size in a talking call's first second; a call that never gets
            // media (unanswered, or a flood of INVITEs) holds a few hundred bytes, not a page.
            pending: {
                let mut p = Vec::with_capacity(256);
                p.extend_from_slice(&[0; FRAME]);
                p
            },
            pending_since: None,
            md5,
            sealed: false,
            bytes: HEADER_LEN as u64,
            tail_len: 0,
            tail_since: None,
        })
    }

    pub fn file_id(&self) -> [u8; 16] {
        self.file_id
    }

    /// Bytes of records waiting for the next chunk.
    fn pending_len(&self) -> usize {
        self.pending.len() - self.tail_len - FRAME
    }

    /// Whether the pending chunk (with the tail in front of it) has reached its target size (see
    /// [`RecordingWriter::rtp`]).
    pub fn chunk_full(&self) -> bool {
        self.tail_len + self.pending_len() >= CHUNK_TARGET
    }

    /// After a record: flushes when the chunk is a flush interval old or past its size plus slack.
    /// Returns whether the chunk is ready to go out with the next batch
    /// ([`RecordingWriter::batch_ready`]).
    fn note(&mut self, ts_ns: i64) -> Result<bool, FileError> {
        let since = *self.pending_since.get_or_insert(ts_ns);
        if ts_ns - since >= FLUSH_INTERVAL_NS + BATCH_GRACE_NS {
            self.flush_due()?;
        } else if self.tail_len + self.pending_len() >= CHUNK_TARGET + CHUNK_SLACK {
            self.flush_chunk(false)?;
        }
        // A chunk waiting for its batch takes the tail with it.
        if !self.batch_due(ts_ns) {
            self.tick_tail(ts_ns)?;
        }
        Ok(self.batch_ready(ts_ns))
    }

    /// Whether the pending chunk should go out with the next batch ([`flush_batch`]) at capture
    /// time `now_ns`: it is full, or its flush interval is over.
    pub fn batch_ready(&self, now_ns: i64) -> bool {
        self.chunk_full() || self.batch_due(now_ns)
    }

    /// Whether the pending chunk's flush interval is over at `now_ns` (it then waits at most
    /// [`BATCH_GRACE_NS`] for a batch).
    pub fn batch_due(&self, now_ns: i64) -> bool {
        self.pending_len() > 0 && self.pending_since.is_some_and(|since| now_ns - since >= FLUSH_INTERVAL_NS)
    }

    /// Writes the held tail once its oldest record is a flush interval old: together with the
    /// records pending behind it, sealed early as a chunk, when the two reach a block boundary
    /// (so the write still ends on one, see [`RecordingWriter::write_sealed`]); alone otherwise.
    ///
    /// Why not always alone: a call whose chunks fill slower than the flush interval allows
    /// (packets lost upstream, a worker's capture clock jumping after a stall) then wrote its
    /// tail in a write of its own that ends mid-block, and the kernel zero-fills the rest of that
    /// new block first. In a 10,000-call live run that lost 39 % on an overloaded VM, that
    /// zeroing (`zero_user_segments` from `ext4_block_write_begin`) was 4.1 % of all samples, in
    /// the writing thread: work that grew with the loss that caused it.
    fn tick_tail(&mut self, now_ns: i64) -> Result<(), FileError> {
        let Some(since) = self.tail_since else { return Ok(()) };
        if now_ns - since < FLUSH_INTERVAL_NS {
            return Ok(());
        }
        if self.pending_len() > 0 {
            // Where a write of the tail and the sealed chunk behind it would stop.
            let end = self.bytes + (self.pending.len() + AEAD_TAG) as u64;
            if end - end % BLOCK >= self.bytes + self.tail_len as u64 {
                return self.flush_chunk(false);
            }
        }
        self.write_tail()
    }

    /// Flushes the pending chunk because its oldest record is a flush interval old. All of it is
    /// written, with no tail held: a tail would be as old, and due at once in a write of its own.
    fn flush_due(&mut self) -> Result<(), FileError> {
        if self.pending_len() == 0 {
            return Ok(());
        }
        self.seal_and_write(false, true)
    }

    pub fn start(&mut self, ts_ns: i64, call_id: &str) -> Result<(), FileError> {
        let id = &call_id.as_bytes()[..call_id.len().min(u16::MAX as usize)];
        self.pending.push(4);
        self.pending.extend_from_slice(&ts_ns.to_le_bytes());
        self.pending.extend_from_slice(&(id.len() as u16).to_le_bytes());
        self.pending.extend_from_slice(id);
        self.note(ts_ns).map(drop)
    }

    /// Appends one RTP packet. No allocation unless the chunk buffer must grow past its size.
    ///
    /// Returns true when the chunk is ready for a batch ([`RecordingWriter::batch_ready`]: full,
    /// or its flush interval over): the caller should flush it soon, together with other
    /// recordings' chunks, through [`flush_batch`] (their MD5 watermarks then advance side by side
    /// in SIMD lanes). A chunk left waiting flushes alone once it outgrows its slack, or
    /// [`BATCH_GRACE_NS`] after its flush interval ([`FLUSH_INTERVAL_NS`]).
    pub fn rtp(&mut self, stream: u8, side: Side, ts_ns: i64, rtp: &[u8]) -> Result<bool, FileError> {
        let rtp = &rtp[..rtp.len().min(u16::MAX as usize)];
        if self.pending.capacity() < CHUNK_CAPACITY {
            // The call has media: size the chunk buffer once, exactly (growing by doubling would
            // leave 16 KiB blocks half used, a third more memory at 20,000 calls).
            self.pending.reserve_exact(CHUNK_CAPACITY - self.pending.len());
        }
        self.pending.push(1);
        self.pending.push(stream);
        self.pending.push(side as u8);
        self.pending.extend_from_slice(&ts_ns.to_le_bytes());
        self.pending.extend_from_slice(&(rtp.len() as u16).to_le_bytes());
        self.pending.extend_from_slice(rtp);
        self.note(ts_ns)
    }

    /// Loads the buffer lines the next record will be written to: a G.711 packet's record is
    /// 185 bytes, three or four lines. A hint for [`crate::engine::Engine::handle_batch`], issued
    /// two packets ahead of the append.
    ///
    /// Why: with a thousand calls or more, each call's next record lands on lines of its chunk
    /// buffer last touched a whole chunk ago, and the frames, records and page-cache copies in
    /// between have pushed them out of the caches; appending to them then waited for memory
    /// (perf: a third of the store stage's user time at 1,000 calls). This replaced a prefetch of
    /// the lines past each append made for the call's next packet, which at 30,000 calls is
    /// evicted again before that packet comes and only added misses in flight.
    #[inline]
    pub fn prefetch_append(&self) {
        let end = self.pending.as_ptr_range().end;
        for off in [0usize, 64, 128, 184] {
            crate::prefetch::prefetch(end.wrapping_add(off));
        }
    }

    pub fn payload_types(&mut self, side: Side, map: &[(u8, &str, u32)]) -> Result<(), FileError> {
        let n = map.len().min(255);
        self.pending.push(2);
        self.pending.push(side as u8);
        self.pending.push(n as u8);
        for (pt, name, clock) in &map[..n] {
            let name = &name.as_bytes()[..name.len().min(255)];
            self.pending.push(*pt);
            self.pending.extend_from_slice(&clock.to_le_bytes());
            self.pending.push(name.len() as u8);
            self.pending.extend_from_slice(name);
        }
        Ok(())
    }

    /// Flushes pending records as a chunk, and the held tail, if their flush interval passed
    /// (call on a timer). Returns whether it wrote anything.
    pub fn tick(&mut self, now_ns: i64) -> Result<bool, FileError> {
        let before = self.bytes;
        if let Some(since) = self.pending_since
            && now_ns - since >= FLUSH_INTERVAL_NS
        {
            self.flush_due()?;
        }
        self.tick_tail(now_ns)?;
        Ok(self.bytes != before)
    }

    /// Encrypts the pending records in place and frames them: `[len | ciphertext | tag]`.
    fn seal(&mut self, last: bool) -> Result<(), FileError> {
        let nonce = ring::aead::Nonce::assume_unique_for_key(nonce(self.chunk, last));
        let tag = self
            .cipher
            .seal_in_place_separate_tag(
                nonce,
                ring::aead::Aad::from(&self.file_id),
                &mut self.pending[self.tail_len + FRAME..],
            )
            .map_err(|_| FileError::BadRecord { path: self.path.to_string(), chunk: self.chunk, what: "too large" })?;
        self.pending.extend_from_slice(tag.as_ref());
        let len = (self.pending.len() - self.tail_len - FRAME) as u32;
        self.pending[self.tail_len..self.tail_len + FRAME].copy_from_slice(&len.to_le_bytes());
        self.sealed = true;
        Ok(())
    }

    /// Writes a sealed chunk (whose MD5 is already updated) and starts the next one; `all`: the
    /// held tail too (the final chunk).
    ///
    /// The write ends on a block boundary: what of the chunk would end mid-block stays at the
    /// front of `pending` as the tail and goes out first in the next write. A buffered write that ends mid-block in a new
    /// page makes the kernel zero the rest of that page before the next write copies over it;
    /// 8,212-byte appends cost 1.8 times the system time of 8,192-byte ones here (`dd`, 655 MB,
    /// three runs each: 0.55/0.82/1.13 s against 0.30/0.38/0.30 s). A held tail reaches the file
    /// within the flush interval of its oldest record, like a chunk ([`RecordingWriter::tick`]).
    fn write_sealed(&mut self, all: bool) -> Result<(), FileError> {
        let start = self.bytes;
        let end = start + self.pending.len() as u64;
        let cut = if all { end } else { end - end % BLOCK };
        let r = if cut > start { self.write_front((cut - start) as usize) } else { Ok(()) };
        // What was not written (less than a block) is the new tail.
        if self.tail_len == 0 && !self.pending.is_empty() {
            self.tail_since = self.pending_since;
        }
        self.tail_len = self.pending.len();
        self.pending.extend_from_slice(&[0; FRAME]);
        self.pending_since = None;
        self.chunk += 1;
        self.sealed = false;
        r
    }

    /// Writes the held tail alone (it has waited a flush interval).
    fn write_tail(&mut self) -> Result<(), FileError> {
        self.write_front(self.tail_len)
    }

    /// Writes the first `n` bytes of `pending` and removes them. Written or not, they are done
    /// with: a failed write (disk full) leaves a recording that `verify` reports as damaged, and
    /// nothing is sealed twice.
    fn write_front(&mut self, n: usize) -> Result<(), FileError> {
        let queued = self
            .queue
            .as_ref()
            .is_some_and(|q| q.write(self.file.as_ref(), &self.path, self.bytes, &self.pending[..n]));
        let r = if queued { Ok(()) } else { self.write_now(n) };
        if r.is_ok() {
            self.bytes += n as u64;
        }
        let tail_written = n.min(self.tail_len);
        self.tail_len -= tail_written;
        if self.tail_len == 0 {
            self.tail_since = None;
        }
        self.pending.copy_within(n.., 0);
        self.pending.truncate(self.pending.len() - n);
        r
    }

    /// Writes the first `n` bytes of `pending` to the file in this thread.
    fn write_now(&mut self, n: usize) -> Result<(), FileError> {
        let path = &self.path;
        let ioe = |source| FileError::Io { path: path.to_string(), source };
        let r = match &mut self.file {
            Some(f) => Ok(&**f),
            None => std::fs::OpenOptions::new()
                .append(true)
                .open(&**path)
                .map(|f| &**self.file.insert(Arc::new(f)))
                .map_err(ioe),
        }
        .and_then(|mut file| file.write_all(&self.pending[..n]).map_err(ioe));
        if !self.keep_open {
            self.file = None;
        }
        r
    }

    /// The recording's path.
    pub(crate) fn path(&self) -> &Arc<str> {
        &self.path
    }

    /// From now on, hands writes to a [`super::writeback::Writeback`] thread.
    pub fn set_write_queue(&mut self, queue: WriteQueue) {
        self.queue = Some(queue);
    }

    fn flush_chunk(&mut self, last: bool) -> Result<(), FileError> {
        if self.pending_len() == 0 && !last {
            return Ok(());
        }
        self.seal_and_write(last, last)
    }

    /// Seals the pending records (`last`: as the final chunk), advances the MD5 and writes them;
    /// `all`: the held tail too, ending wherever the chunk ends ([`RecordingWriter::write_sealed`]).
    fn seal_and_write(&mut self, last: bool, all: bool) -> Result<(), FileError> {
        self.seal(last)?;
        self.md5.update(&self.pending[self.tail_len..]);
        self.write_sealed(all)
    }

    /// Writes the call summary and the final chunk and returns the MD5 watermark. The data is not
    /// synced here: [`super::StoreSink`] syncs the filesystem once before the index commit that
    /// marks calls complete, instead of one fsync per call.
    pub fn finish(mut self, summary: &CallSummary) -> Result<Finished, FileError> {
        let json = serde_json::to_vec(summary).expect("summary serialises");
        self.pending.push(3);
        self.pending.extend_from_slice(&(json.len() as u32).to_le_bytes());
        self.pending.extend_from_slice(&json);
        if self.pending_len() > CHUNK_TARGET {
            self.flush_chunk(false)?;
        }
        self.flush_chunk(true)?;
        let md5 = hex(&self.md5.finalize());
        Ok(Finished { bytes: self.bytes, md5 })
    }
}

/// Flushes the pending chunks of several recordings together: each is encrypted, then their MD5
/// watermarks advance side by side ([`md5x::update_many`]), then each is written. The same bytes
/// and watermark as flushing each alone. A chunk whose flush interval is over at capture time
/// `now_ns` is written whole, with the tail before it, as a flush by time alone would be (a tail
/// held back would be as old, and due at once in a write of its own); a full chunk's write ends on
/// a block boundary (the rest is held as the tail, see `write_sealed`). A writer whose chunk fails
/// to seal or write reports its error through `on_error` and the others go on. Allocates nothing.
pub fn flush_batch<W: AsMut<RecordingWriter>>(writers: &mut [W], now_ns: i64, mut on_error: impl FnMut(FileError)) {
    for w in writers.iter_mut().map(AsMut::as_mut) {
        if w.pending_len() > 0
            && let Err(e) = w.seal(false)
        {
            on_error(e);
        }
    }
    md5x::update_many(
        writers
            .iter_mut()
            .map(AsMut::as_mut)
            .filter(|w| w.sealed)
            .map(|w| md5x::Job { state: &mut w.md5, data: &w.pending[w.tail_len..] }),
    );
    for w in writers.iter_mut().map(AsMut::as_mut).filter(|w| w.sealed) {
        // Sealing keeps the chunk's age (and makes it longer, never empty).
        let whole = w.batch_due(now_ns);
        if let Err(e) = w.write_sealed(whole) {
            on_error(e);
        }
    }
}

impl AsMut<RecordingWriter> for RecordingWriter {
    fn as_mut(&mut self) -> &mut RecordingWriter {
        self
    }
}

/// A decoded record.
#[derive(Debug, Clone)]
pub enum Record {
    Start { ts_ns: i64, call_id: String },
    Rtp { stream: u8, side: Side, ts_ns: i64, rtp: Vec<u8> },
    PayloadTypes { side: Side, map: Vec<(u8, String, u32)> },
    Summary(Box<CallSummary>),
}

/// What reading a whole recording found.
#[derive(Debug, Default)]
pub struct Contents {
    pub records: Vec<Record>,
    /// False when the final chunk is missing (capture interrupted before the call ended).
    pub complete: bool,
    pub chunks: u64,
}

/// MD5 of a file, hex.
pub fn md5_file(path: &Path) -> Result<String, FileError> {
    let mut f = File::open(path).map_err(|source| FileError::Io { path: path.display().to_string(), source })?;
    let mut h = Md5::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).map_err(|source| FileError::Io { path: path.display().to_string(), source })?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

/// Reads the header only.
pub fn read_header(path: &Path) -> Result<Header, FileError> {
    let p = path.display().to_string();
    let mut f = File::open(path).map_err(|source| FileError::Io { path: p.clone(), source })?;
    let mut h = [0u8; HEADER_LEN];
    f.read_exact(&mut h).map_err(|_| FileError::NotRecording { path: p.clone(), why: "shorter than a header" })?;
    Header::decode(&h, &p)
}

/// Rewrites the header in place (key rotation). The caller re-computes the MD5 watermark.
pub fn rewrite_header(path: &Path, header: &Header) -> Result<(), FileError> {
    let p = path.display().to_string();
    let io = |source| FileError::Io { path: p.clone(), source };
    let mut f = std::fs::OpenOptions::new().write(true).open(path).map_err(io)?;
    f.seek(SeekFrom::Start(0)).map_err(io)?;
    f.write_all(&header.encode()).map_err(io)?;
    f.sync_data().map_err(io)
}

/// Checks the chunk framing without any key: lengths are sane and the file ends on a chunk boundary.
/// Returns the number of chunks.
pub fn check_structure(path: &Path) -> Result<u64, FileError> {
    walk_chunks(path, |_| Ok(()))
}

fn walk_chunks(path: &Path, f: impl FnMut(Chunk<'_>) -> Result<(), FileError>) -> Result<u64, FileError> {
    let p = path.display().to_string();
    let data = std::fs::read(path).map_err(|source| FileError::Io { path: p.clone(), source })?;
    walk_chunk_bytes(&data, &p, f)
}

/// One chunk as framed on disk.
struct Chunk<'a> {
    index: u64,
    offset: u64,
    /// Ciphertext and tag.
    body: &'a [u8],
    /// Whether it is the last chunk in the file (which must carry the final flag).
    last_in_file: bool,
}

fn walk_chunk_bytes(
    data: &[u8],
    p: &str,
    mut f: impl FnMut(Chunk<'_>) -> Result<(), FileError>,
) -> Result<u64, FileError> {
    let p = p.to_string();
    Header::decode(data, &p)?;
    let mut at = HEADER_LEN;
    let mut index = 0u64;
    while at < data.len() {
        let Some(lenb) = data.get(at..at + 4) else {
            return Err(FileError::Truncated { path: p, chunk: index, offset: at as u64 });
        };
        let len = u32::from_le_bytes(lenb.try_into().unwrap()) as usize;
        if !(16..=MAX_CHUNK).contains(&len) {
            return Err(FileError::BadChunk { path: p, chunk: index, offset: at as u64, len: len as u64 });
        }
        let Some(body) = data.get(at + 4..at + 4 + len) else {
            return Err(FileError::Truncated { path: p, chunk: index, offset: at as u64 });
        };
        f(Chunk { index, offset: at as u64, body, last_in_file: at + 4 + len == data.len() })?;
        at += 4 + len;
        index += 1;
    }
    Ok(index)
}

/// Decrypts and authenticates every chunk, returning the records.
pub fn read_recording(path: &Path, key: &PrivateStoreKey) -> Result<Contents, FileError> {
    let p = path.display().to_string();
    let data = std::fs::read(path).map_err(|source| FileError::Io { path: p.clone(), source })?;
    read_recording_bytes(&data, &p, key)
}

/// [`read_recording`] on bytes in memory (`name` is used in errors).
pub fn read_recording_bytes(data: &[u8], name: &str, key: &PrivateStoreKey) -> Result<Contents, FileError> {
    let p = name.to_string();
    let header = Header::decode(data, &p)?;
    let dk = key
        .unwrap_key(&header.key_id, &header.eph_pub, &header.wrapped, &header.file_id)
        .map_err(|source| FileError::Key { path: p.clone(), source })?;
    let cipher = Opener::new(header.cipher, &dk);
    let mut out = Contents::default();
    let mut complete = false;
    let mut records = Vec::new();
    let mut buf = Vec::new();
    let chunks = walk_chunk_bytes(data, name, |c| {
        let (ct, tag) = c.body.split_at(c.body.len() - 16);
        // Only the file's last chunk may carry the final flag; if it does not, the recording was
        // cut short (capture interrupted) and is read as incomplete.
        let flags: &[bool] = if c.last_in_file { &[true, false] } else { &[false] };
        let mut opened = None;
        for &last in flags {
            buf.clear();
            buf.extend_from_slice(ct);
            if cipher.open(&nonce(c.index, last), &header.file_id, &mut buf, tag) {
                opened = Some(last);
                break;
            }
        }
        let Some(last) = opened else {
            return Err(FileError::Tampered { path: p.clone(), chunk: c.index, offset: c.offset });
        };
        complete = last;
        parse_records(&buf, c.index, &p, &mut records)
    })?;
    out.records = records;
    out.complete = complete;
    out.chunks = chunks;
    Ok(out)
}

fn parse_records(mut b: &[u8], chunk: u64, path: &str, out: &mut Vec<Record>) -> Result<(), FileError> {
    let bad = |what| FileError::BadRecord { path: path.to_string(), chunk, what };
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (h, t) = (b.get(..n)?, b.get(n..)?);
        *b = t;
        Some(h)
    }
    let side = |v: u8| if v == 0 { Side::Caller } else { Side::Callee };
    while let Some(&kind) = b.first() {
        b = &b[1..];
        match kind {
            1 => {
                let h = take(&mut b, 12).ok_or_else(|| bad("rtp"))?;
                let len = u16::from_le_bytes([h[10], h[11]]) as usize;
                let rtp = take(&mut b, len).ok_or_else(|| bad("rtp"))?.to_vec();
                out.push(Record::Rtp {
                    stream: h[0],
                    side: side(h[1]),
                    ts_ns: i64::from_le_bytes(h[2..10].try_into().unwrap()),
                    rtp,
                });
            }
            2 => {
                let h = take(&mut b, 2).ok_or_else(|| bad("payload types"))?;
                let mut map = Vec::new();
                for _ in 0..h[1] {
                    let e = take(&mut b, 6).ok_or_else(|| bad("payload types"))?;
                    let name = take(&mut b, e[5] as usize).ok_or_else(|| bad("payload types"))?;
                    map.push((
                        e[0],
                        String::from_utf8_lossy(name).into_owned(),
                        u32::from_le_bytes(e[1..5].try_into().unwrap()),
                    ));
                }
                out.push(Record::PayloadTypes { side: side(h[0]), map });
            }
            3 => {
                let h = take(&mut b, 4).ok_or_else(|| bad("summary"))?;
                let len = u32::from_le_bytes(h.try_into().unwrap()) as usize;
                let json = take(&mut b, len).ok_or_else(|| bad("summary"))?;
                let s: CallSummary = serde_json::from_slice(json).map_err(|_| bad("summary"))?;
                out.push(Record::Summary(Box::new(s)));
            }
            4 => {
                let h = take(&mut b, 10).ok_or_else(|| bad("start"))?;
                let len = u16::from_le_bytes([h[8], h[9]]) as usize;
                let id = take(&mut b, len).ok_or_else(|| bad("start"))?;
                out.push(Record::Start {
                    ts_ns: i64::from_le_bytes(h[..8].try_into().unwrap()),
                    call_id: String::from_utf8_lossy(id).into_owned(),
                });
            }
            _ => return Err(bad("type")),
        }
    }
    Ok(())
}
