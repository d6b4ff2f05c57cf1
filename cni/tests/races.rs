//! A runtime that breaks the spec's "one command per attachment at a time": ADD and DEL of one
//! container racing each other. Whatever the interleaving, the pod must end up either wired
//! with an address it holds, or with neither: never wired while its address is released (the
//! address would be handed out a second time).

mod common;

use std::time::Duration;

use common::*;

#[test]
fn security_concurrent_add_and_del_of_one_container_never_leave_a_wired_pod_without_its_address() {
    let node = Node::new("10.85.0.0/24");
    let pod = Netns::new("pod");
    let conf = node.reef_conf("1.0.0", "race");
    let handle = "race.c-race";
    let add = Call::new(reef_cni(), "ADD", "c-race", &pod.path(), &conf);
    let del = Call::new(reef_cni(), "DEL", "c-race", &pod.path(), &conf);
    let mut broken = Vec::new();
    let mut outcomes = [0u32; 2];
    for round in 0..40u64 {
        // DEL starts 0-9 ms after ADD: that sweeps DEL's release across ADD's allocation.
        let delay = Duration::from_micros((round * 2_357) % 9_000);
        let (a, d) = std::thread::scope(|s| {
            let a = s.spawn(|| add.run(&node.host));
            std::thread::sleep(delay);
            let d = s.spawn(|| del.run(&node.host));
            (a.join().unwrap(), d.join().unwrap())
        });
        let wired = pod.try_ip(&["link", "show", "eth0"]);
        let held = node.held(handle);
        outcomes[usize::from(wired)] += 1;
        if wired == held.is_empty() {
            broken.push(format!(
                "round {round} (DEL after {delay:?}): pod wired {wired}, address held {held:?}; ADD ok {} {}, DEL ok {} {}",
                a.ok,
                a.stdout.trim(),
                d.ok,
                d.stdout.trim()
            ));
        } else if wired {
            let on_pod = pod.ip(&["-4", "-o", "addr", "show", "dev", "eth0"]);
            if !on_pod.contains(&format!("{}/32", held[0])) {
                broken.push(format!(
                    "round {round}: the pod has {on_pod:?} but {handle} holds {held:?}"
                ));
            }
        }
        // Back to nothing for the next round.
        del.run(&node.host).expect_ok("cleanup DEL");
        node.assert_clean(&format!("after round {round}"));
    }
    assert!(
        broken.is_empty(),
        "{} of 40 rounds broke the invariant:\n{}",
        broken.len(),
        broken.join("\n")
    );
    eprintln!(
        "rounds ending wired: {}, ending empty: {}",
        outcomes[1], outcomes[0]
    );
}
