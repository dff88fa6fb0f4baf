//! Capture files as a packet source: classic pcap (both byte orders, µs and ns) and pcapng
//! (SHB/IDB/EPB/SPB/OPB, several interfaces with their own link types and timestamp resolutions).
//!
//! The reader reads the file in large pieces into one buffer and hands out frames in place: no copy
//! and no system call per frame, and no allocation unless a block is larger than the buffer.
//! Damage is reported with the frame number and byte offset, and a file cut
//! short in the middle of a record ends the stream with [`CaptureError::Truncated`] after every whole
//! frame before it was delivered.

use std::io::{self, Read};

use thiserror::Error;

/// Largest frame we accept. Real links stay under 256 KiB even with GRO/TSO jumbo frames.
const MAX_FRAME: u32 = 1 << 20;
/// Largest pcapng block we accept (frames plus options).
const MAX_BLOCK: u32 = 16 << 20;

#[derive(Debug, Error)]
pub enum CaptureError {
    #[error("I/O error at byte {offset}: {source}")]
    Io { offset: u64, source: io::Error },
    #[error("not a pcap or pcapng file (first bytes {magic:08x}); convert it with `editcap -F pcap`")]
    NotACapture { magic: u32 },
    #[error("file ends in the middle of frame {frame} at byte {offset} (the capture was cut short)")]
    Truncated { frame: u64, offset: u64 },
    #[error("frame {frame} at byte {offset}: {what}")]
    Malformed { frame: u64, offset: u64, what: String },
}

/// One captured frame, borrowed from the reader's buffer until the next call.
#[derive(Debug, Clone, Copy)]
pub struct Frame<'a> {
    /// 1-based frame number, as Wireshark counts.
    pub number: u64,
    /// Capture time in nanoseconds since the Unix epoch.
    pub ts_ns: i64,
    /// LINKTYPE_* value of the interface the frame came from.
    pub linktype: u32,
    /// Bytes captured (may be shorter than on the wire).
    pub data: &'a [u8],
    /// Length on the wire.
    pub orig_len: u32,
}

#[derive(Debug, Clone, Copy)]
struct Iface {
    linktype: u32,
    /// Nanoseconds per timestamp unit numerator/denominator as (mul, div).
    ts_mul: u64,
    ts_div: u64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Format {
    Pcap { linktype: u32, nanos: bool },
    PcapNg,
}

/// Bytes read from the file at a time. 256 KiB keeps the buffer in a core's L2 cache while its
/// frames are decoded.
const READ_AT_ONCE: usize = 256 << 10;

/// Streaming reader for pcap and pcapng.
///
/// Callers need not wrap the file in a `BufReader`: the reader keeps its own buffer, `buf[pos..end]`
/// holding bytes read but not yet consumed.
pub struct CaptureReader<R> {
    r: R,
    format: Format,
    big_endian: bool,
    ifaces: Vec<Iface>,
    buf: Vec<u8>,
    pos: usize,
    end: usize,
    /// The last block's body, `buf[body.0..body.1]`, valid until the next read.
    body: (usize, usize),
    /// File offset of `buf[pos]`.
    offset: u64,
    frames: u64,
}

impl<R: Read> CaptureReader<R> {
    /// Reads the file header and prepares to stream frames.
    pub fn new(r: R) -> Result<Self, CaptureError> {
        let mut me = CaptureReader {
            r,
            format: Format::PcapNg,
            big_endian: false,
            ifaces: Vec::new(),
            buf: Vec::new(),
            pos: 0,
            end: 0,
            body: (0, 0),
            offset: 0,
            frames: 0,
        };
        let mut head = [0u8; 24];
        if !me.available(4)? {
            return Err(CaptureError::NotACapture { magic: 0 });
        }
        me.fill(&mut head[..4])?;
        let magic_le = u32::from_le_bytes(head[..4].try_into().unwrap());
        match magic_le {
            0xa1b2c3d4 | 0xa1b23c4d | 0xd4c3b2a1 | 0x4d3cb2a1 => {
                me.big_endian = matches!(magic_le, 0xd4c3b2a1 | 0x4d3cb2a1);
                let nanos = matches!(magic_le, 0xa1b23c4d | 0x4d3cb2a1);
                me.fill(&mut head[4..24])?;
                let linktype = me.u32_at(&head, 20) & 0x0fff_ffff;
                me.format = Format::Pcap { linktype, nanos };
            }
            0x0a0d0d0a => {
                // The section header block is parsed by the block loop; rewind logically.
                me.format = Format::PcapNg;
                me.read_shb_rest()?;
            }
            other => return Err(CaptureError::NotACapture { magic: other.swap_bytes() }),
        }
        Ok(me)
    }

    /// The next frame, `Ok(None)` at a clean end of file.
    pub fn next_frame(&mut self) -> Result<Option<Frame<'_>>, CaptureError> {
        match self.format {
            Format::Pcap { linktype, nanos } => self.next_pcap(linktype, nanos),
            Format::PcapNg => self.next_pcapng(),
        }
    }

    fn u32_at(&self, b: &[u8], at: usize) -> u32 {
        let a: [u8; 4] = b[at..at + 4].try_into().unwrap();
        if self.big_endian { u32::from_be_bytes(a) } else { u32::from_le_bytes(a) }
    }

    fn u16_at(&self, b: &[u8], at: usize) -> u16 {
        let a: [u8; 2] = b[at..at + 2].try_into().unwrap();
        if self.big_endian { u16::from_be_bytes(a) } else { u16::from_le_bytes(a) }
    }

    /// Makes `n` bytes available at `buf[pos..]`, reading more of the file as needed. `Ok(false)`
    /// when the file ends first (what it had stays available).
    fn available(&mut self, n: usize) -> Result<bool, CaptureError> {
        if self.end - self.pos >= n {
            return Ok(true);
        }
        if self.pos + n > self.buf.len() {
            // Move the unread rest to the front; grow only for a block bigger than the buffer.
            self.buf.copy_within(self.pos..self.end, 0);
            self.end -= self.pos;
            self.pos = 0;
            let want = n.max(READ_AT_ONCE);
            if self.buf.len() < want {
                self.buf.resize(want, 0);
            }
        }
        while self.end - self.pos < n {
            match self.r.read(&mut self.buf[self.end..]) {
                Ok(0) => return Ok(false),
                Ok(k) => self.end += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(CaptureError::Io { offset: self.offset + (self.end - self.pos) as u64, source });
                }
            }
        }
        Ok(true)
    }

    /// Consumes `n` bytes (they must be available) and returns where they are in `buf`.
    fn take(&mut self, n: usize) -> (usize, usize) {
        let at = self.pos;
        self.pos += n;
        self.offset += n as u64;
        (at, at + n)
    }

    /// Consumes `n` bytes; a file that ends first was cut short in the middle of a frame.
    fn need(&mut self, n: usize) -> Result<(usize, usize), CaptureError> {
        if !self.available(n)? {
            return Err(CaptureError::Truncated { frame: self.frames + 1, offset: self.offset });
        }
        Ok(self.take(n))
    }

    fn fill(&mut self, dst: &mut [u8]) -> Result<(), CaptureError> {
        let (a, b) = self.need(dst.len())?;
        dst.copy_from_slice(&self.buf[a..b]);
        Ok(())
    }

    /// Like `fill` but a clean end of file before the first byte is `Ok(false)`.
    fn fill_or_eof(&mut self, dst: &mut [u8]) -> Result<bool, CaptureError> {
        if !self.available(1)? {
            return Ok(false);
        }
        self.fill(dst).map(|()| true)
    }

    /// Consumes the next `len` bytes as the current block's body ([`CaptureReader::body`]).
    fn read_body(&mut self, len: usize) -> Result<(), CaptureError> {
        self.body = self.need(len)?;
        Ok(())
    }

    fn body(&self) -> &[u8] {
        &self.buf[self.body.0..self.body.1]
    }

    fn malformed(&self, what: impl Into<String>) -> CaptureError {
        CaptureError::Malformed { frame: self.frames + 1, offset: self.offset, what: what.into() }
    }

    fn next_pcap(&mut self, linktype: u32, nanos: bool) -> Result<Option<Frame<'_>>, CaptureError> {
        let rec_at = self.offset;
        if !self.available(16)? {
            if self.end == self.pos {
                return Ok(None);
            }
            return Err(CaptureError::Truncated { frame: self.frames + 1, offset: rec_at });
        }
        let (h, _) = self.take(16);
        let rec: &[u8; 16] = self.buf[h..h + 16].try_into().unwrap();
        let secs = self.u32_at(rec, 0) as i64;
        let frac = self.u32_at(rec, 4) as i64;
        let incl = self.u32_at(rec, 8);
        let orig = self.u32_at(rec, 12);
        if incl > MAX_FRAME {
            return Err(CaptureError::Malformed {
                frame: self.frames + 1,
                offset: rec_at,
                what: format!("record claims {incl} captured bytes (limit {MAX_FRAME}); the file is damaged"),
            });
        }
        self.read_body(incl as usize)?;
        self.frames += 1;
        let ts_ns = secs * 1_000_000_000 + if nanos { frac } else { frac * 1000 };
        Ok(Some(Frame { number: self.frames, ts_ns, linktype, data: self.body(), orig_len: orig }))
    }

    fn read_shb_rest(&mut self) -> Result<(), CaptureError> {
        // Block type already consumed: total length, byte-order magic, then the rest.
        let mut hdr = [0u8; 8];
        self.fill(&mut hdr)?;
        let bom = u32::from_le_bytes(hdr[4..8].try_into().unwrap());
        self.big_endian = match bom {
            0x1a2b3c4d => false,
            0x4d3c2b1a => true,
            _ => return Err(self.malformed(format!("pcapng section header has byte-order magic {bom:08x}"))),
        };
        let total = self.u32_at(&hdr, 0);
        if !(28..=MAX_BLOCK).contains(&total) || !total.is_multiple_of(4) {
            return Err(self.malformed(format!("pcapng section header length {total} is invalid")));
        }
        self.read_body(total as usize - 12)?;
        self.ifaces.clear();
        Ok(())
    }

    fn next_pcapng(&mut self) -> Result<Option<Frame<'_>>, CaptureError> {
        loop {
            let mut hdr = [0u8; 8];
            let block_at = self.offset;
            if !self.fill_or_eof(&mut hdr[..1])? {
                return Ok(None);
            }
            self.fill(&mut hdr[1..4])?;
            let btype_raw = u32::from_le_bytes(hdr[..4].try_into().unwrap());
            if btype_raw == 0x0a0d0d0a {
                self.read_shb_rest()?;
                continue;
            }
            self.fill(&mut hdr[4..8])?;
            let btype = self.u32_at(&hdr, 0);
            let total = self.u32_at(&hdr, 4);
            if !(12..=MAX_BLOCK).contains(&total) || !total.is_multiple_of(4) {
                return Err(CaptureError::Malformed {
                    frame: self.frames + 1,
                    offset: block_at,
                    what: format!("pcapng block of type {btype:#x} has invalid length {total}"),
                });
            }
            let body_len = total as usize - 12;
            self.read_body(body_len + 4)?;
            match btype {
                // Interface description block.
                1 => {
                    if body_len < 8 {
                        return Err(self.malformed("pcapng interface block too short"));
                    }
                    let linktype = self.u16_at(self.body(), 0) as u32;
                    let (ts_mul, ts_div) = self.iface_tsresol(body_len);
                    self.ifaces.push(Iface { linktype, ts_mul, ts_div });
                }
                // Enhanced packet block, or the obsolete packet block (2).
                6 | 2 => {
                    if body_len < 20 {
                        return Err(self.malformed("pcapng packet block too short"));
                    }
                    let iface_id =
                        if btype == 6 { self.u32_at(self.body(), 0) } else { self.u16_at(self.body(), 0) as u32 };
                    let hi = self.u32_at(self.body(), 4) as u64;
                    let lo = self.u32_at(self.body(), 8) as u64;
                    let incl = self.u32_at(self.body(), 12) as usize;
                    let orig = self.u32_at(self.body(), 16);
                    if 20 + incl > body_len {
                        return Err(self.malformed(format!(
                            "pcapng packet block claims {incl} bytes but holds {}",
                            body_len - 20
                        )));
                    }
                    let Some(iface) = self.ifaces.get(iface_id as usize).copied() else {
                        return Err(
                            self.malformed(format!("packet names interface {iface_id}, which was never described"))
                        );
                    };
                    let units = (hi << 32) | lo;
                    let ts_ns = (units as u128 * iface.ts_mul as u128 / iface.ts_div as u128) as i64;
                    self.frames += 1;
                    return Ok(Some(Frame {
                        number: self.frames,
                        ts_ns,
                        linktype: iface.linktype,
                        data: &self.body()[20..20 + incl],
                        orig_len: orig,
                    }));
                }
                // Simple packet block: interface 0, no timestamp.
                3 => {
                    if body_len < 4 {
                        return Err(self.malformed("pcapng simple packet block too short"));
                    }
                    let Some(iface) = self.ifaces.first().copied() else {
                        return Err(self.malformed("simple packet block before any interface"));
                    };
                    let orig = self.u32_at(self.body(), 0);
                    let incl = (orig as usize).min(body_len - 4);
                    self.frames += 1;
                    return Ok(Some(Frame {
                        number: self.frames,
                        ts_ns: 0,
                        linktype: iface.linktype,
                        data: &self.body()[4..4 + incl],
                        orig_len: orig,
                    }));
                }
                // Name resolution, statistics, custom, decryption secrets…: not needed.
                _ => continue,
            }
        }
    }

    /// Reads the if_tsresol option of the IDB in `buf`; default is microseconds.
    fn iface_tsresol(&self, body_len: usize) -> (u64, u64) {
        let mut at = 8;
        while at + 4 <= body_len {
            let code = self.u16_at(self.body(), at);
            let len = self.u16_at(self.body(), at + 2) as usize;
            if code == 0 {
                break;
            }
            if code == 9 && len >= 1 && at + 5 <= body_len {
                let v = self.body()[at + 4];
                let exp = (v & 0x7f) as u32;
                return if v & 0x80 == 0 {
                    // 10^-exp seconds per unit.
                    if exp <= 9 { (10u64.pow(9 - exp), 1) } else { (1, 10u64.pow((exp - 9).min(18))) }
                } else {
                    // 2^-exp seconds per unit.
                    (1_000_000_000, 1u64 << exp.min(63))
                };
            }
            at += 4 + len.div_ceil(4) * 4;
        }
        (1000, 1)
    }
}

/// Writes a classic pcap file (µs); used by tests and tools that synthesise captures.
pub struct PcapWriter<W: io::Write> {
    w: W,
}

impl<W: io::Write> PcapWriter<W> {
    pub fn new(mut w: W, linktype: u32) -> io::Result<Self> {
        w.write_all(&0xa1b2c3d4u32.to_le_bytes())?;
        w.write_all(&2u16.to_le_bytes())?;
        w.write_all(&4u16.to_le_bytes())?;
        w.write_all(&[0u8; 8])?;
        w.write_all(&65535u32.to_le_bytes())?;
        w.write_all(&linktype.to_le_bytes())?;
        Ok(PcapWriter { w })
    }

    pub fn write(&mut self, ts_ns: i64, data: &[u8]) -> io::Result<()> {
        let secs = ts_ns.div_euclid(1_000_000_000) as u32;
        let us = (ts_ns.rem_euclid(1_000_000_000) / 1000) as u32;
        self.w.write_all(&secs.to_le_bytes())?;
        self.w.write_all(&us.to_le_bytes())?;
        self.w.write_all(&(data.len() as u32).to_le_bytes())?;
        self.w.write_all(&(data.len() as u32).to_le_bytes())?;
        self.w.write_all(data)
    }

    pub fn into_inner(self) -> W {
        self.w
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pcap_roundtrip_and_truncation() {
        let mut w = PcapWriter::new(Vec::new(), 1).unwrap();
        w.write(1_500_000_000, &[1, 2, 3]).unwrap();
        w.write(2_000_000_000, &[4; 60]).unwrap();
        let bytes = w.into_inner();
        let mut r = CaptureReader::new(&bytes[..]).unwrap();
        let f = r.next_frame().unwrap().unwrap();
        assert_eq!((f.number, f.ts_ns, f.data), (1, 1_500_000_000, &[1u8, 2, 3][..]));
        assert_eq!(r.next_frame().unwrap().unwrap().data.len(), 60);
        assert!(r.next_frame().unwrap().is_none());

        let cut = &bytes[..bytes.len() - 10];
        let mut r = CaptureReader::new(cut).unwrap();
        r.next_frame().unwrap().unwrap();
        assert!(matches!(r.next_frame(), Err(CaptureError::Truncated { frame: 2, .. })));
    }

    /// Hands out at most `step` bytes per read, so frames straddle every refill of the buffer.
    struct Dribble<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl Read for Dribble<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(self.step).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    /// Frames come back whole across buffer refills, including one larger than the buffer.
    #[test]
    fn frames_straddling_refills_and_a_frame_larger_than_the_buffer() {
        let frame = |i: usize| -> Vec<u8> {
            let len = if i == 700 { READ_AT_ONCE + 12_345 } else { 1 + (i * 977) % 1514 };
            (0..len).map(|k| (i * 31 + k) as u8).collect()
        };
        let mut w = PcapWriter::new(Vec::new(), 1).unwrap();
        for i in 0..2000 {
            w.write(i as i64 * 1_000_000_000, &frame(i)).unwrap();
        }
        let bytes = w.into_inner();
        for step in [bytes.len(), 4096, 999] {
            let mut r = CaptureReader::new(Dribble { data: &bytes, step }).unwrap();
            for i in 0..2000 {
                let f = r.next_frame().unwrap().unwrap();
                assert_eq!((f.number, f.ts_ns), (i as u64 + 1, i as i64 * 1_000_000_000));
                assert!(f.data == frame(i).as_slice(), "frame {i} differs (reads of {step} bytes)");
            }
            assert!(r.next_frame().unwrap().is_none());
        }
    }

    #[test]
    fn rejects_non_capture() {
        assert!(matches!(CaptureReader::new(&b"hello world, not a pcap"[..]), Err(CaptureError::NotACapture { .. })));
        assert!(matches!(CaptureReader::new(&b""[..]), Err(CaptureError::NotACapture { .. })));
    }

    #[test]
    fn huge_record_is_an_error_not_an_allocation() {
        let mut bytes = PcapWriter::new(Vec::new(), 1).unwrap().into_inner();
        bytes.extend_from_slice(&[0; 8]);
        bytes.extend_from_slice(&u32::MAX.to_le_bytes());
        bytes.extend_from_slice(&u32::MAX.to_le_bytes());
        let mut r = CaptureReader::new(&bytes[..]).unwrap();
        assert!(matches!(r.next_frame(), Err(CaptureError::Malformed { .. })));
    }
}
