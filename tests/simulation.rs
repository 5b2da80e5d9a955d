//! Deterministic simulations of the mesh: real state machines on a virtual clock.
//! A failing run prints its seed; `SIM_SEED=<seed>` replays it.

mod sim;

use std::time::Duration;

use sim::{HostSpec, Sim};
use weave_mesh::RouteKind;

/// Runs `scenario` with a seed, printing the seed if it fails.
fn with_seed(default: u64, scenario: impl FnOnce(&mut Sim)) {
    let seed = Sim::seed_from_env(default);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut sim = Sim::new(seed);
        scenario(&mut sim);
    }));
    if let Err(panic) = result {
        eprintln!("simulation failed; replay with SIM_SEED={seed}");
        std::panic::resume_unwind(panic);
    }
}

/// Runs until all running hosts form one connected mesh and every view matches it.
fn converge(sim: &mut Sim, limit: Duration) -> Duration {
    let took = sim.run_until_true(limit, Duration::from_millis(100), |s| {
        s.connection_components().len() == 1 && s.check_converged().is_ok()
    });
    match took {
        Some(took) => took,
        None => panic!(
            "no convergence within {limit:?}: {} components; {:?}",
            sim.connection_components().len(),
            sim.check_converged()
        ),
    }
}

#[test]
fn three_hosts_in_a_line_learn_each_other_through_the_middle() {
    with_seed(1, |sim| {
        let b = sim.add_host(HostSpec::default());
        let a = sim.add_host(HostSpec::joining(vec![b]));
        let c = sim.add_host(HostSpec::joining(vec![b]));
        sim.restrict_underlay(&[(a, b), (b, c)]);
        for h in [a, b, c] {
            sim.start(h);
        }
        converge(sim, Duration::from_secs(30));
        assert_eq!(sim.mesh(a).live_peers().len(), 3);
        sim.check_routes(RouteKind::Data).unwrap();
        let c_name = sim.name_of(c);
        let b_name = sim.name_of(b);
        assert_eq!(
            sim.mesh_mut(a).next_hop(RouteKind::Data, c_name),
            Some(b_name)
        );
        // A tries to reach C directly (discovery) and keeps failing without harm.
        sim.run_for(Duration::from_secs(60));
        sim.check_converged().unwrap();
        assert!(
            sim.mesh(a)
                .connection_status()
                .iter()
                .any(|c| c.error.is_some()),
            "A tried C and failed"
        );
    });
}

#[test]
fn three_hosts_form_a_full_mesh_through_one_seed_with_a_password() {
    with_seed(2, |sim| {
        let psk = Some([7u8; 32]);
        let seed_host = sim.add_host(HostSpec {
            password: psk,
            ..HostSpec::default()
        });
        let joiner = || HostSpec {
            password: psk,
            ..HostSpec::joining(vec![seed_host])
        };
        let (b, c) = (sim.add_host(joiner()), sim.add_host(joiner()));
        for h in [seed_host, b, c] {
            sim.start(h);
        }
        converge(sim, Duration::from_secs(30));
        // Discovery: b and c connect to each other although neither named the other.
        sim.run_for(Duration::from_secs(5));
        assert_eq!(sim.degrees(), vec![2, 2, 2]);
        converge(sim, Duration::from_secs(10));
        sim.check_routes(RouteKind::Data).unwrap();
    });
}

#[test]
fn wrong_password_cannot_join() {
    with_seed(3, |sim| {
        let a = sim.add_host(HostSpec {
            password: Some([1; 32]),
            ..HostSpec::default()
        });
        let b = sim.add_host(HostSpec {
            peers: vec![a],
            password: Some([2; 32]),
            ..HostSpec::default()
        });
        sim.start(a);
        sim.start(b);
        sim.run_for(Duration::from_secs(20));
        assert_eq!(sim.mesh(a).live_peers().len(), 1);
        assert_eq!(sim.mesh(b).live_peers().len(), 1);
        let status = sim.mesh(b).connection_status();
        let error = status[0].error.clone().unwrap_or_default();
        assert!(error.contains("password"), "b's status says why: {error:?}");
    });
}

#[test]
fn no_discovery_keeps_to_the_named_peers() {
    with_seed(4, |sim| {
        let hub = sim.add_host(HostSpec::default());
        let no_discovery = || HostSpec {
            configure: Some(Box::new(|c| c.discovery = false)),
            ..HostSpec::joining(vec![hub])
        };
        let (b, c) = (sim.add_host(no_discovery()), sim.add_host(no_discovery()));
        for h in [hub, b, c] {
            sim.start(h);
        }
        converge(sim, Duration::from_secs(30));
        sim.run_for(Duration::from_secs(30));
        assert_eq!(
            sim.degrees(),
            vec![2, 1, 1],
            "b and c never dial each other"
        );
        assert_eq!(
            sim.mesh(b).live_peers().len(),
            3,
            "yet they know each other"
        );
    });
}

#[test]
fn stopped_host_is_dropped_and_rejoins_when_restarted() {
    with_seed(5, |sim| {
        let hosts: Vec<_> = (0..4)
            .map(|i| sim.add_host(HostSpec::joining(if i == 0 { vec![] } else { vec![0] })))
            .collect();
        for &h in &hosts {
            sim.start(h);
        }
        converge(sim, Duration::from_secs(30));
        sim.stop(3);
        let gone = sim.run_until_true(Duration::from_secs(30), Duration::from_millis(100), |s| {
            (0..3).all(|h| s.mesh(h).live_peers().len() == 3) && s.check_converged().is_ok()
        });
        assert!(
            gone.is_some(),
            "stopped host dropped: {:?}",
            sim.check_converged()
        );
        sim.start(3);
        converge(sim, Duration::from_secs(30));
        assert!((0..4).all(|h| sim.mesh(h).live_peers().len() == 4));
        // A crash (no FIN) is noticed by heartbeat timeouts.
        sim.crash(2);
        let gone = sim.run_until_true(Duration::from_secs(120), Duration::from_millis(500), |s| {
            [0, 1, 3].iter().all(|h| s.mesh(*h).live_peers().len() == 3)
        });
        assert!(gone.is_some(), "crashed host dropped");
        sim.start(2);
        converge(sim, Duration::from_secs(60));
        sim.check_routes(RouteKind::Data).unwrap();
    });
}

#[test]
fn fifty_hosts_random_graph_with_partitions_that_heal() {
    for default_seed in [10, 11, 12] {
        with_seed(default_seed, |sim| {
            let n = 50;
            sim.add_random_hosts(n, n, |_, peers| HostSpec::joining(peers));
            sim.link.jitter = Duration::from_millis(2);
            sim.link.loss = 0.01;
            for h in 0..n {
                sim.start(h);
            }
            let formed = converge(sim, Duration::from_secs(120));
            eprintln!(
                "seed {}: formed in {formed:?}, degrees {:?}",
                sim.seed,
                sim.degrees()
            );
            sim.check_routes(RouteKind::Data).unwrap();
            sim.check_routes(RouteKind::Gossip).unwrap();

            // Split in two; each side converges on its own.
            let left: Vec<_> = (0..n / 2).collect();
            let right: Vec<_> = (n / 2..n).collect();
            sim.partition(&left, &right);
            let split =
                sim.run_until_true(Duration::from_secs(180), Duration::from_millis(500), |s| {
                    s.connection_components().len() >= 2 && s.check_converged().is_ok()
                });
            assert!(
                split.is_some(),
                "sides converge apart: {:?}",
                sim.check_converged()
            );
            sim.heal();
            let healed =
                sim.run_until_true(Duration::from_secs(900), Duration::from_millis(500), |s| {
                    s.connection_components().len() == 1 && s.check_converged().is_ok()
                });
            assert!(
                healed.is_some(),
                "heals into one: components {} {:?}",
                sim.connection_components().len(),
                sim.check_converged()
            );
            eprintln!(
                "seed {}: split in {split:?}, healed in {healed:?}",
                sim.seed
            );
            sim.check_routes(RouteKind::Data).unwrap();
        });
    }
}

#[test]
fn two_hosts_dialling_each_other_keep_one_connection() {
    with_seed(20, |sim| {
        let a = sim.add_host(HostSpec::joining(vec![1]));
        let b = sim.add_host(HostSpec::joining(vec![0]));
        sim.start(a);
        sim.start(b);
        converge(sim, Duration::from_secs(10));
        sim.run_for(Duration::from_secs(30));
        assert_eq!(sim.degrees(), vec![1, 1]);
        let status = sim.mesh(a).connection_status();
        assert_eq!(
            status.len(),
            1,
            "the losing dial is satisfied, not retried: {status:?}"
        );
    });
}

#[test]
fn connection_limit_refuses_extra_peers() {
    with_seed(21, |sim| {
        let hub = sim.add_host(HostSpec {
            configure: Some(Box::new(|c| c.conn_limit = 1)),
            ..HostSpec::default()
        });
        let (b, c) = (
            sim.add_host(HostSpec::joining(vec![hub])),
            sim.add_host(HostSpec::joining(vec![hub])),
        );
        sim.start(hub);
        sim.start(b);
        sim.run_for(Duration::from_secs(2));
        sim.start(c);
        sim.run_for(Duration::from_secs(10));
        assert_eq!(sim.mesh(hub).live_peers().len(), 2);
        let refused = sim.mesh(c).connection_status();
        assert!(
            refused.iter().any(|s| s
                .error
                .as_deref()
                .is_some_and(|e| e.contains("too many connections"))),
            "{refused:?}"
        );
    });
}

#[test]
fn two_live_peers_with_one_name_are_reported() {
    with_seed(22, |sim| {
        let hub = sim.add_host(HostSpec::default());
        let twin = || HostSpec {
            configure: Some(Box::new(|c| {
                c.name = weave_mesh::PeerName::from_u64(0x0200_dead_beef)
            })),
            ..HostSpec::joining(vec![hub])
        };
        let (b, c) = (sim.add_host(twin()), sim.add_host(twin()));
        sim.start(hub);
        sim.start(b);
        sim.run_for(Duration::from_secs(2));
        sim.start(c);
        let reported =
            sim.run_until_true(Duration::from_secs(120), Duration::from_millis(500), |s| {
                !s.mesh(b).collisions().is_empty() && !s.mesh(c).collisions().is_empty()
            });
        assert!(
            reported.is_some(),
            "hub: {:?} {:?}; b: {:?} {:?}, c: {:?}",
            sim.mesh(hub).collisions(),
            sim.mesh(hub).connection_status(),
            sim.mesh(b).collisions(),
            sim.mesh(b).connection_status(),
            sim.mesh(c).collisions()
        );
        assert!(sim.mesh(b).collisions()[0].contains("collision"));
    });
}
