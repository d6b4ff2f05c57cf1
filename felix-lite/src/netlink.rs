//! The few netlink operations the reconciler needs, behind a trait so tests can inject faults
//! (see [`crate::fake`]); the real implementation is [`crate::rtnl::RtNetlink`].

use std::collections::HashMap;
use std::future::Future;

use tokio::sync::mpsc::UnboundedReceiver;

use crate::diff::Op;
use crate::kernel::KernelRoute;
use crate::Error;

/// A change the kernel announced on the route multicast groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteEvent {
    /// `RTM_NEWROUTE` in the main table.
    New { protocol: u8, route: KernelRoute },
    /// `RTM_DELROUTE` in the main table.
    Deleted { protocol: u8, route: KernelRoute },
    /// The monitor socket overflowed (`ENOBUFS`): events were lost, resync everything.
    Overrun,
    /// An interface appeared, changed or vanished. The kernel drops an IPv4 route with its
    /// device without any route event, and a recreated device has a new index: resync.
    LinkChanged,
}

/// Route and link operations, always within one network namespace.
pub trait Netlink: Send + Sync {
    /// The main table's routes carrying `protocol` (IPv4 and IPv6); nothing else.
    fn list_routes(
        &self,
        protocol: u8,
    ) -> impl Future<Output = Result<Vec<KernelRoute>, Error>> + Send;

    /// Creates the route tagged with `protocol`. With `replace` false it fails if any route
    /// holds the key (a foreign route is never overwritten); with `replace` true it replaces
    /// reef's own route at that key.
    fn add_route(
        &self,
        route: &KernelRoute,
        protocol: u8,
        replace: bool,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Deletes the route at the key only if it carries `protocol`. Already gone is success.
    fn delete_route(
        &self,
        route: &KernelRoute,
        protocol: u8,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Applies `ops` in order and returns one result per op, in the same order. The
    /// kernel may be handed up to `batch` requests at once. Without a faster way, one request
    /// after the other.
    fn apply_ops(
        &self,
        ops: &[Op],
        protocol: u8,
        batch: usize,
    ) -> impl Future<Output = Vec<Result<(), Error>>> + Send {
        let _ = batch;
        async move {
            let mut out = Vec::with_capacity(ops.len());
            for op in ops {
                out.push(match op {
                    Op::Add(r) => self.add_route(r, protocol, false).await,
                    Op::Replace(r) => self.add_route(r, protocol, true).await,
                    Op::Delete(r) => self.delete_route(r, protocol).await,
                });
            }
            out
        }
    }

    /// Interface name → index for every interface in the namespace.
    fn links(&self) -> impl Future<Output = Result<HashMap<String, u32>, Error>> + Send;

    /// Starts watching IPv4 and IPv6 route changes and interface changes.
    fn subscribe(
        &self,
    ) -> impl Future<Output = Result<UnboundedReceiver<RouteEvent>, Error>> + Send;
}
