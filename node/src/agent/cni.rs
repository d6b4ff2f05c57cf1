//! The CNI install task (`reef node run --install`): installs the CNI plugin, its config and
//! (Kubernetes) its credentials, then checks every `INSTALL_CHECK` that the files are still
//! there (putting back what went missing) and renews the plugin's token when it is due. The
//! install and the renewal ask the API server (the Node's addresses, a TokenRequest); done in
//! this task, a slow or hung API server delays only them, never the agent loop, which gets
//! the outcome on a watch (readiness, problems).
//!
//! ```text
//!  cni task ──install / check / renew token (API server, files)──▶
//!           watch<Report> ──▶ agent loop (readiness: install_missing; problems)
//! ```

use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;

use crate::install::InstallArgs;

/// How often the CNI install is checked (files put back) and retried after a failure.
const INSTALL_CHECK: Duration = Duration::from_secs(10);

/// The last install, check or renewal.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    /// The last install or check succeeded.
    pub done: bool,
    /// Why it did not (the problem the agent shows).
    pub problem: Option<String>,
}

/// Starts the task; it ends when the receiver is dropped.
pub fn spawn(args: InstallArgs) -> watch::Receiver<Report> {
    let (tx, rx) = watch::channel(Report::default());
    tokio::spawn(run(args, tx));
    rx
}

async fn run(args: InstallArgs, tx: watch::Sender<Report>) {
    let mut renew_at: Option<SystemTime> = None;
    let mut done = false;
    loop {
        let next = keep_installed(&args, &mut done, &mut renew_at, &tx).await;
        tokio::select! {
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(next)) => {}
            _ = tx.closed() => return,
        }
    }
}

/// Runs the CNI install when it has not succeeded yet or a file went missing, renews the
/// plugin's token when due, publishes the outcome and returns when to check next.
async fn keep_installed(
    args: &InstallArgs,
    done: &mut bool,
    renew_at: &mut Option<SystemTime>,
    tx: &watch::Sender<Report>,
) -> Instant {
    let mut next = Instant::now() + INSTALL_CHECK;
    let whole = !*done || !crate::install::missing(args).is_empty();
    let result = if whole {
        crate::install::install(args).await.map(|d| {
            for p in &d.written {
                tracing::info!(file = %p.display(), "CNI install: wrote");
            }
            *renew_at = d.renew_at;
        })
    } else if renew_at.is_some_and(|t| t <= SystemTime::now()) {
        crate::install::renew_token(args).await.map(|t| {
            tracing::info!("CNI install: renewed the plugin's token");
            *renew_at = Some(t);
        })
    } else {
        Ok(())
    };
    let problem = match result {
        Ok(()) => {
            *done = true;
            None
        }
        Err(e) => {
            let e = crate::causes(&e);
            tracing::warn!(error = %e, "CNI install");
            *done = false;
            Some(format!("CNI install: {e}"))
        }
    };
    // A token due before the next check is renewed when due, not up to a check late.
    if let Some(due) = renew_at.filter(|_| *done) {
        let left = due
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        next = next.min(Instant::now() + left);
    }
    let report = Report {
        done: *done,
        problem,
    };
    tx.send_if_modified(|r| {
        let changed = *r != report;
        *r = report;
        changed
    });
    next
}
