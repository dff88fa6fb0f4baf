//! Plays generated traffic onto an interface through a raw AF_PACKET socket, in `sendmmsg`
//! batches with the qdisc bypassed, paced by the frames' timestamps (or flat out).
//!
//! Why it exists: the live bench must offer a known number of packets at a known rate, and report
//! how many it really sent (loss is counted from that, not from what the recorder saw) and whether
//! it kept to the schedule (a generator that falls behind offers less than it claims).
//!
//! Frames carry the interface's own MAC address as both source and destination: on the rig's
//! bridge the mirror copies them at the port's ingress, then the bridge filters them (destination
//! on the ingress port), so the machine's two cores go to mirroring and recording rather than to
//! phone B's stack discarding packets addressed to no one.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::traffic::{Generator, Workload};

#[derive(Debug, Default, Serialize)]
pub struct SendReport {
    pub iface: String,
    pub calls: u32,
    pub concurrency: u32,
    pub frames_sent: u64,
    pub rtp_sent: u64,
    pub frames_expected: u64,
    pub seconds: f64,
    pub pps: f64,
    /// Offered rate while every call is up (what the workload asks for).
    pub steady_pps: f64,
    /// How far behind its schedule the sender fell at worst (0 when flat out).
    pub max_lag_ms: f64,
    pub send_retries: u64,
    pub send_errors: u64,
    /// Frames of background traffic (not SIP, not RTP) sent besides the calls.
    pub noise_sent: u64,
    /// How frames were sent: "packet-socket" (sendmmsg) or "xdp-live-frames" (see [`crate::xdpgen`]).
    pub sender: &'static str,
    /// Frames the cable's far end refused (its `tx_dropped` grew by this): counted as sent, so
    /// they count as lost.
    pub xmit_drops: u64,
}

/// A background frame: UDP to a syslog-like port from an address no call uses, RTP-sized, so a
/// mirror port carries mostly other traffic, as real ones do.
fn noise_frame(out: &mut Vec<u8>, mac: [u8; 6], k: u64) {
    let (src, dst) = (0x0ac8_0000u32 | (k as u32 & 0xffff), 0x0ac9_0001u32);
    let f = capture_core::synth::Flow {
        src: std::net::Ipv4Addr::from(src).into(),
        dst: std::net::Ipv4Addr::from(dst).into(),
        sport: 40_000 + (k % 20_000) as u16,
        dport: 5140,
    };
    out.clear();
    out.extend_from_slice(&capture_core::synth::udp_frame(&f, &[b'x'; 172]));
    out[..6].copy_from_slice(&mac);
    out[6..12].copy_from_slice(&mac);
}

fn mac_of(iface: &str) -> Result<[u8; 6]> {
    let path = format!("/sys/class/net/{iface}/address");
    let s = std::fs::read_to_string(&path).with_context(|| format!("no interface {iface} here ({path})"))?;
    let mut mac = [0u8; 6];
    for (i, part) in s.trim().split(':').enumerate().take(6) {
        mac[i] = u8::from_str_radix(part, 16).with_context(|| format!("{path}: bad MAC {s:?}"))?;
    }
    Ok(mac)
}

struct RawSocket {
    fd: libc::c_int,
}

impl RawSocket {
    fn bind(iface: &str) -> Result<RawSocket> {
        let ifindex = capture_core::live::ifindex(iface)?;
        // SAFETY: plain socket syscalls on a descriptor this struct owns.
        unsafe {
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
            if fd < 0 {
                bail!("cannot open a raw socket: {} (needs root or CAP_NET_RAW)", std::io::Error::last_os_error());
            }
            let s = RawSocket { fd };
            let one: libc::c_int = 1;
            // Straight to the driver: the rig measures mirroring and recording, not the qdisc.
            libc::setsockopt(
                fd,
                libc::SOL_PACKET,
                libc::PACKET_QDISC_BYPASS,
                &one as *const _ as *const libc::c_void,
                4,
            );
            let buf: libc::c_int = 8 << 20;
            libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, &buf as *const _ as *const libc::c_void, 4);
            let mut sll: libc::sockaddr_ll = std::mem::zeroed();
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_ifindex = ifindex as i32;
            sll.sll_protocol = 0;
            if libc::bind(
                fd,
                &sll as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            ) != 0
            {
                bail!("cannot bind a raw socket to {iface}: {}", std::io::Error::last_os_error());
            }
            Ok(s)
        }
    }

    /// Sends every frame; returns (retries, errors).
    fn send_all(&self, frames: &[Vec<u8>], lens: &[usize]) -> (u64, u64) {
        let mut iov: Vec<libc::iovec> = frames
            .iter()
            .zip(lens)
            .map(|(f, &l)| libc::iovec { iov_base: f.as_ptr() as *mut libc::c_void, iov_len: l })
            .collect();
        // SAFETY: mmsghdr is plain data; every pointer refers to `iov`, alive for the call.
        let mut msgs: Vec<libc::mmsghdr> = iov
            .iter_mut()
            .map(|v| {
                let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                m.msg_hdr.msg_iov = v as *mut libc::iovec;
                m.msg_hdr.msg_iovlen = 1;
                m
            })
            .collect();
        let (mut done, mut retries, mut errors) = (0usize, 0u64, 0u64);
        while done < msgs.len() {
            // SAFETY: msgs[done..] are valid mmsghdr pointing at live buffers.
            let n = unsafe { libc::sendmmsg(self.fd, msgs[done..].as_mut_ptr(), (msgs.len() - done) as u32, 0) };
            if n > 0 {
                done += n as usize;
                continue;
            }
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::ENOBUFS) | Some(libc::EAGAIN) | Some(libc::EINTR) => {
                    retries += 1;
                    std::thread::yield_now();
                }
                _ => {
                    // A frame the device refuses: count it, skip it.
                    errors += 1;
                    done += 1;
                }
            }
        }
        (retries, errors)
    }
}

impl Drop for RawSocket {
    fn drop(&mut self) {
        // SAFETY: fd is owned by this struct.
        unsafe { libc::close(self.fd) };
    }
}

/// Where frames go: a packet socket, or the in-kernel sender.
enum Tx {
    Socket(RawSocket),
    Xdp(crate::xdpgen::XdpSender),
}

impl Tx {
    /// Sends every frame; returns (retries, errors).
    fn send_all(&mut self, frames: &[Vec<u8>], lens: &[usize]) -> Result<(u64, u64)> {
        match self {
            Tx::Socket(s) => Ok(s.send_all(frames, lens)),
            Tx::Xdp(x) => Ok((0, x.send(frames.iter().zip(lens).map(|(f, &l)| &f[..l]))?)),
        }
    }
}

fn tx_dropped(iface: &str) -> u64 {
    std::fs::read_to_string(format!("/sys/class/net/{iface}/statistics/tx_dropped"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Plays `w` onto `iface`, with `noise` background frames after every call frame, through a
/// packet socket or (`xdp`) the in-kernel sender.
pub fn play(iface: &str, mut w: Workload, flat_out: bool, batch: usize, noise: u32, xdp: bool) -> Result<SendReport> {
    let batch = batch.clamp(1, if xdp { crate::xdpgen::SLOTS / 2 } else { 1024 });
    let mac = mac_of(iface)?;
    w.src_mac = mac;
    w.dst_mac = mac;
    let mut tx = if xdp { Tx::Xdp(crate::xdpgen::XdpSender::new(iface)?) } else { Tx::Socket(RawSocket::bind(iface)?) };
    let dropped_before = tx_dropped(iface);
    let mut rep = SendReport {
        sender: if xdp { "xdp-live-frames" } else { "packet-socket" },
        iface: iface.into(),
        calls: w.calls,
        concurrency: w.concurrency(),
        frames_expected: w.total_frames(),
        steady_pps: w.steady_pps(),
        ..Default::default()
    };
    let mut g = Generator::new(w);
    let mut bufs: Vec<Vec<u8>> = (0..batch).map(|_| Vec::with_capacity(1600)).collect();
    let mut lens = vec![0usize; batch];
    let t0_ns = g.peek_ts().unwrap_or(0);
    let start = Instant::now();
    let mut max_lag = Duration::ZERO;
    while let Some(next) = g.peek_ts() {
        if !flat_out {
            let due = Duration::from_nanos((next - t0_ns).max(0) as u64);
            let now = start.elapsed();
            if due > now {
                let ahead = due - now;
                if ahead > Duration::from_micros(300) {
                    std::thread::sleep(ahead - Duration::from_micros(200));
                }
                continue;
            }
            max_lag = max_lag.max(now - due);
        }
        let horizon = start.elapsed().as_nanos() as i64 + t0_ns + 500_000;
        let mut k = 0;
        while k < batch {
            match g.peek_ts() {
                Some(t) if flat_out || t <= horizon => {}
                _ => break,
            }
            if k + 1 + noise as usize > batch && k > 0 {
                break;
            }
            g.next_frame(&mut bufs[k]);
            lens[k] = bufs[k].len();
            if bufs[k].len() > 42 && bufs[k][42] == 0x80 {
                rep.rtp_sent += 1;
            }
            k += 1;
            for _ in 0..noise {
                if k == bufs.len() {
                    bufs.push(Vec::with_capacity(1600));
                    lens.push(0);
                }
                noise_frame(&mut bufs[k], mac, rep.noise_sent);
                lens[k] = bufs[k].len();
                rep.noise_sent += 1;
                k += 1;
            }
        }
        let (r, e) = tx.send_all(&bufs[..k], &lens[..k])?;
        rep.send_retries += r;
        rep.send_errors += e;
        rep.frames_sent += k as u64 - e;
    }
    rep.seconds = start.elapsed().as_secs_f64();
    rep.xmit_drops = tx_dropped(iface).saturating_sub(dropped_before);
    rep.pps = rep.frames_sent as f64 / rep.seconds.max(1e-9);
    rep.max_lag_ms = max_lag.as_secs_f64() * 1e3;
    Ok(rep)
}
