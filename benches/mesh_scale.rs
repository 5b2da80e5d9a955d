//! Mesh scale benchmark: N peers (default 1,000) in the deterministic simulation.
//!
//! Prints the virtual time to converge (every peer's view matches the real topology)
//! after the initial formation, after one more peer joins and after a partition into
//! halves heals, and the control-plane bytes sent per peer in each phase and per idle
//! minute. Run: `cargo bench --bench mesh_scale` (`MESH_N=200` for another size,
//! `SIM_SEED=` for another seed).
//!
//! Weave Mesh's topology gossip carries every peer's whole connection list, so one
//! change costs O(N * degree) bytes per receiver; ours carries the changed entries.

#[path = "../tests/sim/mod.rs"]
mod sim;

use std::time::{Duration, Instant as WallClock};

use sim::{HostSpec, Sim};

fn main() {
    let n: usize = std::env::var("MESH_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    let seed = Sim::seed_from_env(42);
    let wall = WallClock::now();
    let mut sim = Sim::new(seed);

    // A random connected underlay, average degree about 8: each host can reach only its
    // underlay neighbours (as hosts in different networks), names one of them, and
    // discovers the rest through gossip.
    sim.add_random_hosts(n, 3 * n, |_, peers| HostSpec::joining(peers));
    sim.link.jitter = Duration::from_millis(2);

    let joiner = n - 1;
    for host in 0..joiner {
        sim.start(host);
    }
    let formed = converge(&mut sim, "formation");
    let (total, max) = sim.bytes_sent();
    let peers = (n - 1) as u64;
    println!(
        "N={n} seed={seed} connections per peer: mean {:.1}",
        mean(&sim.degrees())
    );
    println!(
        "formation: {formed:?} virtual; bytes sent per peer: mean {} max {}",
        human(total / peers),
        human(max)
    );

    let before = sim.bytes_sent().0;
    sim.run_for(Duration::from_secs(60));
    let idle = sim.bytes_sent().0 - before;
    println!("idle: {} per peer per minute", human(idle / peers));

    let before = sim.bytes_sent().0;
    sim.start(joiner);
    let joined = converge(&mut sim, "join");
    let spent = sim.bytes_sent().0 - before;
    println!(
        "join of one peer: {joined:?} virtual; bytes sent per peer: {}",
        human(spent / n as u64)
    );

    let left: Vec<_> = (0..n / 2).collect();
    let right: Vec<_> = (n / 2..n).collect();
    sim.partition(&left, &right);
    let apart = sim.run_until_true(Duration::from_secs(600), Duration::from_millis(500), |s| {
        s.connection_components().len() >= 2 && s.check_converged().is_ok()
    });
    println!("partition into halves: detected and converged apart in {apart:?}");
    let before = sim.bytes_sent().0;
    sim.heal();
    let healed = converge(&mut sim, "heal");
    let spent = sim.bytes_sent().0 - before;
    println!(
        "heal: {healed:?} virtual; bytes sent per peer: {}",
        human(spent / n as u64)
    );
    println!("(wall clock {:.1?})", wall.elapsed());
}

fn converge(sim: &mut Sim, phase: &str) -> Duration {
    let wall = WallClock::now();
    let took = sim.run_until_true(Duration::from_secs(1800), Duration::from_millis(250), |s| {
        // Cheap first: every peer's digest hash is the same once they agree.
        let running = s.running();
        let first = s.mesh(running[0]).topology().digest_hash();
        if std::env::var_os("MESH_PROGRESS").is_some() {
            let same = running
                .iter()
                .filter(|h| s.mesh(**h).topology().digest_hash() == first)
                .count();
            eprintln!(
                "{phase}: {:?} virtual, {:.1?} wall, {same}/{} agree with peer 0",
                s.elapsed(),
                wall.elapsed(),
                running.len()
            );
            if same + 2 >= running.len() && same < running.len() {
                let base = s.mesh(running[0]).topology().digest();
                for h in &running {
                    let d = s.mesh(*h).topology().digest();
                    if d != base {
                        let mine: std::collections::BTreeSet<_> = d.records.iter().collect();
                        let theirs: std::collections::BTreeSet<_> = base.records.iter().collect();
                        let only_here: Vec<_> = mine.difference(&theirs).collect();
                        let only_base: Vec<_> = theirs.difference(&mine).collect();
                        eprintln!(
                            "  host {h} ({}) differs: has {only_here:?}; peer 0 has {only_base:?}",
                            s.name_of(*h)
                        );
                    }
                }
            }
        }
        running
            .iter()
            .all(|h| s.mesh(*h).topology().digest_hash() == first)
            && s.connection_components().len() == 1
            && s.check_converged().is_ok()
    });
    took.unwrap_or_else(|| panic!("{phase}: no convergence: {:?}", sim.check_converged()))
}

fn mean(values: &[usize]) -> f64 {
    values.iter().sum::<usize>() as f64 / values.len().max(1) as f64
}

fn human(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.2} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}
