//! The DNS records CRDT ([`weave_dns::NameStore`] on gossip channel `dns`) over the
//! simulated mesh: 50 peers on a random underlay converge on the same live records;
//! through a partition with additions, deletions and restarts on both sides they
//! converge again after the heal to exactly what the origins hold, and a deleted name
//! never comes back, however long anti-entropy keeps running.

mod sim;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use sim::{HostSpec, Sim};
use weave_dns::{CHANNEL, NameStore};
use weave_mesh::PeerName;
use weave_mesh::gossip::Gossiper;

/// A live record: (name, address, owner, origin host).
type Rec = (String, Ipv4Addr, String, usize);

const N: usize = 50;

fn live(sim: &Sim, host: usize) -> BTreeSet<(String, Ipv4Addr, String, PeerName)> {
    sim.mesh(host)
        .channel::<NameStore>(CHANNEL)
        .expect("dns channel registered")
        .entries()
        .into_iter()
        .map(|e| (e.name, e.addr, e.owner, e.origin))
        .collect()
}

fn expected(sim: &Sim, model: &BTreeSet<Rec>) -> BTreeSet<(String, Ipv4Addr, String, PeerName)> {
    model
        .iter()
        .map(|(n, a, o, h)| (n.clone(), *a, o.clone(), sim.name_of(*h)))
        .collect()
}

fn add(sim: &mut Sim, model: &mut BTreeSet<Rec>, host: usize, name: &str, addr: Ipv4Addr) {
    let owner = format!("c{host}");
    let full = format!("{name}.weave.local.");
    sim.with_mesh(host, |mesh, now| {
        mesh.with_channel::<NameStore, _>(CHANNEL, now, |store, _| {
            store.add(&full, addr, &owner, now).expect("valid name")
        })
    });
    model.insert((full, addr, owner, host));
}

fn remove(sim: &mut Sim, model: &mut BTreeSet<Rec>, host: usize, name: &str) {
    let full = format!("{name}.weave.local.");
    let removed = sim.with_mesh(host, |mesh, now| {
        mesh.with_channel::<NameStore, _>(CHANNEL, now, |store, _| {
            store.remove(None, None, Some(&full), now).expect("valid")
        })
    });
    assert_eq!(removed, Some(1), "host {host} removes its {full}");
    model.retain(|(n, _, _, h)| !(*n == full && *h == host));
}

/// A restart: the daemon comes back with an empty store and re-adds the records it
/// keeps (the container task re-registering its containers); `keep` filters them.
fn restart(sim: &mut Sim, model: &mut BTreeSet<Rec>, host: usize, keep: impl Fn(&str) -> bool) {
    sim.crash(host);
    sim.start(host);
    let mine: Vec<Rec> = model.iter().filter(|r| r.3 == host).cloned().collect();
    for rec in mine {
        model.remove(&rec);
        let short = rec.0.trim_end_matches(".weave.local.").to_owned();
        if keep(&short) {
            add(sim, model, host, &short, rec.1);
        }
    }
}

fn addr(host: usize, k: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, k, u8::try_from(host + 1).expect("< 255 hosts"))
}

fn converge(sim: &mut Sim, model: &BTreeSet<Rec>, what: &str) {
    let want = expected(sim, model);
    let took = sim.run_until_true(Duration::from_secs(900), Duration::from_millis(500), |s| {
        s.running().iter().all(|h| live(s, *h) == want)
    });
    if took.is_none() {
        let wrong: Vec<String> = sim
            .running()
            .iter()
            .filter_map(|h| {
                let got = live(sim, *h);
                (got != want).then(|| {
                    format!(
                        "host {h}: missing {:?}, extra {:?}",
                        want.difference(&got).take(3).collect::<Vec<_>>(),
                        got.difference(&want).take(3).collect::<Vec<_>>()
                    )
                })
            })
            .take(5)
            .collect();
        panic!("{what}: not converged (seed {}): {wrong:#?}", sim.seed);
    }
}

#[test]
fn records_converge_across_50_peers_through_partitions_and_restarts() {
    let mut sim = Sim::new(Sim::seed_from_env(50));
    sim.add_random_hosts(N, N, |_, peers| HostSpec {
        peers,
        channels: Some(Box::new(move |host| {
            let name = Sim::name_for(host);
            vec![(
                CHANNEL.to_owned(),
                Box::new(NameStore::new(name, Instant::now())) as Box<dyn Gossiper>,
            )]
        })),
        ..HostSpec::default()
    });
    for host in 0..N {
        sim.start(host);
        assert_eq!(
            sim.mesh(host)
                .channel::<NameStore>(CHANNEL)
                .map(NameStore::local),
            Some(sim.name_of(host)),
            "the store's peer name is the host's"
        );
    }
    let formed = sim.run_until_true(Duration::from_secs(60), Duration::from_millis(100), |s| {
        s.connection_components().len() == 1 && s.check_converged().is_ok()
    });
    assert!(formed.is_some(), "mesh formed");

    // Every host names its container; every fifth also registers the shared name.
    let mut model = BTreeSet::new();
    for host in 0..N {
        add(
            &mut sim,
            &mut model,
            host,
            &format!("h{host}"),
            addr(host, 1),
        );
        if host % 5 == 0 {
            add(&mut sim, &mut model, host, "shared", addr(host, 2));
        }
    }
    converge(&mut sim, &model, "after the first additions");

    // Partition; on both sides delete, add and restart.
    let left: Vec<usize> = (0..N / 2).collect();
    let right: Vec<usize> = (N / 2..N).collect();
    sim.partition(&left, &right);
    sim.run_for(Duration::from_secs(60));
    let mut deleted = Vec::new();
    for host in [1, 2, 3, 30, 31, 32] {
        remove(&mut sim, &mut model, host, &format!("h{host}"));
        deleted.push(format!("h{host}.weave.local."));
    }
    for host in [0, 25] {
        remove(&mut sim, &mut model, host, "shared");
    }
    for host in [4, 33] {
        add(
            &mut sim,
            &mut model,
            host,
            &format!("new{host}"),
            addr(host, 3),
        );
    }
    // Restarts: 5 and 35 re-add everything, 6 and 36 come back without their name
    // (their container went while they were down).
    for host in [5, 35] {
        restart(&mut sim, &mut model, host, |_| true);
    }
    for host in [6, 36] {
        restart(&mut sim, &mut model, host, |name| !name.starts_with('h'));
        deleted.push(format!("h{host}.weave.local."));
    }
    sim.run_for(Duration::from_secs(30));
    sim.heal();
    converge(&mut sim, &model, "after the heal");

    // Flaps after the heal: a host crashes and stays down a while (its records leave
    // with it), another restarts at once, then the first comes back.
    sim.crash(40);
    restart(&mut sim, &mut model, 10, |_| true);
    sim.run_for(Duration::from_secs(120));
    sim.start(40);
    let mine: Vec<Rec> = model.iter().filter(|r| r.3 == 40).cloned().collect();
    for rec in mine {
        model.remove(&rec);
        add(
            &mut sim,
            &mut model,
            40,
            rec.0.trim_end_matches(".weave.local."),
            rec.1,
        );
    }
    converge(&mut sim, &model, "after the flaps");

    // Deleted names never come back, through many rounds of anti-entropy.
    let want = expected(&sim, &model);
    for _ in 0..20 {
        sim.run_for(Duration::from_secs(30));
        for host in sim.running() {
            let got = live(&sim, host);
            for name in &deleted {
                assert!(
                    !got.iter().any(|(n, ..)| n == name),
                    "{name} came back on host {host} at {:?} (seed {})",
                    sim.elapsed(),
                    sim.seed
                );
            }
            assert_eq!(got, want, "host {host} drifted (seed {})", sim.seed);
        }
    }
}
