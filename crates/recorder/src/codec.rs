//! Audio decoders for export: G.711 µ-law and A-law (bit-exact per ITU-T G.711), G.722 (bit-exact,
//! [`crate::g722`]) and Opus (libopus).
//! Capture never calls these: recordings keep the payloads, decoding happens only on export.

/// µ-law byte → 16-bit linear sample (G.711).
pub fn ulaw_to_linear(b: u8) -> i16 {
    let u = !b;
    let exponent = (u >> 4) & 0x07;
    let mantissa = (u & 0x0f) as i32;
    let magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84;
    if u & 0x80 != 0 { -magnitude as i16 } else { magnitude as i16 }
}

/// A-law byte → 16-bit linear sample (G.711).
pub fn alaw_to_linear(b: u8) -> i16 {
    let a = b ^ 0x55;
    let exponent = (a >> 4) & 0x07;
    let mantissa = (a & 0x0f) as i32;
    let mut t = (mantissa << 4) + 8;
    if exponent != 0 {
        t = (t + 0x100) << (exponent - 1);
    }
    if a & 0x80 != 0 { t as i16 } else { -t as i16 }
}

/// What a codec name decodes with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodecKind {
    Pcmu,
    Pcma,
    G722,
    Opus,
    /// Comfort noise and telephone events: silence in the audio.
    Silence,
    Unsupported,
}

impl CodecKind {
    pub fn of(name: &str) -> CodecKind {
        match name.to_ascii_uppercase().as_str() {
            "PCMU" => CodecKind::Pcmu,
            "PCMA" => CodecKind::Pcma,
            "G722" => CodecKind::G722,
            "OPUS" => CodecKind::Opus,
            "CN" | "TELEPHONE-EVENT" => CodecKind::Silence,
            _ => CodecKind::Unsupported,
        }
    }

    /// Sample rate of the decoded audio.
    pub fn rate(self) -> u32 {
        match self {
            CodecKind::Opus => 48_000,
            CodecKind::G722 => 16_000,
            _ => 8_000,
        }
    }
}

/// A stateful decoder for one stream.
pub enum StreamDecoder {
    G711 { alaw: bool },
    G722(Box<crate::g722::G722Decoder>),
    Opus(Box<opus::Decoder>),
    None,
}

impl StreamDecoder {
    pub fn new(kind: CodecKind) -> StreamDecoder {
        match kind {
            CodecKind::Pcmu => StreamDecoder::G711 { alaw: false },
            CodecKind::Pcma => StreamDecoder::G711 { alaw: true },
            CodecKind::G722 => StreamDecoder::G722(Box::default()),
            CodecKind::Opus => match opus::Decoder::new(48_000, opus::Channels::Mono) {
                Ok(d) => StreamDecoder::Opus(Box::new(d)),
                Err(_) => StreamDecoder::None,
            },
            _ => StreamDecoder::None,
        }
    }

    /// Decodes one payload, appending samples to `out`. Returns false when it could not.
    pub fn decode(&mut self, payload: &[u8], out: &mut Vec<i16>) -> bool {
        match self {
            StreamDecoder::G711 { alaw } => {
                let f = if *alaw { alaw_to_linear } else { ulaw_to_linear };
                out.extend(payload.iter().map(|&b| f(b)));
                true
            }
            StreamDecoder::G722(d) => {
                d.decode(payload, out);
                true
            }
            StreamDecoder::Opus(d) => {
                let mut buf = [0i16; 5760];
                match d.decode(payload, &mut buf, false) {
                    Ok(n) => {
                        out.extend_from_slice(&buf[..n]);
                        true
                    }
                    Err(_) => false,
                }
            }
            StreamDecoder::None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn g711_reference_points() {
        // Values from the ITU-T G.711 tables.
        assert_eq!(ulaw_to_linear(0xff), 0);
        assert_eq!(ulaw_to_linear(0x7f), 0);
        assert_eq!(ulaw_to_linear(0x00), -32124);
        assert_eq!(ulaw_to_linear(0x80), 32124);
        assert_eq!(alaw_to_linear(0xd5), 8);
        assert_eq!(alaw_to_linear(0x55), -8);
        assert_eq!(alaw_to_linear(0xaa), 32256);
        assert_eq!(alaw_to_linear(0x2a), -32256);
    }
}
