//! MD5 for many recordings at once: the watermark's cost per byte, cut by hashing independent
//! files in SIMD lanes.
//!
//! Every recording's MD5 watermark covers all of its bytes, and MD5 is a serial chain of 64 dependent
//! steps per 64-byte block, so one stream cannot go faster than ~5 cycles per byte (RustCrypto's
//! `md-5` does 596 MiB/s here, about a third of the store's cost per packet). A recorder always has
//! many calls in progress, each with its own independent MD5 chain. [`update_many`] advances up to
//! 16 of them together, one per 32-bit lane of an AVX-512 register (8 with AVX2), the way Intel's
//! multi-buffer hashing does. The output is plain MD5, bit for bit (tests compare with `md-5`).
//!
//! [`Md5State`] is the per-file state; [`Md5State::update`] is the ordinary one-stream path, used
//! for headers, tails and on CPUs without AVX2.

use std::sync::OnceLock;

/// Per-step additive constants, `floor(|sin(i + 1)| * 2^32)`.
const K: [u32; 64] = [
    0xd76aa478, 0xe8c7b756, 0x242070db, 0xc1bdceee, 0xf57c0faf, 0x4787c62a, 0xa8304613, 0xfd469501, 0x698098d8,
    0x8b44f7af, 0xffff5bb1, 0x895cd7be, 0x6b901122, 0xfd987193, 0xa679438e, 0x49b40821, 0xf61e2562, 0xc040b340,
    0x265e5a51, 0xe9b6c7aa, 0xd62f105d, 0x02441453, 0xd8a1e681, 0xe7d3fbc8, 0x21e1cde6, 0xc33707d6, 0xf4d50d87,
    0x455a14ed, 0xa9e3e905, 0xfcefa3f8, 0x676f02d9, 0x8d2a4c8a, 0xfffa3942, 0x8771f681, 0x6d9d6122, 0xfde5380c,
    0xa4beea44, 0x4bdecfa9, 0xf6bb4b60, 0xbebfbc70, 0x289b7ec6, 0xeaa127fa, 0xd4ef3085, 0x04881d05, 0xd9d4d039,
    0xe6db99e5, 0x1fa27cf8, 0xc4ac5665, 0xf4292244, 0x432aff97, 0xab9423a7, 0xfc93a039, 0x655b59c3, 0x8f0ccc92,
    0xffeff47d, 0x85845dd1, 0x6fa87e4f, 0xfe2ce6e0, 0xa3014314, 0x4e0811a1, 0xf7537e82, 0xbd3af235, 0x2ad7d2bb,
    0xeb86d391,
];
const INIT: [u32; 4] = [0x67452301, 0xefcdab89, 0x98badcfe, 0x10325476];

/// One MD5 computation in progress.
#[derive(Clone)]
pub struct Md5State {
    h: [u32; 4],
    buf: [u8; 64],
    buf_len: usize,
    /// Bytes hashed so far.
    len: u64,
}

impl Default for Md5State {
    fn default() -> Self {
        Md5State { h: INIT, buf: [0; 64], buf_len: 0, len: 0 }
    }
}

impl Md5State {
    pub fn new() -> Self {
        Self::default()
    }

    /// Hashes `data` on this thread, one block after another.
    pub fn update(&mut self, data: &[u8]) {
        let rest = self.take_partial(data);
        let whole = rest.len() / 64 * 64;
        for b in rest[..whole].chunks_exact(64) {
            compress(&mut self.h, b.try_into().unwrap());
        }
        self.keep_tail(&rest[whole..]);
    }

    /// Completes a buffered partial block from the front of `data`; returns what is left.
    fn take_partial<'d>(&mut self, data: &'d [u8]) -> &'d [u8] {
        self.len += data.len() as u64;
        if self.buf_len == 0 {
            return data;
        }
        let n = (64 - self.buf_len).min(data.len());
        self.buf[self.buf_len..self.buf_len + n].copy_from_slice(&data[..n]);
        self.buf_len += n;
        if self.buf_len == 64 {
            let b = self.buf;
            compress(&mut self.h, &b);
            self.buf_len = 0;
        }
        &data[n..]
    }

    /// Buffers a tail shorter than a block (the buffer is empty when this is called).
    fn keep_tail(&mut self, tail: &[u8]) {
        debug_assert!(tail.len() < 64 && (self.buf_len == 0 || tail.is_empty()));
        self.buf[self.buf_len..self.buf_len + tail.len()].copy_from_slice(tail);
        self.buf_len += tail.len();
    }

    /// The digest of everything hashed.
    pub fn finalize(mut self) -> [u8; 16] {
        let bits = self.len.wrapping_mul(8);
        let mut pad = [0u8; 72];
        pad[0] = 0x80;
        let padlen = if self.buf_len < 56 { 56 - self.buf_len } else { 120 - self.buf_len };
        self.update(&pad[..padlen]);
        self.update(&bits.to_le_bytes());
        debug_assert_eq!(self.buf_len, 0);
        let mut out = [0u8; 16];
        for (o, w) in out.chunks_exact_mut(4).zip(self.h) {
            o.copy_from_slice(&w.to_le_bytes());
        }
        out
    }
}

#[inline(always)]
fn word(b: &[u8; 64], i: usize) -> u32 {
    u32::from_le_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]])
}

/// The message word used by step `i` and its left rotation.
const fn schedule(i: usize) -> (usize, u32) {
    const S: [u32; 16] = [7, 12, 17, 22, 5, 9, 14, 20, 4, 11, 16, 23, 6, 10, 15, 21];
    let g = match i / 16 {
        0 => i,
        1 => (5 * i + 1) % 16,
        2 => (3 * i + 5) % 16,
        _ => (7 * i) % 16,
    };
    (g, S[(i / 16) * 4 + i % 4])
}

/// A vector of 32-bit lanes with the operations MD5 needs; one lane per independent stream.
/// The functions are `unsafe` because the SIMD implementations need their instruction set, which
/// the caller guarantees (by runtime detection).
trait V: Copy {
    unsafe fn splat(x: u32) -> Self;
    unsafe fn load(p: *const u32) -> Self;
    unsafe fn store(self, p: *mut u32);
    unsafe fn add(self, o: Self) -> Self;
    unsafe fn rotl<const R: i32>(self) -> Self;
    unsafe fn f(b: Self, c: Self, d: Self) -> Self;
    unsafe fn g(b: Self, c: Self, d: Self) -> Self;
    unsafe fn h(b: Self, c: Self, d: Self) -> Self;
    unsafe fn i(b: Self, c: Self, d: Self) -> Self;
}

/// One step: `a = b + rotl(a + fn(b, c, d) + k + x, s)`.
macro_rules! step {
    ($f:ident, $a:ident, $b:ident, $c:ident, $d:ident, $x:ident, $i:expr) => {{
        const G: (usize, u32) = schedule($i);
        let t = $a.add(V::$f($b, $c, $d)).add($x[G.0].add(V::splat(K[$i])));
        $a = $b.add(t.rotl::<{ G.1 as i32 }>());
    }};
}

macro_rules! four {
    ($f:ident, $a:ident, $b:ident, $c:ident, $d:ident, $x:ident, $i:expr) => {
        step!($f, $a, $b, $c, $d, $x, $i);
        step!($f, $d, $a, $b, $c, $x, $i + 1);
        step!($f, $c, $d, $a, $b, $x, $i + 2);
        step!($f, $b, $c, $d, $a, $x, $i + 3);
    };
}

/// One block in every lane. `x[w]` holds message word `w` of every lane.
#[inline(always)]
unsafe fn rounds<T: V>(s: &mut [T; 4], x: &[T; 16]) {
    unsafe {
        let [mut a, mut b, mut c, mut d] = *s;
        four!(f, a, b, c, d, x, 0);
        four!(f, a, b, c, d, x, 4);
        four!(f, a, b, c, d, x, 8);
        four!(f, a, b, c, d, x, 12);
        four!(g, a, b, c, d, x, 16);
        four!(g, a, b, c, d, x, 20);
        four!(g, a, b, c, d, x, 24);
        four!(g, a, b, c, d, x, 28);
        four!(h, a, b, c, d, x, 32);
        four!(h, a, b, c, d, x, 36);
        four!(h, a, b, c, d, x, 40);
        four!(h, a, b, c, d, x, 44);
        four!(i, a, b, c, d, x, 48);
        four!(i, a, b, c, d, x, 52);
        four!(i, a, b, c, d, x, 56);
        four!(i, a, b, c, d, x, 60);
        s[0] = s[0].add(a);
        s[1] = s[1].add(b);
        s[2] = s[2].add(c);
        s[3] = s[3].add(d);
    }
}

/// Plain `u32` as a one-lane vector: the scalar compression function is the same unrolled code.
#[derive(Clone, Copy)]
struct One(u32);

impl V for One {
    #[inline(always)]
    unsafe fn splat(x: u32) -> Self {
        One(x)
    }
    #[inline(always)]
    unsafe fn load(p: *const u32) -> Self {
        One(unsafe { p.read() })
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut u32) {
        unsafe { p.write(self.0) }
    }
    #[inline(always)]
    unsafe fn add(self, o: Self) -> Self {
        One(self.0.wrapping_add(o.0))
    }
    #[inline(always)]
    unsafe fn rotl<const R: i32>(self) -> Self {
        One(self.0.rotate_left(R as u32))
    }
    #[inline(always)]
    unsafe fn f(b: Self, c: Self, d: Self) -> Self {
        One(d.0 ^ (b.0 & (c.0 ^ d.0)))
    }
    #[inline(always)]
    unsafe fn g(b: Self, c: Self, d: Self) -> Self {
        One(c.0 ^ (d.0 & (b.0 ^ c.0)))
    }
    #[inline(always)]
    unsafe fn h(b: Self, c: Self, d: Self) -> Self {
        One(b.0 ^ c.0 ^ d.0)
    }
    #[inline(always)]
    unsafe fn i(b: Self, c: Self, d: Self) -> Self {
        One(c.0 ^ (b.0 | !d.0))
    }
}

/// The MD5 compression function on one block.
fn compress(h: &mut [u32; 4], block: &[u8; 64]) {
    let x: [One; 16] = std::array::from_fn(|i| One(word(block, i)));
    let mut s = h.map(One);
    // SAFETY: `One`'s operations are plain integer arithmetic.
    unsafe { rounds(&mut s, &x) };
    *h = s.map(|v| v.0);
}

/// One stream for [`update_many`]: a state and the bytes to add to it.
pub struct Job<'a> {
    pub state: &'a mut Md5State,
    pub data: &'a [u8],
}

/// Which SIMD path this CPU runs, decided once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lanes {
    Scalar,
    Avx2,
    Avx512,
}

impl Lanes {
    /// Streams hashed at once.
    pub fn width(self) -> usize {
        match self {
            Lanes::Scalar => 1,
            Lanes::Avx2 => 8,
            Lanes::Avx512 => 16,
        }
    }
}

/// The widest path this CPU supports (`CALLREC_MD5_LANES=scalar|avx2` narrows it, for tests and
/// benches).
pub fn lanes() -> Lanes {
    static L: OnceLock<Lanes> = OnceLock::new();
    *L.get_or_init(|| {
        let forced = std::env::var("CALLREC_MD5_LANES").ok();
        detect(forced.as_deref())
    })
}

fn detect(forced: Option<&str>) -> Lanes {
    #[cfg(target_arch = "x86_64")]
    {
        let max = match forced {
            Some("scalar") => Lanes::Scalar,
            Some("avx2") => Lanes::Avx2,
            _ => Lanes::Avx512,
        };
        if max == Lanes::Avx512 && std::arch::is_x86_feature_detected!("avx512f") {
            return Lanes::Avx512;
        }
        if max != Lanes::Scalar && std::arch::is_x86_feature_detected!("avx2") {
            return Lanes::Avx2;
        }
    }
    let _ = forced;
    Lanes::Scalar
}

/// Adds each job's data to its state, hashing up to [`Lanes::width`] jobs side by side. Same
/// result as calling [`Md5State::update`] on each. Allocates nothing.
pub fn update_many<'a>(jobs: impl IntoIterator<Item = Job<'a>>) {
    update_many_with(lanes(), jobs)
}

/// [`update_many`] on a chosen path (tests and benches compare all of them).
pub fn update_many_with<'a>(lanes: Lanes, jobs: impl IntoIterator<Item = Job<'a>>) {
    // Complete buffered partial blocks and buffer the tails first: what remains for the lanes is
    // whole blocks, and the lanes touch only the chaining values `h`, never the buffer.
    let mut work = [Work { h: INIT, next: std::ptr::null(), left: 0 }; MAX_JOBS];
    let mut owner: [Option<&'a mut Md5State>; MAX_JOBS] = [const { None }; MAX_JOBS];
    let mut n = 0;
    for j in jobs {
        if lanes == Lanes::Scalar || n == MAX_JOBS {
            // No lanes, or more streams than one batch holds (callers pass a few lanes' worth).
            j.state.update(j.data);
            continue;
        }
        let rest = j.state.take_partial(j.data);
        let whole = rest.len() / 64 * 64;
        j.state.keep_tail(&rest[whole..]);
        if whole > 0 {
            work[n] = Work { h: j.state.h, next: rest.as_ptr(), left: whole / 64 };
            owner[n] = Some(j.state);
            n += 1;
        }
    }
    run_lanes(lanes, &mut work[..n]);
    for (w, o) in work[..n].iter().zip(&mut owner) {
        if let Some(state) = o.take() {
            state.h = w.h;
        }
    }
}

/// Most streams one [`update_many_with`] call spreads over lanes; more are hashed one at a time.
pub const MAX_JOBS: usize = 64;

/// One stream's whole blocks waiting for a lane: chaining values, next block, blocks left.
#[derive(Clone, Copy)]
struct Work {
    h: [u32; 4],
    next: *const u8,
    left: usize,
}

/// Runs the whole blocks of `work` through SIMD lanes: each lane takes the next waiting stream
/// when its current one runs out.
fn run_lanes(lanes: Lanes, work: &mut [Work]) {
    // The instruction set is checked here too (a cached flag), so a caller asking for lanes the
    // CPU lacks gets the scalar path, never an illegal instruction.
    #[cfg(target_arch = "x86_64")]
    match lanes {
        // SAFETY: the instruction set was just detected; each `next` points into a live slice
        // with `left * 64` readable bytes.
        Lanes::Avx512 if std::arch::is_x86_feature_detected!("avx512f") => return unsafe { x86::run512(work) },
        Lanes::Avx2 if std::arch::is_x86_feature_detected!("avx2") => return unsafe { x86::run256(work) },
        _ => {}
    }
    let _ = lanes;
    for w in work {
        // SAFETY: `next` points at `left * 64` bytes of the stream's data.
        let blocks = unsafe { std::slice::from_raw_parts(w.next, w.left * 64) };
        for b in blocks.chunks_exact(64) {
            compress(&mut w.h, b.try_into().unwrap());
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! The lane-parallel compression function, written once over a small vector trait and
    //! instantiated for AVX-512 (16 lanes) and AVX2 (8 lanes).
    use std::arch::x86_64::*;

    use super::{V, Work, compress, rounds};

    #[derive(Clone, Copy)]
    pub struct Avx512(__m512i);
    #[derive(Clone, Copy)]
    pub struct Avx2(__m256i);

    impl V for Avx512 {
        #[inline(always)]
        unsafe fn splat(x: u32) -> Self {
            unsafe { Avx512(_mm512_set1_epi32(x as i32)) }
        }
        #[inline(always)]
        unsafe fn load(p: *const u32) -> Self {
            unsafe { Avx512(_mm512_loadu_si512(p.cast())) }
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut u32) {
            unsafe { _mm512_storeu_si512(p.cast(), self.0) }
        }
        #[inline(always)]
        unsafe fn add(self, o: Self) -> Self {
            unsafe { Avx512(_mm512_add_epi32(self.0, o.0)) }
        }
        #[inline(always)]
        unsafe fn rotl<const R: i32>(self) -> Self {
            unsafe { Avx512(_mm512_rolv_epi32(self.0, _mm512_set1_epi32(R))) }
        }
        // Truth tables over (b, c, d) as vpternlogd immediates.
        #[inline(always)]
        unsafe fn f(b: Self, c: Self, d: Self) -> Self {
            unsafe { Avx512(_mm512_ternarylogic_epi32::<0xCA>(b.0, c.0, d.0)) } // b ? c : d
        }
        #[inline(always)]
        unsafe fn g(b: Self, c: Self, d: Self) -> Self {
            unsafe { Avx512(_mm512_ternarylogic_epi32::<0xE4>(b.0, c.0, d.0)) } // d ? b : c
        }
        #[inline(always)]
        unsafe fn h(b: Self, c: Self, d: Self) -> Self {
            unsafe { Avx512(_mm512_ternarylogic_epi32::<0x96>(b.0, c.0, d.0)) } // b ^ c ^ d
        }
        #[inline(always)]
        unsafe fn i(b: Self, c: Self, d: Self) -> Self {
            unsafe { Avx512(_mm512_ternarylogic_epi32::<0x39>(b.0, c.0, d.0)) } // c ^ (b | !d)
        }
    }

    impl V for Avx2 {
        #[inline(always)]
        unsafe fn splat(x: u32) -> Self {
            unsafe { Avx2(_mm256_set1_epi32(x as i32)) }
        }
        #[inline(always)]
        unsafe fn load(p: *const u32) -> Self {
            unsafe { Avx2(_mm256_loadu_si256(p.cast())) }
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut u32) {
            unsafe { _mm256_storeu_si256(p.cast(), self.0) }
        }
        #[inline(always)]
        unsafe fn add(self, o: Self) -> Self {
            unsafe { Avx2(_mm256_add_epi32(self.0, o.0)) }
        }
        #[inline(always)]
        unsafe fn rotl<const R: i32>(self) -> Self {
            unsafe {
                Avx2(_mm256_or_si256(
                    _mm256_sllv_epi32(self.0, _mm256_set1_epi32(R)),
                    _mm256_srlv_epi32(self.0, _mm256_set1_epi32(32 - R)),
                ))
            }
        }
        #[inline(always)]
        unsafe fn f(b: Self, c: Self, d: Self) -> Self {
            // d ^ (b & (c ^ d))
            unsafe { Avx2(_mm256_xor_si256(d.0, _mm256_and_si256(b.0, _mm256_xor_si256(c.0, d.0)))) }
        }
        #[inline(always)]
        unsafe fn g(b: Self, c: Self, d: Self) -> Self {
            // c ^ (d & (b ^ c))
            unsafe { Avx2(_mm256_xor_si256(c.0, _mm256_and_si256(d.0, _mm256_xor_si256(b.0, c.0)))) }
        }
        #[inline(always)]
        unsafe fn h(b: Self, c: Self, d: Self) -> Self {
            unsafe { Avx2(_mm256_xor_si256(_mm256_xor_si256(b.0, c.0), d.0)) }
        }
        #[inline(always)]
        unsafe fn i(b: Self, c: Self, d: Self) -> Self {
            // c ^ (b | !d)
            unsafe { Avx2(_mm256_xor_si256(c.0, _mm256_or_si256(b.0, _mm256_xor_si256(d.0, _mm256_set1_epi32(-1))))) }
        }
    }

    /// A block that idle lanes hash (their result is thrown away).
    static IDLE: [u8; 64] = [0; 64];

    /// Lane `l` works on `work[lane[l]]`, or idles on [`IDLE`].
    #[inline(always)]
    unsafe fn schedule<T: V, const L: usize>(work: &mut [Work]) {
        unsafe {
            let mut lane: [Option<usize>; L] = [None; L];
            let mut queued = 0usize;
            // Transposed state and message words: `st[r][l]` is register r of lane l.
            let mut st = [[0u32; L]; 4];
            let mut xs = [[0u32; L]; 16];
            loop {
                // Refill idle lanes with waiting streams.
                for (l, slot) in lane.iter_mut().enumerate() {
                    if slot.is_none() && queued < work.len() {
                        for (r, row) in st.iter_mut().enumerate() {
                            row[l] = work[queued].h[r];
                        }
                        *slot = Some(queued);
                        queued += 1;
                    }
                }
                let active = lane.iter().flatten().count();
                if active == 0 {
                    return;
                }
                if active == 1 {
                    // The last stream alone: one lane of SIMD is slower than the scalar path.
                    let (l, w) = lane.iter().enumerate().find_map(|(l, s)| s.map(|w| (l, w))).unwrap();
                    let w = &mut work[w];
                    w.h = [st[0][l], st[1][l], st[2][l], st[3][l]];
                    let blocks = std::slice::from_raw_parts(w.next, w.left * 64);
                    for b in blocks.chunks_exact(64) {
                        compress(&mut w.h, b.try_into().unwrap());
                    }
                    return;
                }
                // Run every lane for as many blocks as the shortest active stream has left.
                let run = lane.iter().flatten().map(|&w| work[w].left).min().unwrap();
                let mut s: [T; 4] = std::array::from_fn(|r| T::load(st[r].as_ptr()));
                for _ in 0..run {
                    for (l, slot) in lane.iter().enumerate() {
                        let p = match *slot {
                            Some(w) => {
                                let p = work[w].next;
                                work[w].next = p.add(64);
                                p
                            }
                            None => IDLE.as_ptr(),
                        };
                        for (w, xw) in xs.iter_mut().enumerate() {
                            xw[l] = u32::from_le_bytes(p.add(4 * w).cast::<[u8; 4]>().read_unaligned());
                        }
                    }
                    let x: [T; 16] = std::array::from_fn(|w| T::load(xs[w].as_ptr()));
                    rounds(&mut s, &x);
                }
                for (r, v) in s.iter().enumerate() {
                    v.store(st[r].as_mut_ptr());
                }
                // Retire finished streams.
                for (l, slot) in lane.iter_mut().enumerate() {
                    if let Some(w) = *slot {
                        work[w].left -= run;
                        if work[w].left == 0 {
                            work[w].h = [st[0][l], st[1][l], st[2][l], st[3][l]];
                            *slot = None;
                        }
                    }
                }
            }
        }
    }

    /// # Safety
    /// The CPU must support AVX-512F; every `work` entry must point at `left * 64` readable bytes.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn run512(work: &mut [Work]) {
        unsafe { schedule::<Avx512, 16>(work) }
    }

    /// # Safety
    /// The CPU must support AVX2; every `work` entry must point at `left * 64` readable bytes.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn run256(work: &mut [Work]) {
        unsafe { schedule::<Avx2, 8>(work) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use md5::{Digest, Md5};

    fn reference(data: &[u8]) -> [u8; 16] {
        Md5::digest(data).into()
    }

    /// Deterministic bytes (xorshift), so failures reproduce.
    fn bytes(seed: u64, n: usize) -> Vec<u8> {
        let mut s = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                s as u8
            })
            .collect()
    }

    #[test]
    fn one_stream_matches_md5_crate_at_every_length_around_blocks() {
        for n in (0..200).chain([1000, 4096, 8191, 8192, 8193, 65_537]) {
            let d = bytes(n as u64, n);
            let mut s = Md5State::new();
            s.update(&d);
            assert_eq!(s.finalize(), reference(&d), "length {n}");
        }
        // RFC 1321 test vector.
        let mut s = Md5State::new();
        s.update(b"message digest");
        assert_eq!(s.finalize(), reference(b"message digest"));
        assert_eq!(
            {
                let mut s = Md5State::new();
                s.update(b"abc");
                s.finalize()
            },
            *b"\x90\x01\x50\x98\x3c\xd2\x4f\xb0\xd6\x96\x3f\x7d\x28\xe1\x7f\x72"
        );
    }

    #[test]
    fn split_updates_match_one_update() {
        let d = bytes(7, 5000);
        for cut in [0, 1, 63, 64, 65, 127, 128, 129, 4999] {
            let mut s = Md5State::new();
            s.update(&d[..cut]);
            s.update(&d[cut..]);
            assert_eq!(s.finalize(), reference(&d), "cut at {cut}");
        }
    }

    /// Many streams of uneven lengths, fed in uneven pieces through every lane path, give what
    /// hashing each alone gives.
    #[test]
    fn lanes_match_one_stream_at_a_time_on_every_path() {
        let mut paths = vec![Lanes::Scalar];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                paths.push(Lanes::Avx2);
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                paths.push(Lanes::Avx512);
            }
        }
        for &path in &paths {
            for streams in [2usize, 3, 8, 9, 16, 17, 40] {
                let data: Vec<Vec<u8>> = (0..streams).map(|i| bytes(i as u64 + 100, 300 + i * 997 % 9000)).collect();
                let mut states: Vec<Md5State> = vec![Md5State::new(); streams];
                // Feed in three rounds of uneven pieces.
                let mut at = vec![0usize; streams];
                for round in 0..3 {
                    let mut jobs: Vec<Job<'_>> = Vec::new();
                    for ((s, d), a) in states.iter_mut().zip(&data).zip(at.iter_mut()) {
                        let end = if round == 2 { d.len() } else { (*a + 37 + d.len() / 3 + round * 13).min(d.len()) };
                        jobs.push(Job { state: s, data: &d[*a..end] });
                        *a = end;
                    }
                    update_many_with(path, jobs);
                }
                for (i, (s, d)) in states.into_iter().zip(&data).enumerate() {
                    assert_eq!(s.finalize(), reference(d), "{path:?}, {streams} streams, stream {i}");
                }
            }
        }
        eprintln!("checked paths {paths:?}");
    }
}
