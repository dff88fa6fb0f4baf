//! The record of a call as the engine hands it to storage and the index returns it to the CLI.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// Which party sent a stream (or did something).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Caller,
    Callee,
}

impl Side {
    pub fn other(self) -> Side {
        match self {
            Side::Caller => Side::Callee,
            Side::Callee => Side::Caller,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Caller => "caller",
            Side::Callee => "callee",
        }
    }
    pub fn index(self) -> usize {
        self as usize
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Party {
    /// User part of the URI: the number for most PBXs.
    pub number: String,
    pub name: String,
    pub uri: String,
}

/// Why a call ended. Stored and searched as the string of [`EndReason::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EndReason {
    CallerBye,
    CalleeBye,
    Cancel,
    /// A final failure response (3xx–6xx) to the INVITE; the code is in `sip_code`.
    Failed,
    /// No SIP or media for longer than the idle timeout.
    Timeout,
    /// The input ended (end of file, capture stopped) with the call still up.
    CaptureEnded,
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::CallerBye => "caller-bye",
            EndReason::CalleeBye => "callee-bye",
            EndReason::Cancel => "cancel",
            EndReason::Failed => "failed",
            EndReason::Timeout => "timeout",
            EndReason::CaptureEnded => "capture-ended",
        }
    }

    pub fn describe(self, code: Option<u16>) -> String {
        match self {
            EndReason::CallerBye => "the caller hung up".into(),
            EndReason::CalleeBye => "the callee hung up".into(),
            EndReason::Cancel => "cancelled by the caller before answer".into(),
            EndReason::Failed => format!("failed with SIP {}", code.map_or("?".into(), |c| c.to_string())),
            EndReason::Timeout => "no signalling or media for longer than the idle timeout".into(),
            EndReason::CaptureEnded => "still up when the capture ended".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DtmfSource {
    Rfc4733,
    SipInfo,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dtmf {
    pub at_ns: i64,
    pub digit: char,
    pub source: DtmfSource,
    pub side: Side,
    pub duration_ms: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hold {
    pub start_ns: i64,
    pub end_ns: Option<i64>,
    pub by: Side,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamSummary {
    pub index: u8,
    pub side: Side,
    pub ssrc: u32,
    pub codec: String,
    pub payload_type: u8,
    pub clock: u32,
    pub src: Option<SocketAddr>,
    pub dst: Option<SocketAddr>,
    pub packets: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub jitter_ms: f64,
    pub mos: f64,
    pub first_ns: i64,
    pub last_ns: i64,
    /// Loss and jitter the far end reported in RTCP for this SSRC, when it did.
    pub rtcp_fraction_lost: Option<f64>,
    pub rtcp_jitter_ms: Option<f64>,
    /// Whether callrec can decode this codec for export.
    pub decodable: bool,
}

/// Everything known about a finished (or interrupted) call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallSummary {
    pub call_id: String,
    pub caller: Party,
    pub callee: Party,
    pub start_ns: i64,
    pub answer_ns: Option<i64>,
    pub end_ns: i64,
    pub end_reason: EndReason,
    pub sip_code: Option<u16>,
    pub codecs: Vec<String>,
    pub dtmf: Vec<Dtmf>,
    pub holds: Vec<Hold>,
    pub streams: Vec<StreamSummary>,
    /// Payload-type maps each side announced: (side that receives, pt, codec, clock).
    pub payload_types: Vec<(Side, u8, String, u32)>,
    pub sip_messages: u32,
}

impl CallSummary {
    pub fn duration_ms(&self) -> i64 {
        (self.end_ns - self.start_ns).max(0) / 1_000_000
    }
    pub fn dtmf_string(&self) -> String {
        self.dtmf.iter().map(|d| d.digit).collect()
    }
}

/// Codecs callrec decodes for export; everything else is stored losslessly and listed as not decodable.
pub fn is_decodable(codec: &str) -> bool {
    matches!(codec.to_ascii_uppercase().as_str(), "PCMU" | "PCMA" | "G722" | "OPUS" | "CN" | "TELEPHONE-EVENT")
}
