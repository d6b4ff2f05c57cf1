//! An in-memory [`Netlink`] with fault injection, for what a real kernel cannot be made to do
//! on demand: fail the next route add, overflow the monitor socket. It follows the kernel's
//! rules that matter to reef: one route per (destination, metric); add without replace fails
//! on an occupied key; delete matches the protocol; every change is announced as an event.
//! Behaviour the fake cannot show (real netlink encoding, multipath, namespaces) is tested
//! against real namespaces in `tests/`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use crate::kernel::{KernelRoute, RouteKey};
use crate::netlink::{Netlink, RouteEvent};
use crate::Error;

const EEXIST: i32 = 17;
const EIO: i32 = 5;

/// Operation counters, to assert "no churn".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FakeCounts {
    pub adds: usize,
    pub replaces: usize,
    pub deletes: usize,
    pub lists: usize,
    pub failed: usize,
}

#[derive(Debug, Default)]
struct State {
    routes: BTreeMap<RouteKey, (u8, KernelRoute)>,
    links: HashMap<String, u32>,
    fail_adds: usize,
    counts: FakeCounts,
    watchers: Vec<UnboundedSender<RouteEvent>>,
}

impl State {
    fn announce(&mut self, ev: RouteEvent) {
        self.watchers.retain(|w| w.send(ev.clone()).is_ok());
    }
}

/// The fake kernel; clones share state, so a test keeps one to inject faults and inspect.
#[derive(Debug, Clone, Default)]
pub struct FakeNetlink {
    state: Arc<Mutex<State>>,
}

impl FakeNetlink {
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panicking test thread must not hide the state from the assertions after it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn add_link(&self, name: &str, index: u32) {
        self.state().links.insert(name.to_string(), index);
    }

    /// The next `n` route adds or replaces fail with EIO.
    pub fn fail_next_adds(&self, n: usize) {
        self.state().fail_adds = n;
    }

    /// Tells every watcher that the monitor socket overflowed (events lost).
    pub fn overrun(&self) {
        self.state().announce(RouteEvent::Overrun);
    }

    /// Tells every watcher that an interface changed.
    pub fn link_changed(&self) {
        self.state().announce(RouteEvent::LinkChanged);
    }

    /// Removes an interface and, like the kernel, every route through it, without any route
    /// event (only a link event).
    pub fn remove_link(&self, name: &str) {
        let mut s = self.state();
        if let Some(index) = s.links.remove(name) {
            s.routes.retain(|_, (_, r)| match &r.target {
                crate::KernelTarget::Unicast(hops) => hops.iter().all(|h| h.ifindex != index),
                _ => true,
            });
            s.announce(RouteEvent::LinkChanged);
        }
    }

    /// A route written by someone else (any protocol), as `ip route add/replace` would.
    pub fn external_put(&self, protocol: u8, route: KernelRoute) {
        let mut s = self.state();
        s.routes.insert(route.key(), (protocol, route.clone()));
        s.announce(RouteEvent::New { protocol, route });
    }

    /// Someone else deletes the route at this key, whatever its protocol.
    pub fn external_delete(&self, key: RouteKey) -> bool {
        let mut s = self.state();
        match s.routes.remove(&key) {
            Some((protocol, route)) => {
                s.announce(RouteEvent::Deleted { protocol, route });
                true
            }
            None => false,
        }
    }

    /// Changes the kernel behind the reconciler's back without any event (lost event).
    pub fn silent_delete(&self, key: RouteKey) {
        self.state().routes.remove(&key);
    }

    /// Every route in the fake kernel with its protocol.
    pub fn routes(&self) -> Vec<(u8, KernelRoute)> {
        self.state().routes.values().cloned().collect()
    }

    pub fn counts(&self) -> FakeCounts {
        self.state().counts
    }
}

impl Netlink for FakeNetlink {
    async fn list_routes(&self, protocol: u8) -> Result<Vec<KernelRoute>, Error> {
        let mut s = self.state();
        s.counts.lists += 1;
        Ok(s.routes
            .values()
            .filter(|(p, _)| *p == protocol)
            .map(|(_, r)| r.clone())
            .collect())
    }

    async fn add_route(
        &self,
        route: &KernelRoute,
        protocol: u8,
        replace: bool,
    ) -> Result<(), Error> {
        let mut s = self.state();
        let op = if replace { "replace" } else { "add" };
        if s.fail_adds > 0 {
            s.fail_adds -= 1;
            s.counts.failed += 1;
            return Err(Error::Netlink {
                op,
                route: route.to_string(),
                errno: EIO,
                reason: "injected failure".into(),
            });
        }
        if !replace && s.routes.contains_key(&route.key()) {
            s.counts.failed += 1;
            return Err(Error::Netlink {
                op,
                route: route.to_string(),
                errno: EEXIST,
                reason: "File exists".into(),
            });
        }
        if replace {
            s.counts.replaces += 1;
        } else {
            s.counts.adds += 1;
        }
        s.routes.insert(route.key(), (protocol, route.clone()));
        s.announce(RouteEvent::New {
            protocol,
            route: route.clone(),
        });
        Ok(())
    }

    async fn delete_route(&self, route: &KernelRoute, protocol: u8) -> Result<(), Error> {
        let mut s = self.state();
        let key = route.key();
        if matches!(s.routes.get(&key), Some((p, _)) if *p == protocol) {
            let (_, old) = s.routes.remove(&key).expect("checked above");
            s.counts.deletes += 1;
            s.announce(RouteEvent::Deleted {
                protocol,
                route: old,
            });
        }
        Ok(())
    }

    async fn links(&self) -> Result<HashMap<String, u32>, Error> {
        Ok(self.state().links.clone())
    }

    async fn subscribe(&self) -> Result<UnboundedReceiver<RouteEvent>, Error> {
        let (tx, rx) = unbounded_channel();
        self.state().watchers.push(tx);
        Ok(rx)
    }
}
