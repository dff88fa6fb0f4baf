//! recorder: everything between a decoded packet and a stored, indexed, exportable recording.
//!
//! - [`sip`], [`sdp`], [`rtp`], [`tcp`]: protocol views and stream framing.
//! - [`batch`]: decoded packets on their way from a reader to a worker, steered with look-ahead.
//! - [`engine`]: the sans-IO call assembler that turns packets into call events.
//! - [`epmap`] and [`prefetch`]: the per-packet endpoint table and the cache hint that
//!   lets a batch of packets overlap their table misses.
//! - [`store`]: encrypted recording files, keys, and the [`index`](store::index) in SQLite.
//! - [`export`] and [`codec`]: turning a recording back into audio.

pub mod batch;
pub mod codec;
pub mod engine;
pub mod epmap;
pub mod export;
pub mod g722;
pub mod memsink;
pub mod model;
pub mod prefetch;
pub mod priority;
pub mod rtp;
pub mod sdp;
pub mod sip;
pub mod steer;
pub mod store;
pub mod tcp;
pub mod timefmt;

pub use engine::{CallRef, Config, Engine, Sink};
pub use model::{CallSummary, EndReason, Side};
