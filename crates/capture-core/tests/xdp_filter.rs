//! The XDP filter's verdicts on frames run through the kernel with BPF_PROG_TEST_RUN (no interface,
//! no traffic): which UDP it keeps as media as endpoints come and go, in particular the media port
//! set that userspace keeps with the endpoint hash (a port shared by two endpoints stays until
//! both are gone; an endpoint still carrying media at its call's end is removed once it falls
//! idle, unless a new call takes it first).
//!
//! Needs root (loading BPF programs). When not root it fails saying so;
//! CALLREC_SKIP_ROOT_TESTS=1 opts out explicitly.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use capture_core::live::xdp::XdpFilter;
use capture_core::synth::{Flow, udp_frame};
use capture_ebpf::Counter;

fn root_or_skip() -> bool {
    capture_core::live::root_or_skip("loading BPF programs")
}

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
}

/// A UDP frame whose payload is not RTP-shaped (version 0), so that the filter's probe for a
/// call's first media packets (see `probe_passes_rtp_of_no_call_at_a_bounded_rate`) leaves it
/// alone: only a known endpoint keeps it.
fn frame(src: IpAddr, sport: u16, dst: IpAddr, dport: u16) -> Vec<u8> {
    udp_frame(&Flow { src, dst, sport, dport }, &[0x00; 172])
}

/// An RTP packet's first bytes (version 2, payload type `pt`) and a G.711 payload.
fn rtp_frame(src: IpAddr, sport: u16, dst: IpAddr, dport: u16, pt: u8) -> Vec<u8> {
    let mut p = vec![0xd5u8; 172];
    p[..12].copy_from_slice(&[0x80, pt, 0, 1, 0, 0, 0, 160, 0x12, 0x34, 0x56, 0x78]);
    udp_frame(&Flow { src, dst, sport, dport }, &p)
}

/// Runs `f` once and says whether the filter kept it as media (its `passed_media` counter moved).
/// Kept frames are dropped here after all (no AF_XDP socket is registered), so the return code is
/// XDP_DROP either way.
fn kept_as_media(x: &XdpFilter, f: &[u8]) -> bool {
    let before = x.counters()[Counter::PassMedia as usize];
    let (ret, _) = x.test_run(f, 1).expect("test run");
    assert_eq!(ret, 1, "XDP_DROP: no socket to redirect to, or not kept");
    x.counters()[Counter::PassMedia as usize] - before == 1
}

#[test]
fn media_port_set_follows_the_endpoints() {
    if !root_or_skip() {
        return;
    }
    let mut x = XdpFilter::load_detached().expect("load the XDP program");
    x.set_sip_ports(&[5060]).unwrap();
    let m = x.media();
    let to_a = frame(ip(9), 7000, ip(1), 4000);
    let to_b = frame(ip(9), 7000, ip(2), 4000);
    let from_a = frame(ip(1), 4000, ip(9), 7000);
    let noise = frame(ip(9), 7000, ip(3), 4000);
    assert!(!kept_as_media(&x, &to_a), "nothing registered yet");

    m.add(ip(1), 4000).unwrap();
    m.add(ip(2), 4000).unwrap();
    m.add(ip(1), 4000).unwrap(); // twice: counted once
    assert_eq!(m.len(), 2);
    assert!(kept_as_media(&x, &to_a));
    assert!(kept_as_media(&x, &from_a), "matched by source as well");
    assert!(kept_as_media(&x, &to_b));
    assert!(!kept_as_media(&x, &noise), "same port, address of no call");
    let dropped = x.counters()[Counter::DropOther as usize];
    assert!(dropped >= 2, "unregistered frames counted as dropped: {dropped}");

    // A is idle (grace 0): gone; B shares the port and still matches.
    m.remove_if_idle(ip(1), 4000, Duration::ZERO);
    assert!(!kept_as_media(&x, &to_a));
    assert!(!kept_as_media(&x, &from_a));
    assert!(kept_as_media(&x, &to_b), "port still used by B");
    m.remove_if_idle(ip(2), 4000, Duration::ZERO);
    assert!(!kept_as_media(&x, &to_b));
    assert_eq!(m.len(), 0);

    // Re-added after removal: the port is back in the set.
    m.add(ip(1), 4000).unwrap();
    assert!(kept_as_media(&x, &to_a));
    m.remove_if_idle(ip(1), 4000, Duration::ZERO);
    assert!(!kept_as_media(&x, &to_a));
}

#[test]
fn endpoint_with_media_at_call_end_is_removed_once_idle() {
    if !root_or_skip() {
        return;
    }
    let x = XdpFilter::load_detached().expect("load the XDP program");
    let m = x.media();
    let to_a = frame(ip(9), 7000, ip(1), 4002);
    let grace = Duration::from_millis(300);

    m.add(ip(1), 4002).unwrap();
    assert!(kept_as_media(&x, &to_a)); // media just flowed
    m.remove_if_idle(ip(1), 4002, grace);
    assert!(kept_as_media(&x, &to_a), "still flowing: kept for now");
    m.retry_lingering();
    assert!(kept_as_media(&x, &to_a), "still within its grace");
    std::thread::sleep(grace + Duration::from_millis(100));
    m.retry_lingering();
    assert!(!kept_as_media(&x, &to_a), "idle for longer than its grace: removed");
    assert_eq!(m.len(), 0);

    // Taken by a new call while its removal waited: it stays.
    m.add(ip(1), 4002).unwrap();
    assert!(kept_as_media(&x, &to_a));
    m.remove_if_idle(ip(1), 4002, grace);
    m.add(ip(1), 4002).unwrap();
    std::thread::sleep(grace + Duration::from_millis(100));
    m.retry_lingering();
    assert!(kept_as_media(&x, &to_a), "a new call holds it");
    assert_eq!(m.len(), 1);
}

/// The mean time per run the kernel reports is there and plausible (the bench relies on it).
#[test]
fn test_run_reports_time_per_run() {
    if !root_or_skip() {
        return;
    }
    let x = XdpFilter::load_detached().expect("load the XDP program");
    let noise = frame(ip(9), 7000, ip(3), 4000);
    let (ret, ns) = x.test_run(&noise, 10_000).unwrap();
    assert_eq!(ret, 1);
    assert!(ns > 0 && ns < 100_000, "{ns} ns per run");
    assert!(x.counters()[Counter::DropOther as usize] >= 10_000);
}

/// IPv4 endpoints are found in the program's direct table (`media4`) when their bucket has room
/// and in the hash otherwise: nine endpoints of one bucket (eight ways) and an IPv6 one are all
/// kept, and each removal takes exactly its own endpoint out, wherever it was.
#[test]
fn full_media4_bucket_falls_back_to_the_hash() {
    if !root_or_skip() {
        return;
    }
    let x = XdpFilter::load_detached().expect("load the XDP program");
    let m = x.media();
    // Nine (address, port) pairs with the same bucket.
    let port = 4000;
    let want = capture_ebpf::ep4_bucket([10, 1, 0, 1], port);
    let mut same: Vec<Ipv4Addr> = (0u32..4_000_000)
        .map(|n| Ipv4Addr::from(0x0a01_0000 + n))
        .filter(|a| capture_ebpf::ep4_bucket(a.octets(), port) == want)
        .take(9)
        .collect();
    assert_eq!(same.len(), 9, "nine addresses sharing a bucket");
    let v6: IpAddr = "2001:db8::7".parse().unwrap();
    for a in &same {
        m.add(IpAddr::V4(*a), port).unwrap();
    }
    m.add(v6, port).unwrap();
    let to = |a: IpAddr| {
        let from = if a.is_ipv6() { "2001:db8::9".parse().unwrap() } else { ip(9) };
        frame(from, 7000, a, port)
    };
    for a in &same {
        assert!(kept_as_media(&x, &to(IpAddr::V4(*a))), "{a}: kept");
    }
    assert!(kept_as_media(&x, &to(v6)), "IPv6 endpoint kept (hash only)");
    assert!(!kept_as_media(&x, &to(ip(3))), "no call's address");

    // One from the table, then the one left in the hash: each goes, the others stay.
    for gone in [same.remove(0), same.pop().unwrap()] {
        m.remove_if_idle(IpAddr::V4(gone), port, Duration::ZERO);
        assert!(!kept_as_media(&x, &to(IpAddr::V4(gone))), "{gone}: removed");
        for a in &same {
            assert!(kept_as_media(&x, &to(IpAddr::V4(*a))), "{a}: still kept");
        }
    }
    for a in same.drain(..) {
        m.remove_if_idle(IpAddr::V4(a), port, Duration::ZERO);
    }
    m.remove_if_idle(v6, port, Duration::ZERO);
    assert_eq!(m.len(), 0);
    assert!(!kept_as_media(&x, &to(v6)));
}

/// Media matched in the direct table keeps an endpoint in use as much as media matched in the
/// hash: an endpoint added long ago whose packets still flow lingers at its call's end.
#[test]
fn media_seen_in_media4_keeps_the_endpoint() {
    if !root_or_skip() {
        return;
    }
    let x = XdpFilter::load_detached().expect("load the XDP program");
    let m = x.media();
    let to_a = frame(ip(9), 7000, ip(1), 4004);
    let grace = Duration::from_millis(600);
    m.add(ip(1), 4004).unwrap();
    std::thread::sleep(grace + Duration::from_millis(300)); // added longer ago than the grace
    assert!(kept_as_media(&x, &to_a)); // but media flows
    m.remove_if_idle(ip(1), 4004, grace);
    assert!(kept_as_media(&x, &to_a), "still flowing: kept for now");
    assert_eq!(m.len(), 1);
    std::thread::sleep(grace + Duration::from_millis(300));
    m.retry_lingering();
    assert!(!kept_as_media(&x, &to_a), "idle since: removed");
    assert_eq!(m.len(), 0);
}

/// RTP-shaped UDP of no known endpoint (a call's first media packets, arriving before userspace
/// has read the SIP that announces them) passes as a probe, at most `PROBE_BURST` frames at once
/// and `PROBE_RATE` a second per CPU; the rest is dropped and counted. UDP that is not RTP-shaped,
/// or on a port below 1024, is dropped as before.
#[test]
fn probe_passes_rtp_of_no_call_at_a_bounded_rate() {
    if !root_or_skip() {
        return;
    }
    let x = XdpFilter::load_detached().expect("load the XDP program");
    let count = |c: Counter| x.counters()[c as usize];
    // One of each kind, on a fresh program (every CPU's bucket is full on first use).
    let rtp = rtp_frame(ip(9), 7000, ip(1), 4000, 8);
    let rtcp = rtp_frame(ip(9), 7001, ip(1), 4001, 200);
    let dns = rtp_frame(ip(9), 53, ip(1), 4000, 8);
    let not_rtp = frame(ip(9), 7000, ip(1), 4000);
    let reserved_pt = rtp_frame(ip(9), 7000, ip(1), 4000, 50);
    for (f, probe) in [(&rtp, true), (&rtcp, true), (&dns, false), (&not_rtp, false), (&reserved_pt, false)] {
        let (p0, d0) = (count(Counter::PassProbe), count(Counter::DropOther));
        x.test_run(f, 1).expect("test run");
        let (p1, d1) = (count(Counter::PassProbe), count(Counter::DropOther));
        assert_eq!((p1 - p0, d1 - d0), if probe { (1, 0) } else { (0, 1) }, "probe {probe}: passed, dropped");
    }
    assert_eq!(count(Counter::PassMedia), 0);

    // A burst on one CPU (one test run stays on its CPU): PROBE_BURST pass, give or take what the
    // bucket earned while the run lasted and the one frame above; the rest is over the rate.
    let runs = 3 * capture_ebpf::PROBE_BURST;
    let (p0, o0, d0) = (count(Counter::PassProbe), count(Counter::ProbeOverRate), count(Counter::DropOther));
    let t = std::time::Instant::now();
    x.test_run(&rtp, runs as u32).expect("test run");
    let earned = t.elapsed().as_nanos() as u64 * capture_ebpf::PROBE_RATE / 1_000_000_000 + 1;
    let passed = count(Counter::PassProbe) - p0;
    let over = count(Counter::ProbeOverRate) - o0;
    assert_eq!(passed + over, runs);
    assert_eq!(count(Counter::DropOther) - d0, over, "over the rate is counted as dropped too");
    assert!(
        passed + 2 >= capture_ebpf::PROBE_BURST && passed <= capture_ebpf::PROBE_BURST + earned,
        "{passed} passed of {runs} (burst {}, earned meanwhile {earned})",
        capture_ebpf::PROBE_BURST
    );

    // A known endpoint's media is media, not a probe, whatever the bucket holds.
    x.media().add(ip(1), 4000).unwrap();
    assert!(kept_as_media(&x, &rtp));
}
