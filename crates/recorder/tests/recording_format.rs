//! The recording format across versions and ciphers: files written by the first release (version
//! 1, ChaCha20-Poly1305, kept in tests/data with their sealed key) still read and verify, and
//! version 2 files name their chunk cipher, seal with it (ring) and open with it (RustCrypto).

use std::path::{Path, PathBuf};

use recorder::Side;
use recorder::store::file::{
    Cipher, FileError, HEADER_LEN, Header, Record, RecordingWriter, md5_file, read_header, read_recording,
};
use recorder::store::keys::{self, PrivateStoreKey};

mod common;
use common::summary;

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name)
}

/// The fixture's packet `i`, as it was written (see `v1_recordings_still_read`).
fn fixture_rtp(i: u16) -> Vec<u8> {
    let mut rtp = vec![0x80, 8, 0, 0, 0, 0, 0, 0, 0x12, 0x34, 0x56, 0x78];
    rtp[2..4].copy_from_slice(&i.to_be_bytes());
    rtp[4..8].copy_from_slice(&(u32::from(i) * 160).to_be_bytes());
    rtp.extend((0..160).map(|k| (k as u16 * 3 + i) as u8));
    rtp
}

const T0: i64 = 1_700_000_000_000_000_000;

#[test]
fn v1_recordings_still_read() {
    // Written by commit 5947dbc (format version 1) with `keys::generate(b"format v1 fixture")`:
    // a start record, payload types, 120 RTP packets alternating sides, a summary.
    let key = PrivateStoreKey::unseal(&data("v1.key"), b"format v1 fixture").unwrap();
    let path = data("v1.crec");
    let header = read_header(&path).unwrap();
    assert_eq!((header.version, header.cipher), (1, Cipher::ChaCha20Poly1305));
    // Re-encoding a version 1 header (key rotation does) gives back the same bytes.
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(header.encode()[..], bytes[..HEADER_LEN]);
    assert_eq!(md5_file(&path).unwrap(), std::fs::read_to_string(data("v1.md5")).unwrap().trim());

    let c = read_recording(&path, &key).unwrap();
    assert!(c.complete);
    assert!(matches!(&c.records[0], Record::Start { ts_ns: T0, call_id } if call_id == "v1-fixture@callrec"));
    assert!(matches!(&c.records[1], Record::PayloadTypes { side: Side::Caller, map } if map.len() == 2));
    let rtp: Vec<_> = c.records.iter().filter(|r| matches!(r, Record::Rtp { .. })).collect();
    assert_eq!(rtp.len(), 120);
    for (i, r) in rtp.into_iter().enumerate() {
        let Record::Rtp { stream, side, ts_ns, rtp } = r else { unreachable!() };
        let i = i as u16;
        assert_eq!(*stream, (i % 2) as u8);
        assert_eq!(*side, if i.is_multiple_of(2) { Side::Caller } else { Side::Callee });
        assert_eq!(*ts_ns, T0 + i64::from(i) * 10_000_000);
        assert_eq!(*rtp, fixture_rtp(i), "packet {i}");
    }
    assert!(matches!(c.records.last(), Some(Record::Summary(s)) if s.sip_messages == 3));
}

struct Written {
    _dir: tempfile::TempDir,
    path: PathBuf,
    key: PrivateStoreKey,
    md5: String,
}

fn write(cipher: Cipher, packets: u16) -> Written {
    let dir = tempfile::tempdir().unwrap();
    let (public, sealed) = keys::generate(b"pw").unwrap();
    std::fs::write(dir.path().join("k"), sealed).unwrap();
    let key = PrivateStoreKey::unseal(&dir.path().join("k"), b"pw").unwrap();
    let path = dir.path().join("r.crec");
    let mut w = RecordingWriter::create_with(&path, &public, T0, true, cipher).unwrap();
    w.start(T0, "c@x").unwrap();
    for i in 0..packets {
        w.rtp(0, Side::Caller, T0 + i64::from(i) * 20_000_000, &fixture_rtp(i)).unwrap();
    }
    let md5 = w.finish(&summary("c@x")).unwrap().md5;
    Written { _dir: dir, path, key, md5 }
}

#[test]
fn version_2_names_its_cipher_and_each_cipher_reads_back() {
    for cipher in [Cipher::ChaCha20Poly1305, Cipher::Aes256Gcm] {
        let w = write(cipher, 500);
        let bytes = std::fs::read(&w.path).unwrap();
        assert_eq!(u16::from_le_bytes([bytes[8], bytes[9]]), 2);
        assert_eq!(bytes[12], cipher as u8, "{cipher:?}");
        let h = read_header(&w.path).unwrap();
        assert_eq!((h.version, h.cipher), (2, cipher));
        assert_eq!(md5_file(&w.path).unwrap(), w.md5);
        let c = read_recording(&w.path, &w.key).unwrap();
        assert!(c.complete && c.chunks > 5, "{cipher:?}: {} chunks", c.chunks);
        let rtp: Vec<&Vec<u8>> =
            c.records.iter().filter_map(|r| if let Record::Rtp { rtp, .. } = r { Some(rtp) } else { None }).collect();
        assert_eq!(rtp.len(), 500);
        assert!(rtp.iter().enumerate().all(|(i, r)| **r == fixture_rtp(i as u16)), "{cipher:?}");
    }
}

#[test]
fn a_file_read_with_the_other_cipher_or_an_unknown_one_is_refused() {
    let w = write(Cipher::Aes256Gcm, 100);
    let good = std::fs::read(&w.path).unwrap();
    let mut b = good.clone();
    b[12] = Cipher::ChaCha20Poly1305 as u8;
    std::fs::write(&w.path, &b).unwrap();
    match read_recording(&w.path, &w.key) {
        Err(FileError::Tampered { chunk: 0, .. }) => {}
        other => panic!("AES chunks opened as ChaCha20-Poly1305: {other:?}"),
    }
    for (at, v, why) in [(12, 9u8, "unknown chunk cipher"), (13, 1, "reserved"), (8, 3, "unsupported version")] {
        let mut b = good.clone();
        b[at] = v;
        std::fs::write(&w.path, &b).unwrap();
        let e = read_recording(&w.path, &w.key).unwrap_err().to_string();
        assert!(e.contains(why) && e.contains("r.crec"), "byte {at} = {v}: {e}");
    }
    // A version 1 header must have no cipher byte.
    let mut b = good.clone();
    b[8] = 1;
    std::fs::write(&w.path, &b).unwrap();
    let e = read_header(&w.path).unwrap_err().to_string();
    assert!(e.contains("reserved"), "{e}");
    std::fs::write(&w.path, &good).unwrap();
    assert!(read_recording(&w.path, &w.key).unwrap().complete);
}

#[test]
fn the_writer_uses_aes_where_the_cpu_has_it() {
    #[cfg(target_arch = "x86_64")]
    let hw = std::arch::is_x86_feature_detected!("aes") && std::arch::is_x86_feature_detected!("pclmulqdq");
    #[cfg(not(target_arch = "x86_64"))]
    let hw = Cipher::preferred() == Cipher::Aes256Gcm;
    assert_eq!(Cipher::preferred() == Cipher::Aes256Gcm, hw);
    let dir = tempfile::tempdir().unwrap();
    let (public, _) = keys::generate(b"pw").unwrap();
    let path = dir.path().join("r.crec");
    RecordingWriter::create(&path, &public, 0, true).unwrap();
    let h: Header = read_header(&path).unwrap();
    assert_eq!(h.cipher, Cipher::preferred());
}
