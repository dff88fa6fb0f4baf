//! A cache prefetch hint, in one place so the unsafe intrinsic and its target switch are written
//! once (the recorder uses it through `recorder::prefetch`). The per-packet path asks for lines a
//! few packets ahead: the AF_XDP reader for frames another core wrote (`live::afxdp`), the engine
//! for table entries of packets ahead in a batch (`Engine::handle_batch`); with tens of thousands
//! of calls each is a miss, and asking for several at once overlaps their latency.

/// Asks the CPU to bring the cache line holding `p` into all cache levels. Never faults and has
/// no effect on what the program computes.
#[inline(always)]
pub fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint; it never faults, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p as *const i8)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}
