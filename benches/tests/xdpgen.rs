//! The live bench's in-kernel sender (`callrec-gen send --xdp`, benches/src/xdpgen.rs) delivers
//! every frame it is given, in order and byte for byte, to the far end of a veth pair, and refuses
//! a frame it cannot carry. Needs root (a network namespace, BPF); when not root the test fails
//! and says how to run it, unless CALLREC_SKIP_ROOT_TESTS=1 opts out explicitly.

use std::process::Command;
use std::time::{Duration, Instant};

use callrec_bench::xdpgen::{LiveFrames, MAX_FRAME, XdpSender, check_live_frames};

struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn run(args: &[&str]) {
    let o = Command::new(args[0]).args(&args[1..]).output().expect("run");
    assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
}

/// Frame `i`: broadcast, a local experimental EtherType (so the kernel's own frames on the link
/// are told apart), then bytes that depend on `i` and the position, 60 to 1,514 bytes long.
fn frame(i: usize) -> Vec<u8> {
    let len = 60 + (i * 97) % 1455;
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 1, 0x88, 0xb5]);
    f.extend((14..len).map(|k| (k * 31 + i * 7) as u8));
    f[14..18].copy_from_slice(&(i as u32).to_be_bytes());
    f
}

/// An AF_PACKET socket on `iface` of this thread's namespace, every protocol, 1 s receive timeout.
fn packet_socket(iface: &str) -> i32 {
    let idx = capture_core::live::ifindex(iface).expect("ifindex");
    // SAFETY: plain socket calls on a descriptor this function returns.
    unsafe {
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, (libc::ETH_P_ALL as u16).to_be() as i32);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let buf: libc::c_int = 64 << 20;
        libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &buf as *const _ as *const libc::c_void, 4);
        let tv = libc::timeval { tv_sec: 1, tv_usec: 0 };
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as u32,
        );
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        sll.sll_ifindex = idx as i32;
        let r =
            libc::bind(fd, &sll as *const _ as *const libc::sockaddr, std::mem::size_of::<libc::sockaddr_ll>() as u32);
        assert_eq!(r, 0, "bind: {}", std::io::Error::last_os_error());
        fd
    }
}

#[test]
fn in_kernel_sender_delivers_every_frame_intact() {
    if !capture_core::live::root_or_skip("a network namespace, BPF") {
        return;
    }
    // Some kernels refuse live frames even to root (a VM's root without CAP_SYS_RESOURCE); then
    // the sender cannot run at all, which the live bench reports the same way (`--inject xdp`
    // fails, `--inject auto` falls back to a packet socket). Any other failure fails the test.
    match check_live_frames().expect("probing live frames") {
        LiveFrames::Allowed => {}
        LiveFrames::Refused(why) => {
            eprintln!("SKIPPED: the in-kernel sender cannot be tested on this machine: {why}");
            return;
        }
    }
    let ns = Netns(format!(
        "cbxg{}-{}",
        std::process::id(),
        std::time::SystemTime::UNIX_EPOCH.elapsed().unwrap().subsec_nanos()
    ));
    run(&["ip", "netns", "add", &ns.0]);
    run(&["ip", "-n", &ns.0, "link", "add", "g0", "type", "veth", "peer", "name", "g1"]);
    run(&["ip", "-n", &ns.0, "link", "set", "g0", "up"]);
    run(&["ip", "-n", &ns.0, "link", "set", "g1", "up"]);
    // XDP frames sent into g0 reach g1 only if g1 runs XDP or has GRO on.
    run(&["ip", "netns", "exec", &ns.0, "ethtool", "-K", "g1", "gro", "on"]);
    let f = std::fs::File::open(format!("/run/netns/{}", ns.0)).expect("netns file");
    // SAFETY: moves only this test's thread into the namespace; the file is a network namespace.
    let r = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&f), libc::CLONE_NEWNET) };
    assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());

    let sock = packet_socket("g1");
    let mut tx = XdpSender::new("g0").expect("in-kernel sender");
    let sent: Vec<Vec<u8>> = (0..1500).map(frame).collect();
    for batch in sent.chunks(500) {
        let bad = tx.send(batch.iter().map(Vec::as_slice)).expect("send");
        assert_eq!(bad, 0);
    }
    let too_long = vec![0u8; MAX_FRAME + 1];
    let e = tx.send([too_long.as_slice()]).expect_err("a frame longer than the slots");
    assert!(e.to_string().contains(&format!("{}-byte frame", MAX_FRAME + 1)), "{e}");

    let mut got = Vec::new();
    let mut buf = vec![0u8; 4096];
    let until = Instant::now() + Duration::from_secs(10);
    while got.len() < sent.len() && Instant::now() < until {
        // SAFETY: reading into a buffer of buf.len() bytes.
        let n = unsafe { libc::recv(sock, buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0) };
        if n < 0 {
            break;
        }
        let f = &buf[..n as usize];
        if f.len() >= 14 && f[12..14] == [0x88, 0xb5] {
            got.push(f.to_vec());
        }
    }
    // SAFETY: closing the socket opened above.
    unsafe { libc::close(sock) };
    assert_eq!(got.len(), sent.len(), "frames received on g1");
    for (i, (g, s)) in got.iter().zip(&sent).enumerate() {
        assert!(g == s, "frame {i} differs: {} bytes received, {} sent", g.len(), s.len());
    }
}
