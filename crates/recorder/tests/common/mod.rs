//! What the recorder's integration tests share.

use recorder::model::{CallSummary, EndReason};

/// A minimal summary for a recording's last chunk.
pub fn summary(call_id: &str) -> CallSummary {
    CallSummary {
        call_id: call_id.into(),
        caller: Default::default(),
        callee: Default::default(),
        start_ns: 0,
        answer_ns: None,
        end_ns: 1,
        end_reason: EndReason::CallerBye,
        sip_code: Some(200),
        codecs: vec![],
        dtmf: vec![],
        holds: vec![],
        streams: vec![],
        payload_types: vec![],
        sip_messages: 3,
    }
}
