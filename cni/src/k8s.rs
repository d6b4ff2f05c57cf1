//! Reading a pod's annotations from the Kubernetes API, with kube's client.
//!
//! Why kube and not a hand-made HTTP GET: a real cluster means TLS with the cluster's CA, and
//! kubeconfig credentials in any of their forms (client certificates, tokens, token files that
//! rotate, exec plugins) or the in-cluster service account. kube handles all of them, and
//! reef-ipam's Kubernetes datastore already brings it into this binary, so a second, partial
//! client would only add code. The client is built only when the config gives Kubernetes
//! access and the runtime names a pod; an ADD without either never starts it.
//!
//! Errors: a kubeconfig that cannot be read or used is invalid config (7) naming the field it
//! came from; an unreachable or overloaded API server (connect failure, timeout, 408, 429,
//! 5xx) is 11 (try again later); no such pod, or access refused, is reef's 110.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::error::Error;

/// A CNI ADD must not hang on a dead API server: the runtime times out the whole call, and
/// retries an ADD that answers 11.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Everything (kubeconfig, credentials, connect, answer) within this, whatever kube does.
const TOTAL_TIMEOUT: Duration = Duration::from_secs(8);

/// How to reach the API server, and which config field said so (for error messages).
#[derive(Debug, Clone, Copy)]
pub struct Access<'a> {
    /// `None`: `KUBECONFIG`, `~/.kube/config`, then the in-cluster service account.
    pub kubeconfig: Option<&'a Path>,
    /// e.g. `kubernetes.kubeconfig` or `nodeConfig datastore.kubernetes.kubeconfig`.
    pub field: &'a str,
}

/// The error and its causes on one line (kube's errors keep the useful part, such as
/// "Connection refused", in their sources).
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cause = c.source();
    }
    s
}

async fn config(access: Access<'_>) -> Result<kube::Config, Error> {
    let field = access.field;
    match access.kubeconfig {
        Some(p) => {
            let kc = Kubeconfig::read_from(p)
                .map_err(|e| Error::config(field, format!("{}: {}", p.display(), chain(&e))))?;
            kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(|e| Error::config(field, format!("{}: {}", p.display(), chain(&e))))
        }
        None => kube::Config::infer().await.map_err(|e| {
            Error::config(
                field,
                format!(
                    "no kubeconfig given, and none found (KUBECONFIG, ~/.kube/config, in-cluster service account): {}",
                    chain(&e)
                ),
            )
        }),
    }
}

/// Maps a failed GET to the plugin's errors (see the module doc).
fn get_error(pod: String, server: &str, e: kube::Error) -> Error {
    match e {
        kube::Error::Api(s) => match s.code {
            408 | 429 | 500..=599 => Error::TryAgainLater(format!(
                "Kubernetes API {server} answered {} {} reading pod {pod}: {}",
                s.code, s.reason, s.message
            )),
            404 => Error::PodUnavailable {
                pod,
                reason: format!("not found in the Kubernetes API {server}"),
            },
            401 | 403 => Error::PodUnavailable {
                pod,
                reason: format!(
                    "the Kubernetes API {server} refused access ({} {}: {}); the plugin's credentials need `get pods`",
                    s.code, s.reason, s.message
                ),
            },
            code => Error::PodUnavailable {
                pod,
                reason: format!(
                    "the Kubernetes API {server} answered {code} {}: {}",
                    s.reason, s.message
                ),
            },
        },
        e @ (kube::Error::HyperError(_) | kube::Error::Service(_)) => Error::TryAgainLater(
            format!("Kubernetes API {server} unreachable reading pod {pod}: {}", chain(&e)),
        ),
        other => Error::PodUnavailable {
            pod,
            reason: format!("reading it from {server}: {}", chain(&other)),
        },
    }
}

/// The annotations of pod `namespace/name`.
pub fn pod_annotations(
    access: Access<'_>,
    namespace: &str,
    name: &str,
) -> Result<BTreeMap<String, String>, Error> {
    // One request: a single-threaded runtime on this thread is enough.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| Error::Io {
            what: "start the Kubernetes client's runtime".into(),
            source,
        })?;
    let pod = format!("{namespace}/{name}");
    let read = async {
        let mut config = config(access).await?;
        config.connect_timeout = Some(CONNECT_TIMEOUT);
        config.read_timeout = Some(REQUEST_TIMEOUT);
        config.write_timeout = Some(REQUEST_TIMEOUT);
        // kube retries 429/503/504 up to 15 times with back-off growing to minutes; the
        // runtime's retry of the whole ADD (code 11) is the one that should happen.
        config.default_retry = false;
        // Plain HTTP (a local proxy) never verifies a certificate, but without roots of its
        // own the client loads every system root (~280 files, most of this call's time).
        if config.cluster_url.scheme_str() == Some("http")
            && config.root_cert.is_none()
            && config.root_cert_file.is_none()
        {
            config.root_cert = Some(Vec::new());
        }
        let server = config.cluster_url.to_string();
        let client = kube::Client::try_from(config).map_err(|e| {
            Error::config(
                access.field,
                format!("cannot build a client for {server}: {}", chain(&e)),
            )
        })?;
        let pods: Api<Pod> = Api::namespaced(client, namespace);
        // Metadata only: a pod's spec and status can be large and are not needed.
        let meta = pods
            .get_metadata(name)
            .await
            .map_err(|e| get_error(pod.clone(), &server, e))?;
        Ok(meta.metadata.annotations.unwrap_or_default())
    };
    rt.block_on(async {
        tokio::time::timeout(TOTAL_TIMEOUT, read)
            .await
            .unwrap_or_else(|_| {
                Err(Error::TryAgainLater(format!(
                    "reading pod {pod} from the Kubernetes API took over {} s",
                    TOTAL_TIMEOUT.as_secs()
                )))
            })
    })
}
