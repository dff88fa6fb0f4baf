//! capture-core: where packets come from and what is inside them.
//!
//! Packet sources (capture files now; AF_PACKET and AF_XDP rings later) hand frames to the
//! [`decode::Decoder`], which peels link layers and tunnels and reassembles IP fragments down to the
//! UDP/TCP payload. Everything after this point (SIP, SDP, RTP, recording) lives in `recorder` and is
//! the same whichever source fed it.

pub mod decode;
pub mod defrag;
pub mod live;
pub mod pcap;
pub mod prefetch;
pub mod synth;

pub use decode::{DecodeError, Decoded, Decoder, Held, Ignored, Packet, Transport};
pub use pcap::{CaptureError, CaptureReader, Frame, PcapWriter};
