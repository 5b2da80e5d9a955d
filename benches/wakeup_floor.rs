//! The floor of any user-space data path on this machine: what one thread wake-up
//! costs. Two threads bounce a small UDP datagram over loopback, each sleeping in
//! `recv` between turns (two wake-ups per round trip), 10 ms apart as the router
//! bench's pings are, so the CPUs go idle in between just as they do there.
//!
//! The sleeve adds three such wake-ups to a ping's round trip over plain veth (the
//! sending host's TAP reader, the far host's UDP reader, our UDP reader), so three
//! halves of this round trip bound how close an encrypted overlay in user space can
//! get to veth. `cargo bench --bench wakeup_floor` (ROUNDS=N for more samples).

use std::net::UdpSocket;
use std::time::{Duration, Instant};

fn main() -> std::io::Result<()> {
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(300)
        .max(10);
    let ours = UdpSocket::bind("127.0.0.1:0")?;
    let echo = UdpSocket::bind("127.0.0.1:0")?;
    let (ours_addr, echo_addr) = (ours.local_addr()?, echo.local_addr()?);
    // The echo thread ends with the process.
    std::thread::spawn(move || {
        let mut buf = [0u8; 128];
        while let Ok((n, _)) = echo.recv_from(&mut buf) {
            if echo.send_to(&buf[..n], ours_addr).is_err() {
                return;
            }
        }
    });
    ours.set_read_timeout(Some(Duration::from_secs(1)))?;
    let mut buf = [0u8; 128];
    let mut micros = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        std::thread::sleep(Duration::from_millis(10));
        let start = Instant::now();
        ours.send_to(&[0u8; 84], echo_addr)?;
        ours.recv_from(&mut buf)?;
        micros.push(start.elapsed().as_secs_f64() * 1e6);
    }
    micros.sort_by(f64::total_cmp);
    let at = |q: usize| micros[(micros.len() - 1) * q / 100];
    println!(
        "UDP round trip between two sleeping threads ({rounds} rounds, 2 wake-ups each): \
         p10 {:.1} us, p50 {:.1} us, p90 {:.1} us; one wake-up and hop ~{:.1} us, \
         three ~{:.3} ms",
        at(10),
        at(50),
        at(90),
        at(50) / 2.0,
        at(50) * 1.5 / 1000.0
    );
    Ok(())
}
