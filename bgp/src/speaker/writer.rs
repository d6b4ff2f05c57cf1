//! The write side of one connection: a task that owns the socket's write half, takes
//! messages from two queues and sends KEEPALIVEs itself.
//!
//! Urgent messages (OPEN, KEEPALIVE, NOTIFICATION) always go first and are looked at again
//! between bulk values (packed UPDATEs, whole messages of at most [`BULK_CHUNK`] octets).
//! The keepalive timer lives here, not in the session task, so it keeps ticking while the
//! session waits on a busy RIB, and a bulk flush can delay a KEEPALIVE by at most the time
//! one chunk takes to write (RFC 4271 §4.4: any message restarts the keepalive interval).

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};

use crate::packet::{EncodeCxt, Message};

/// Largest bulk value the session hands in; the writer looks at the urgent queue and the
/// keepalive timer between two of them.
pub(crate) const BULK_CHUNK: usize = 64 * 1024;

/// A far-away instant standing for "no keepalive timer".
fn never() -> Instant {
    Instant::now() + Duration::from_secs(86400 * 365)
}

#[derive(Debug)]
pub(crate) enum Urgent {
    Msg(Bytes),
    /// Start sending KEEPALIVEs at this interval (Established / OpenConfirm).
    Keepalive(Duration),
}

/// The queues of a running writer. Dropping it writes the urgent messages still queued,
/// drops queued bulk data and closes the write side.
#[derive(Debug)]
pub(crate) struct Writer {
    urgent: mpsc::UnboundedSender<Urgent>,
    bulk: mpsc::UnboundedSender<Bytes>,
}

impl Writer {
    /// Spawns the writer task; it ends on a write error (returned) or when closed.
    pub(crate) fn spawn(
        half: OwnedWriteHalf,
    ) -> (Writer, tokio::task::JoinHandle<std::io::Result<()>>) {
        let (utx, urx) = mpsc::unbounded_channel();
        let (btx, brx) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(half, urx, brx));
        (
            Writer {
                urgent: utx,
                bulk: btx,
            },
            task,
        )
    }

    pub(crate) fn urgent(&self, bytes: Bytes) {
        let _ = self.urgent.send(Urgent::Msg(bytes));
    }

    pub(crate) fn keepalive_every(&self, d: Duration) {
        let _ = self.urgent.send(Urgent::Keepalive(d));
    }

    pub(crate) fn bulk(&self, bytes: Bytes) {
        if !bytes.is_empty() {
            let _ = self.bulk.send(bytes);
        }
    }
}

fn keepalive_bytes() -> Bytes {
    let mut b = BytesMut::with_capacity(19);
    // A KEEPALIVE is the bare header: encoding cannot fail.
    let _ = Message::Keepalive.encode(&EncodeCxt::default(), &mut b);
    b.freeze()
}

async fn run(
    mut half: OwnedWriteHalf,
    mut urgent: mpsc::UnboundedReceiver<Urgent>,
    mut bulk: mpsc::UnboundedReceiver<Bytes>,
) -> std::io::Result<()> {
    let keepalive = keepalive_bytes();
    let mut interval: Option<Duration> = None;
    let mut next_ka = never();
    let mut bulk_open = true;
    loop {
        tokio::select! {
            biased;
            () = sleep_until(next_ka) => {
                half.write_all(&keepalive).await?;
            }
            u = urgent.recv() => match u {
                Some(Urgent::Msg(b)) => half.write_all(&b).await?,
                Some(Urgent::Keepalive(d)) => {
                    interval = Some(d).filter(|d| !d.is_zero());
                }
                None => {
                    // The session let go: the urgent messages queued before (a NOTIFICATION)
                    // are out; bulk data still queued must not follow them.
                    half.shutdown().await?;
                    return Ok(());
                }
            },
            b = bulk.recv(), if bulk_open => match b {
                Some(b) => half.write_all(&b).await?,
                None => bulk_open = false,
            },
        }
        // Any message sent restarts the keepalive interval.
        next_ka = interval.map(|d| Instant::now() + d).unwrap_or_else(never);
    }
}
