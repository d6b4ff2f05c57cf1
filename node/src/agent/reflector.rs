//! The list+watch loop behind the agent's Kubernetes caches (Service advertisement's
//! Services and EndpointSlices, the LoadBalancer controller's pools and Services): list once,
//! then watch from the list's resourceVersion, resuming each watch where the last ended; list
//! again only when the API says the version is gone (410 or any error event) or a watch
//! cannot be started. What to do with each change is the caller's.

use std::future::Future;
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use kube::api::{ListParams, WatchEvent, WatchParams};

/// How long one watch request lasts before it is resumed from the last resourceVersion.
const WATCH_SECONDS: u32 = 290;

/// One change of the watched objects.
#[derive(Debug)]
pub enum Change<K> {
    /// A (re-)list: every object there is now.
    Listed(Vec<K>),
    /// Added or modified.
    Applied(K),
    Deleted(K),
}

/// Runs the loop for the `K`s matching `labels` (empty: all), handing each change to `sink`,
/// whose future answers whether to go on. `what` names the user in logs; `retry` is the wait
/// after a failed request.
pub async fn reflect<K, F, Fut>(
    api: kube::Api<K>,
    labels: &str,
    what: &'static str,
    retry: Duration,
    mut sink: F,
) where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + 'static,
    F: FnMut(Change<K>) -> Fut,
    Fut: Future<Output = bool>,
{
    let kind = K::kind(&()).to_string();
    let mut lp = ListParams::default();
    let mut wp = WatchParams::default().timeout(WATCH_SECONDS);
    if !labels.is_empty() {
        lp = lp.labels(labels);
        wp = wp.labels(labels);
    }
    loop {
        let list = match api.list(&lp).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(%kind, error = %e, "{what}: listing");
                tokio::time::sleep(retry).await;
                continue;
            }
        };
        let mut rv = list.metadata.resource_version.clone().unwrap_or_default();
        tracing::debug!(%kind, items = list.items.len(), %rv, "{what}: listed");
        if !sink(Change::Listed(list.items)).await {
            return;
        }
        'watch: loop {
            let mut stream = match api.watch(&wp, &rv).await {
                Ok(s) => s.boxed(),
                Err(e) => {
                    tracing::warn!(%kind, error = %e, "{what}: watching; listing again");
                    tokio::time::sleep(retry).await;
                    break 'watch;
                }
            };
            loop {
                let (obj, deleted) = match stream.try_next().await {
                    Ok(Some(WatchEvent::Added(o) | WatchEvent::Modified(o))) => (o, false),
                    Ok(Some(WatchEvent::Deleted(o))) => (o, true),
                    Ok(Some(WatchEvent::Bookmark(b))) => {
                        rv = b.metadata.resource_version;
                        continue;
                    }
                    Ok(Some(WatchEvent::Error(e))) => {
                        // 410 Gone: the version was compacted away.
                        tracing::info!(%kind, code = e.code, message = %e.message, "{what}: watch ended; listing again");
                        tokio::time::sleep(retry).await;
                        break 'watch;
                    }
                    // The watch timed out: resume from where it was.
                    Ok(None) => continue 'watch,
                    Err(e) => {
                        tracing::warn!(%kind, error = %e, "{what}: watch stream failed; resuming");
                        tokio::time::sleep(retry).await;
                        continue 'watch;
                    }
                };
                if let Some(v) = obj.meta().resource_version.clone() {
                    rv = v;
                }
                let change = if deleted {
                    Change::Deleted(obj)
                } else {
                    Change::Applied(obj)
                };
                if !sink(change).await {
                    return;
                }
            }
        }
    }
}
