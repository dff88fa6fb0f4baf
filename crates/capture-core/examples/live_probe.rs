//! Reads one interface with a live source for a few seconds and prints what it saw: a smoke test
//! for the XDP filter, AF_XDP, AF_PACKET and libpcap paths outside the recorder.
//!
//! `cargo run --example live_probe -- IFACE xdp|af-packet|pcap SECONDS [SIP_PORT...]`

use std::time::{Duration, Instant};

use capture_core::live::afpacket::{AfPacketConfig, AfPacketSource};
use capture_core::live::afxdp::{AfXdpConfig, AfXdpSource};
use capture_core::live::pcapdev::PcapSource;
use capture_core::live::xdp::XdpFilter;
use capture_core::live::{Backoff, Source};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [iface, mode, secs, ports @ ..] = args.as_slice() else {
        eprintln!("usage: live_probe IFACE xdp|af-packet|pcap SECONDS [SIP_PORT...]");
        std::process::exit(2);
    };
    let ports: Vec<u16> =
        if ports.is_empty() { vec![5060] } else { ports.iter().map(|p| p.parse()).collect::<Result<_, _>>()? };
    let mut filter = None;
    let mut src: Box<dyn Source> = match mode.as_str() {
        "xdp" => {
            let mut f = XdpFilter::attach(iface, false)?;
            f.set_sip_ports(&ports)?;
            f.set_media_range(None)?;
            let s = AfXdpSource::open(&mut f, 0, AfXdpConfig::default())?;
            println!("XDP attached in {} mode", f.mode());
            filter = Some(f);
            Box::new(s)
        }
        "af-packet" => Box::new(AfPacketSource::open(iface, 0, None, AfPacketConfig::default())?),
        "pcap" => Box::new(PcapSource::open(iface, 64 << 20)?),
        m => return Err(format!("unknown mode {m}").into()),
    };
    println!("reading {}", src.label());
    let end = Instant::now() + Duration::from_secs(secs.parse()?);
    let mut backoff = Backoff::new(Duration::from_millis(1));
    let mut seen = 0u64;
    while Instant::now() < end {
        let n = src.poll(256, &mut |_, _| seen += 1)?;
        if n == 0 {
            if let Some(t) = backoff.idle() {
                src.wait(t);
            }
        } else {
            backoff.reset()
        }
    }
    println!("frames {seen} stats {:?}", src.stats());
    if let Some(f) = &filter {
        let c = f.counters();
        for k in capture_ebpf::Counter::ALL {
            println!("  {} {}", k.name(), c[k as usize]);
        }
    }
    Ok(())
}
