//! callrec-bench: the benchmark harness.
//!
//! - [`traffic`]: deterministic call traffic (SIP + SDP + G.711 RTP + RFC 2833 DTMF) for files and wires.
//! - [`send`]: a batched raw-socket sender that plays generated traffic onto an interface in real
//!   time (or as fast as it can, to measure the rig's ceiling).
//! - [`measure`]: process CPU, memory and interface counters, read from `/proc` and `/sys`.
//! - [`plot`]: the loss-against-offered-load chart for `docs/BENCHMARKS.md`.
//! - [`xdpbench`]: the XDP filter's kernel time per frame, run on frames in memory.
//! - [`xdpgen`]: an in-kernel sender (BPF live frames) that hands the mirror port XDP frames, as a NIC would.
//!
//! The binaries `callrec-gen` and `callrec-bench` drive them; `cargo xtask bench` runs the lot.

pub mod indexbench;
pub mod live;
pub mod measure;
pub mod pipeline;
pub mod plot;
pub mod send;
pub mod stages;
pub mod traffic;
pub mod xdpbench;
pub mod xdpgen;
