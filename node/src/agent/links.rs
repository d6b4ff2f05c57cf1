//! The interfaces of the agent's namespace, from rtnetlink link notifications: a pod's veth
//! appears after its allocation, and its /32 route is planned when it does. The task
//! subscribes to link (and, with felix-lite's monitor, route) notifications first, then dumps
//! the links once, so that nothing happening in between is missed; each link notification
//! (or a monitor overrun) dumps them again, queued notifications coalesced into one dump. The
//! set of interface names goes out on a `watch`, only when it changed.
//!
//! ```text
//!  kernel ──RTNLGRP_LINK (and route groups)──▶ links task ──dump on a link event──▶
//!         watch<Arc<BTreeSet<name>>> ──▶ agent loop (replans; `view::local_pods` checks veths)
//! ```

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use felix_lite::{Netlink, RouteEvent, RtNetlink};
use tokio::sync::{mpsc::UnboundedReceiver, watch};

/// The interface names of the namespace.
pub type Links = Arc<BTreeSet<String>>;

/// The wait before subscribing again after the monitor ended or a dump failed.
const RETRY: Duration = Duration::from_secs(1);

/// Subscribes and dumps the links once (the first plan needs them: a plan without the pods'
/// veths would remove their routes), then follows them in a task.
pub async fn spawn() -> Result<watch::Receiver<Links>> {
    let nl = RtNetlink::connect(None)
        .await
        .context("opening rtnetlink for link events")?;
    let events = nl.subscribe().await.context("subscribing to link events")?;
    let first = dump(&nl).await.context("listing the interfaces")?;
    let (tx, rx) = watch::channel(Arc::new(first));
    tokio::spawn(run(nl, events, tx));
    Ok(rx)
}

async fn dump(nl: &RtNetlink) -> Result<BTreeSet<String>, felix_lite::Error> {
    Ok(nl.links().await?.into_keys().collect())
}

fn publish(tx: &watch::Sender<Links>, now: BTreeSet<String>) {
    tx.send_if_modified(|l| {
        let changed = **l != now;
        if changed {
            *l = Arc::new(now);
        }
        changed
    });
}

async fn run(nl: RtNetlink, mut events: UnboundedReceiver<RouteEvent>, tx: watch::Sender<Links>) {
    loop {
        while let Some(ev) = events.recv().await {
            if !matches!(ev, RouteEvent::LinkChanged | RouteEvent::Overrun) {
                continue;
            }
            // What is queued already is covered by the one dump that follows.
            while events.try_recv().is_ok() {}
            match dump(&nl).await {
                Ok(now) => publish(&tx, now),
                Err(e) => tracing::warn!(error = %e, "listing the interfaces"),
            }
            if tx.is_closed() {
                return;
            }
        }
        tracing::warn!("the link monitor ended; subscribing again");
        loop {
            tokio::time::sleep(RETRY).await;
            match nl.subscribe().await {
                Ok(e) => {
                    events = e;
                    break;
                }
                Err(e) => tracing::warn!(error = %e, "subscribing to link events"),
            }
        }
        match dump(&nl).await {
            Ok(now) => publish(&tx, now),
            Err(e) => tracing::warn!(error = %e, "listing the interfaces"),
        }
    }
}
