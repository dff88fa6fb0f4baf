//! libpcap receive path (`--mode pcap`): what tcpdump and most recorders use, kept for NICs or
//! kernels where neither XDP nor our AF_PACKET ring works, and as the baseline in benchmarks.

use super::{LiveError, Source, SourceStats};

pub struct PcapSource {
    iface: String,
    cap: pcap::Capture<pcap::Active>,
    packets: u64,
    bytes: u64,
}

impl PcapSource {
    pub fn open(iface: &str, buffer_bytes: i32) -> Result<PcapSource, LiveError> {
        super::ifindex(iface)?;
        let err = |e: pcap::Error| {
            let text = e.to_string();
            if text.contains("ermission") || text.contains("not permitted") {
                LiveError::Permission {
                    what: format!("capture on {iface}"),
                    caps: super::missing_caps(&["CAP_NET_RAW"]),
                }
            } else {
                LiveError::Pcap { iface: iface.to_string(), what: text }
            }
        };
        let cap = pcap::Capture::from_device(iface)
            .map_err(err)?
            .promisc(true)
            .immediate_mode(true)
            .snaplen(65535)
            .buffer_size(buffer_bytes)
            .open()
            .map_err(err)?
            .setnonblock()
            .map_err(err)?;
        Ok(PcapSource { iface: iface.to_string(), cap, packets: 0, bytes: 0 })
    }
}

impl Source for PcapSource {
    fn label(&self) -> String {
        format!("{} libpcap", self.iface)
    }

    fn iface(&self) -> &str {
        &self.iface
    }

    fn queue(&self) -> u32 {
        0
    }

    fn poll(&mut self, max: usize, f: &mut dyn FnMut(i64, &[u8])) -> Result<usize, LiveError> {
        let mut n = 0;
        while n < max {
            match self.cap.next_packet() {
                Ok(p) => {
                    let ts = p.header.ts.tv_sec * 1_000_000_000 + p.header.ts.tv_usec * 1_000;
                    self.bytes += p.data.len() as u64;
                    f(ts, p.data);
                    n += 1;
                }
                Err(pcap::Error::TimeoutExpired) | Err(pcap::Error::NoMorePackets) => break,
                Err(e) => return Err(LiveError::Pcap { iface: self.iface.clone(), what: e.to_string() }),
            }
        }
        self.packets += n as u64;
        Ok(n)
    }

    fn stats(&mut self) -> SourceStats {
        let s = self.cap.stats().unwrap_or(pcap::Stat { received: 0, dropped: 0, if_dropped: 0 });
        SourceStats {
            packets: self.packets,
            bytes: self.bytes,
            ring_drops: u64::from(s.dropped),
            other_drops: u64::from(s.if_dropped),
        }
    }
}
