//! Export: a recording back to stereo audio (left = sent by the caller, right = sent by the callee),
//! time-aligned by RTP timestamps anchored at each stream's first arrival, with gaps and unknown
//! codecs as silence. WAV (16-bit PCM) or Opus in Ogg.

use std::collections::BTreeMap;
use std::io::{Seek, Write};
use std::path::Path;

use thiserror::Error;

use crate::codec::{CodecKind, StreamDecoder};
use crate::model::Side;
use crate::rtp::{RtpPacket, ns_to_units};
use crate::store::file::Record;

#[derive(Debug, Error)]
pub enum ExportError {
    #[error("cannot write {path}: {why}")]
    Write { path: String, why: String },
    #[error("Opus encoder: {0}")]
    Opus(String),
}

/// Longest export: 12 hours (a broken timestamp cannot make a huge file).
const MAX_SECONDS: u64 = 12 * 3600;

/// Decoded stereo audio.
pub struct Audio {
    pub rate: u32,
    pub left: Vec<i16>,
    pub right: Vec<i16>,
    /// Streams that could not be decoded (codec name), kept as silence.
    pub undecodable: Vec<String>,
}

struct StreamPackets<'a> {
    side: Side,
    packets: Vec<(i64, &'a [u8])>,
}

/// Rebuilds the audio of a recording from its records.
pub fn render(records: &[Record]) -> Audio {
    let mut start_ns = None;
    let mut end_ns = None;
    let mut pt_maps: [&[(u8, String, u32)]; 2] = [&[], &[]];
    let mut streams: BTreeMap<u8, StreamPackets> = BTreeMap::new();
    for r in records {
        match r {
            Record::Start { ts_ns, .. } => start_ns = start_ns.or(Some(*ts_ns)),
            Record::PayloadTypes { side, map } => pt_maps[side.index()] = map,
            Record::Rtp { stream, side, ts_ns, rtp } => {
                streams
                    .entry(*stream)
                    .or_insert_with(|| StreamPackets { side: *side, packets: Vec::new() })
                    .packets
                    .push((*ts_ns, rtp));
            }
            Record::Summary(summary) => end_ns = Some(summary.end_ns),
        }
    }
    let codec_of = |sender: Side, pt: u8| -> Option<(&str, u32)> {
        crate::sdp::lookup_pt(pt_maps[sender.other().index()], pt_maps[sender.index()], pt)
    };
    // Output rate: the highest decoded rate among the streams.
    let mut rate = 8000;
    for s in streams.values() {
        for (_, p) in s.packets.iter().take(50) {
            if let Some(r) = RtpPacket::new_checked(p) {
                let kind = codec_of(s.side, r.payload_type()).map_or(CodecKind::Unsupported, |c| CodecKind::of(c.0));
                rate = rate.max(kind.rate());
            }
        }
    }
    let start = start_ns.or_else(|| streams.values().flat_map(|s| s.packets.first().map(|p| p.0)).min()).unwrap_or(0);
    let max_len = (MAX_SECONDS * rate as u64) as usize;
    let mut chans: [Vec<i16>; 2] = [Vec::new(), Vec::new()];
    let mut undecodable = Vec::new();
    let mut pcm = Vec::with_capacity(5760);
    for s in streams.values() {
        // Order by RTP timestamp (unwrapped from the first packet), drop repeated sequence numbers.
        let Some(first) = s.packets.first().and_then(|p| RtpPacket::new_checked(p.1)) else { continue };
        let ts0 = first.timestamp();
        let mut order: Vec<(i64, u16, usize)> = Vec::with_capacity(s.packets.len());
        for (i, (_, raw)) in s.packets.iter().enumerate() {
            if let Some(r) = RtpPacket::new_checked(raw) {
                order.push((r.timestamp().wrapping_sub(ts0) as i32 as i64, r.sequence(), i));
            }
        }
        order.sort_by_key(|o| (o.0, o.1));
        order.dedup_by_key(|o| o.1);
        let ch = &mut chans[s.side.index()];
        let mut decoder: Option<(CodecKind, StreamDecoder)> = None;
        let mut anchor: Option<(i64, i64)> = None; // (output sample position, rtp offset) of the anchor packet
        for (rel_ts, _, i) in order {
            let (arrival, raw) = &s.packets[i];
            let Some(r) = RtpPacket::new_checked(raw) else { continue };
            let Some((codec, clock)) = codec_of(s.side, r.payload_type()) else {
                let name = format!("PT{}", r.payload_type());
                if !undecodable.contains(&name) {
                    undecodable.push(name);
                }
                continue;
            };
            let kind = CodecKind::of(codec);
            if kind == CodecKind::Unsupported {
                if !undecodable.iter().any(|u| u == codec) {
                    undecodable.push(codec.to_string());
                }
                continue;
            }
            if kind == CodecKind::Silence {
                continue;
            }
            let arrival_pos = ns_to_units((arrival - start).max(0), rate);
            let clock = clock.max(1) as i64;
            let pos = match anchor {
                Some((apos, ats)) => {
                    let p = apos + (rel_ts - ats) * rate as i64 / clock;
                    // A timestamp jump far from the arrival time: re-anchor on arrival.
                    if (p - arrival_pos).abs() > 5 * rate as i64 {
                        anchor = Some((arrival_pos, rel_ts));
                        arrival_pos
                    } else {
                        p
                    }
                }
                None => {
                    anchor = Some((arrival_pos, rel_ts));
                    arrival_pos
                }
            };
            if pos < 0 {
                continue;
            }
            if decoder.as_ref().is_none_or(|d| d.0 != kind) {
                decoder = Some((kind, StreamDecoder::new(kind)));
            }
            pcm.clear();
            let dec = &mut decoder.as_mut().unwrap().1;
            if !dec.decode(r.payload(), &mut pcm) {
                continue;
            }
            let pos = pos as usize;
            let samples = resample(&pcm, kind.rate(), rate);
            let end = (pos + samples.len()).min(max_len);
            if end <= pos {
                continue;
            }
            if ch.len() < end {
                ch.resize(end, 0);
            }
            ch[pos..end].copy_from_slice(&samples[..end - pos]);
        }
    }
    // The audio lasts as long as the call, even when its last seconds carried no audio packets.
    let call_len = end_ns.map_or(0, |e| ns_to_units((e - start).max(0), rate) as usize).min(max_len);
    let len = chans[0].len().max(chans[1].len()).max(call_len);
    let [mut left, mut right] = chans;
    left.resize(len, 0);
    right.resize(len, 0);
    Audio { rate, left, right, undecodable }
}

/// Sample-rate conversion by linear interpolation (only between the fixed codec rates).
fn resample(x: &[i16], from: u32, to: u32) -> std::borrow::Cow<'_, [i16]> {
    if from == to || x.is_empty() {
        return std::borrow::Cow::Borrowed(x);
    }
    let n = x.len() * to as usize / from as usize;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let p = i as f64 * from as f64 / to as f64;
        let k = p.floor() as usize;
        let f = p - k as f64;
        let a = x[k.min(x.len() - 1)] as f64;
        let b = x[(k + 1).min(x.len() - 1)] as f64;
        out.push((a + (b - a) * f).round() as i16);
    }
    std::borrow::Cow::Owned(out)
}

pub fn write_wav(audio: &Audio, path: &Path) -> Result<(), ExportError> {
    let err = |e: hound::Error| ExportError::Write { path: path.display().to_string(), why: e.to_string() };
    let spec = hound::WavSpec {
        channels: 2,
        sample_rate: audio.rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec).map_err(err)?;
    for (l, r) in audio.left.iter().zip(&audio.right) {
        w.write_sample(*l).map_err(err)?;
        w.write_sample(*r).map_err(err)?;
    }
    w.finalize().map_err(err)
}

/// Opus in Ogg (RFC 7845), stereo 48 kHz, 20 ms frames.
pub fn write_ogg_opus<W: Write + Seek>(audio: &Audio, out: W) -> Result<W, ExportError> {
    let e = |x: opus::Error| ExportError::Opus(x.to_string());
    let io = |x: std::io::Error| ExportError::Write { path: "output".into(), why: x.to_string() };
    let left = resample(&audio.left, audio.rate, 48_000);
    let right = resample(&audio.right, audio.rate, 48_000);
    let mut enc = opus::Encoder::new(48_000, opus::Channels::Stereo, opus::Application::Voip).map_err(e)?;
    let pre_skip = enc.get_lookahead().map_err(e)? as u16;
    let serial = 0x6361_6c6c;
    let mut w = ogg::PacketWriter::new(out);
    let mut head = b"OpusHead".to_vec();
    head.push(1);
    head.push(2);
    head.extend_from_slice(&pre_skip.to_le_bytes());
    head.extend_from_slice(&48_000u32.to_le_bytes());
    head.extend_from_slice(&0u16.to_le_bytes());
    head.push(0);
    w.write_packet(head, serial, ogg::PacketWriteEndInfo::EndPage, 0).map_err(io)?;
    let mut tags = b"OpusTags".to_vec();
    let vendor = b"callrec";
    tags.extend_from_slice(&(vendor.len() as u32).to_le_bytes());
    tags.extend_from_slice(vendor);
    tags.extend_from_slice(&0u32.to_le_bytes());
    w.write_packet(tags, serial, ogg::PacketWriteEndInfo::EndPage, 0).map_err(io)?;
    const FRAME: usize = 960;
    let total = left.len().max(1);
    let frames = total.div_ceil(FRAME);
    let mut inter = vec![0i16; FRAME * 2];
    let mut packet = vec![0u8; 4000];
    for f in 0..frames {
        for i in 0..FRAME {
            let k = f * FRAME + i;
            inter[2 * i] = left.get(k).copied().unwrap_or(0);
            inter[2 * i + 1] = right.get(k).copied().unwrap_or(0);
        }
        let n = enc.encode(&inter, &mut packet).map_err(e)?;
        let last = f + 1 == frames;
        let granule = if last { (total as u64) + pre_skip as u64 } else { ((f + 1) * FRAME) as u64 + pre_skip as u64 };
        let end = if last { ogg::PacketWriteEndInfo::EndStream } else { ogg::PacketWriteEndInfo::NormalPacket };
        w.write_packet(packet[..n].to_vec(), serial, end, granule).map_err(io)?;
    }
    Ok(w.into_inner())
}
