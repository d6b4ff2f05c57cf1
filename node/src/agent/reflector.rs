//! The list+watch loop behind the agent's Kubernetes caches (Service advertisement's
//! Services and EndpointSlices, the LoadBalancer controller's pools and Services, the BGP
//! password Secrets watched one by one by name): list once,
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

/// What a list+watch asks for: label and field selectors (empty: no restriction). A Role
/// that names objects (`resourceNames`) allows list and watch only with the field selector
/// `metadata.name=<one of them>`: the BGP Secrets are watched that way, one by one.
#[derive(Debug, Clone, Copy, Default)]
pub struct Selector<'a> {
    pub labels: &'a str,
    pub fields: &'a str,
}

/// Runs the loop for the `K`s matching `labels` (empty: all), handing each change to `sink`,
/// whose future answers whether to go on. `what` names the user in logs; `retry` is the wait
/// after a failed request.
pub async fn reflect<K, F, Fut>(
    api: kube::Api<K>,
    labels: &str,
    what: &'static str,
    retry: Duration,
    sink: F,
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
    let sel = Selector { labels, fields: "" };
    reflect_selected(api, sel, what, retry, sink, |_| ()).await
}

/// [`reflect`] with field selectors too, and `failed` told of every list or watch request
/// the API refused or that did not reach it (before the retry wait), for users that report
/// why they have nothing (a 403 names the Role to change).
pub async fn reflect_selected<K, F, Fut, E>(
    api: kube::Api<K>,
    sel: Selector<'_>,
    what: &'static str,
    retry: Duration,
    mut sink: F,
    mut failed: E,
) where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + 'static,
    F: FnMut(Change<K>) -> Fut,
    Fut: Future<Output = bool>,
    E: FnMut(&kube::Error),
{
    let kind = K::kind(&()).to_string();
    let mut lp = ListParams::default();
    let mut wp = WatchParams::default().timeout(WATCH_SECONDS);
    if !sel.labels.is_empty() {
        lp = lp.labels(sel.labels);
        wp = wp.labels(sel.labels);
    }
    if !sel.fields.is_empty() {
        lp = lp.fields(sel.fields);
        wp = wp.fields(sel.fields);
    }
    loop {
        let list = match api.list(&lp).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(%kind, error = %e, "{what}: listing");
                failed(&e);
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
                    failed(&e);
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
