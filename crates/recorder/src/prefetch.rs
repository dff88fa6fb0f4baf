//! The cache prefetch hint of the per-packet path (see `Engine::handle_batch`): with tens of
//! thousands of calls every table entry is a miss, and asking for several at once overlaps their
//! latency. Defined once, in `capture_core::prefetch`, which the AF_XDP reader uses too.

pub use capture_core::prefetch::prefetch;
