//! The XDP filter's cost per frame, measured by the kernel itself (BPF_PROG_TEST_RUN runs the
//! loaded program N times on one frame in memory and reports the mean time per run), for each
//! kind of frame a mirror port carries: RTP of a call (matched by destination, or by source),
//! UDP of no call (on a port some call uses, or not), SIP, and TCP of no call. Each is measured
//! with the media port set the program consults before the endpoint hash, and without it (every
//! port in the set: the hash is looked up for every UDP frame, as before the set existed),
//! alternating, with `endpoints` endpoints registered so that the hash has a realistic size.
//!
//! Why it exists: on a mirror port most frames belong to no call, and the filter's time on them
//! is what the kernel spends before a single call packet reaches the recorder. The live bench
//! cannot show it on this project's veth rig, where the copy veth makes for XDP costs more than
//! the program.

use std::net::{IpAddr, Ipv4Addr};

use anyhow::{Context, Result, bail};
use capture_core::live::xdp::XdpFilter;
use capture_core::synth::{Flow, tcp_frame, udp_frame};
use serde_json::{Value, json};

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn run(endpoints: u32, repeat: u32, rounds: usize) -> Result<Value> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the XDP filter bench loads a BPF program and needs root: run it with sudo");
    }
    let mut x = XdpFilter::load_detached().context("loading the XDP filter")?;
    x.set_sip_ports(&[5060])?;
    let m = x.media();
    // Endpoints 10.1.x.y, ports 16384 + 2k: like an RTP port range, every port used by many.
    let ep = |i: u32| -> (IpAddr, u16) {
        (IpAddr::V4(Ipv4Addr::from(0x0a01_0000 | (i / 8))), 16_384 + 2 * (i % 8_000) as u16)
    };
    for i in 0..endpoints {
        let (ip, port) = ep(i);
        m.add(ip, port)?;
    }
    let other: IpAddr = Ipv4Addr::new(192, 0, 2, 9).into();
    let (a, pa) = ep(endpoints / 2);
    // RTP (version 2, PCMA) and UDP that does not look like RTP (the filter's probe for a call's
    // first media packets passes RTP-shaped frames of no call up to a rate: past it, as here
    // after the first 2,000 runs, such a frame costs the probe's clock read too).
    let mut rtp = [0xd5u8; 172];
    rtp[..2].copy_from_slice(&[0x80, 8]);
    let udp = |src, sport, dst, dport| udp_frame(&Flow { src, dst, sport, dport }, &rtp);
    let not_rtp = |src, sport, dst, dport| udp_frame(&Flow { src, dst, sport, dport }, &[b'x'; 172]);
    let kinds: Vec<(&str, Vec<u8>)> = vec![
        ("rtp_to_endpoint", udp(other, 40_000, a, pa)),
        ("rtp_from_endpoint", udp(a, pa, other, 40_000)),
        ("udp_no_call_on_a_media_port", not_rtp(other, 40_001, Ipv4Addr::new(10, 9, 9, 9).into(), pa)),
        ("udp_no_call", not_rtp(other, 40_001, Ipv4Addr::new(10, 9, 9, 9).into(), 5140)),
        ("rtp_no_call_past_the_probe_rate", udp(other, 40_001, Ipv4Addr::new(10, 9, 9, 9).into(), 5140)),
        ("sip", udp(other, 5060, a, 5060)),
        ("tcp_no_call", tcp_frame(&Flow { src: other, dst: a, sport: 443, dport: 50_000 }, 1, 0x18, &[0u8; 100])),
    ];
    let mut rows = Vec::new();
    for (name, frame) in &kinds {
        let (mut with, mut without) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            x.bench_media_port_set(true)?;
            with.push(x.test_run(frame, repeat)?.1 as f64);
            x.bench_media_port_set(false)?;
            without.push(x.test_run(frame, repeat)?.1 as f64);
        }
        x.bench_media_port_set(true)?;
        let (w, wo) = (median(&mut with), median(&mut without));
        eprintln!("xdp-filter: {name:>28}: {w:>4.0} ns with the port set, {wo:>4.0} ns without");
        rows.push(
            json!({"frame": name, "ns_with_port_set": w, "ns_without": wo, "ratio_without_over_with": wo / w.max(1.0)}),
        );
    }
    Ok(json!({"bench": "xdp-filter", "endpoints": endpoints, "repeat": repeat, "rounds": rounds, "frames": rows}))
}
