//! The write side of one connection: a task that owns the socket's write half, sends the
//! urgent messages and KEEPALIVEs itself and drains the connection's merged outbound queue
//! ([`Outbound`]).
//!
//! Urgent messages (OPEN, KEEPALIVE, NOTIFICATION) always go first and are looked at again
//! between bulk chunks (whole UPDATEs of at most [`BULK_CHUNK`] octets, encoded from the
//! queue only when the socket has taken the previous one, so what waits stays merged).
//! The keepalive timer lives here, not in the session task, so it keeps ticking while the
//! session waits on a busy RIB, and a bulk flush can delay a KEEPALIVE by at most the time
//! one chunk takes to write (RFC 4271 §4.4: any message restarts the keepalive interval).
//!
//! Send hold timer (RFC 9687): when the socket takes nothing for the send hold time (the
//! negotiated hold time; [`fsm::LARGE_HOLD_TIME`] before that or when the hold time is 0),
//! the peer is not processing what we send. Its queue would otherwise wait forever while the
//! peer still sends KEEPALIVEs and so never times out on its side; the writer gives up, resets
//! the connection (RST: the unsent bytes are discarded) and reports [`SendHoldExpired`], on
//! which the session ends with Send Hold Timer Expired (8/0, RFC 9687 §3) and starts again
//! after its back-off. RFC 4271 §6.5's Hold Timer Expired is the receive-side twin of this.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{sleep_until, timeout, Instant};
use tracing::{warn, Instrument};

use super::outbound::Outbound;
use crate::fsm;
use crate::packet::{EncodeCxt, Family, Message};
use crate::rib::PeerUpdate;

/// Largest bulk chunk; the writer looks at the urgent queue and the keepalive timer between
/// two of them.
pub(crate) const BULK_CHUNK: usize = 64 * 1024;

/// A far-away instant standing for "no keepalive timer".
fn never() -> Instant {
    Instant::now() + Duration::from_secs(86400 * 365)
}

/// The peer took nothing we sent for the send hold time (RFC 9687).
#[derive(Debug, thiserror::Error)]
#[error("the peer took nothing we sent for {0:?} (send hold timer expired)")]
pub(crate) struct SendHoldExpired(pub Duration);

#[derive(Debug)]
pub(crate) enum Urgent {
    Msg(Bytes),
    /// Start sending KEEPALIVEs at this interval (Established / OpenConfirm).
    Keepalive(Duration),
    /// The send hold time of the session (its negotiated hold time).
    SendHold(Duration),
}

/// The queues of a running writer. Dropping it writes the urgent messages still queued,
/// drops queued bulk data and closes the write side.
#[derive(Debug)]
pub(crate) struct Writer {
    urgent: mpsc::UnboundedSender<Urgent>,
    bulk: Arc<Outbound>,
}

impl Writer {
    /// Spawns the writer task (in the current span); it ends on a write error (returned, and
    /// also sent on the oneshot so the session notices at once) or when closed.
    pub(crate) fn spawn(
        half: OwnedWriteHalf,
    ) -> (
        Writer,
        tokio::task::JoinHandle<std::io::Result<()>>,
        oneshot::Receiver<std::io::Error>,
    ) {
        let (utx, urx) = mpsc::unbounded_channel();
        let bulk = Arc::new(Outbound::default());
        let (ftx, frx) = oneshot::channel();
        let task = tokio::spawn(
            run(half, urx, Arc::clone(&bulk), ftx).instrument(tracing::Span::current()),
        );
        (Writer { urgent: utx, bulk }, task, frx)
    }

    pub(crate) fn urgent(&self, bytes: Bytes) {
        let _ = self.urgent.send(Urgent::Msg(bytes));
    }

    pub(crate) fn keepalive_every(&self, d: Duration) {
        let _ = self.urgent.send(Urgent::Keepalive(d));
    }

    pub(crate) fn send_hold(&self, d: Duration) {
        let _ = self.urgent.send(Urgent::SendHold(d));
    }

    /// Merges an Adj-RIB-Out delta into the queue.
    pub(crate) fn advertise(&self, u: &PeerUpdate, cxt: EncodeCxt) {
        self.bulk.push(u, cxt);
    }

    /// End-of-RIB for `families`, after everything queued so far.
    pub(crate) fn end_of_rib(&self, families: impl IntoIterator<Item = Family>, cxt: EncodeCxt) {
        self.bulk.end_of_rib(families, cxt);
    }

    /// Prefixes waiting in the queue.
    #[cfg(test)]
    pub(crate) fn queued(&self) -> usize {
        self.bulk.len()
    }
}

fn keepalive_bytes() -> Bytes {
    let mut b = BytesMut::with_capacity(19);
    // A KEEPALIVE is the bare header: encoding cannot fail.
    let _ = Message::Keepalive.encode(&EncodeCxt::default(), &mut b);
    b.freeze()
}

/// `write_all`, failing with [`SendHoldExpired`] when one write takes nothing for `hold`.
async fn write_timed(
    half: &mut OwnedWriteHalf,
    mut b: &[u8],
    hold: Duration,
) -> std::io::Result<()> {
    while !b.is_empty() {
        match timeout(hold, half.write(b)).await {
            Err(_) => return Err(std::io::Error::other(SendHoldExpired(hold))),
            Ok(Ok(0)) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(Ok(n)) => b = &b[n..],
            Ok(Err(e)) => return Err(e),
        }
    }
    Ok(())
}

async fn run(
    mut half: OwnedWriteHalf,
    urgent: mpsc::UnboundedReceiver<Urgent>,
    bulk: Arc<Outbound>,
    failed: oneshot::Sender<std::io::Error>,
) -> std::io::Result<()> {
    let Err(e) = drive(&mut half, urgent, &bulk).await else {
        return Ok(());
    };
    if e.get_ref().is_some_and(|i| i.is::<SendHoldExpired>()) {
        warn!("{e}: resetting the connection");
        // Abortive close: the bytes stuck in the send buffer are dropped, not left to the
        // kernel on an orphaned connection.
        let _ = socket2::SockRef::from(half.as_ref()).set_linger(Some(Duration::ZERO));
    }
    let copy = std::io::Error::new(e.kind(), e.to_string());
    // The session gets the error itself (it tells a send hold expiry from the rest).
    let _ = failed.send(e);
    Err(copy)
}

async fn drive(
    half: &mut OwnedWriteHalf,
    mut urgent: mpsc::UnboundedReceiver<Urgent>,
    bulk: &Outbound,
) -> std::io::Result<()> {
    let keepalive = keepalive_bytes();
    let large = Duration::from_secs(fsm::LARGE_HOLD_TIME.into());
    let mut interval: Option<Duration> = None;
    let mut hold = large;
    let mut next_ka = never();
    loop {
        let wrote = tokio::select! {
            biased;
            () = sleep_until(next_ka) => {
                write_timed(half, &keepalive, hold).await?;
                true
            }
            u = urgent.recv() => match u {
                Some(Urgent::Msg(b)) => {
                    write_timed(half, &b, hold).await?;
                    true
                }
                Some(Urgent::Keepalive(d)) => {
                    interval = Some(d).filter(|d| !d.is_zero());
                    // Starts (or stops) the interval now.
                    true
                }
                Some(Urgent::SendHold(d)) => {
                    hold = if d.is_zero() { large } else { d };
                    false
                }
                None => {
                    // The session let go: the urgent messages queued before (a NOTIFICATION)
                    // are out; bulk data still queued must not follow them.
                    half.shutdown().await?;
                    return Ok(());
                }
            },
            () = bulk.wait() => match bulk.next_chunk(BULK_CHUNK) {
                Some(chunk) => {
                    write_timed(half, &chunk, hold).await?;
                    true
                }
                // A wake-up for something already sent.
                None => false,
            },
        };
        if wrote {
            // Any message sent restarts the keepalive interval.
            next_ka = interval.map(|d| Instant::now() + d).unwrap_or_else(never);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::net::{IpAddr, Ipv4Addr};

    use ipnetwork::IpNetwork;
    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::attrs::{NextHop, PathAttributes};
    use crate::packet::{Families, PeerKind};
    use crate::rib::{self, Announcement, PeerId, Rib, RibConfig};
    use crate::speaker::outbound::tests::decode_stream;
    use crate::Asn;

    fn peer_id() -> PeerId {
        let mut rib = Rib::new(RibConfig::new(Asn(64512), Ipv4Addr::new(10, 0, 0, 1))).unwrap();
        let p = rib::PeerConfig::new(
            "10.0.0.2".parse().unwrap(),
            Asn(64512),
            crate::PeerType::Global,
        );
        rib.add_peer(p).unwrap()
    }

    fn cxt() -> EncodeCxt {
        EncodeCxt {
            four_octet_as: true,
            peer: PeerKind::Internal,
            families: Families::BOTH,
        }
    }

    fn attrs(nh: u8) -> Arc<PathAttributes> {
        Arc::new(PathAttributes {
            next_hop: Some(NextHop {
                address: IpAddr::from([10, 0, 0, nh]),
                link_local: None,
            }),
            local_pref: Some(100),
            ..PathAttributes::default()
        })
    }

    fn v4(i: u32) -> IpNetwork {
        IpNetwork::V4(ipnetwork::Ipv4Network::new((0x0a00_0000 + (i << 8)).into(), 24).unwrap())
    }

    /// A writer on one end of a loopback connection; the far end is returned to the test.
    /// `small` shrinks the far end's receive buffer (set before the handshake, so the window
    /// it offers stays small) and the writer's send buffer: on loopback the kernel would
    /// otherwise take megabytes before the writer ever waits.
    async fn writer_and_far_end(
        small: bool,
    ) -> (
        Writer,
        tokio::task::JoinHandle<std::io::Result<()>>,
        oneshot::Receiver<std::io::Error>,
        TcpStream,
    ) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = l.local_addr().unwrap();
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        if small {
            sock.set_recv_buffer_size(4096).unwrap();
        }
        let (far, near) = tokio::join!(sock.connect(a), l.accept());
        let near = near.unwrap().0;
        if small {
            socket2::SockRef::from(&near)
                .set_send_buffer_size(4096)
                .unwrap();
        }
        let (_rd, wr) = near.into_split();
        // The read half is dropped: the writer's side does not read, which is fine.
        let (w, task, failed) = Writer::spawn(wr);
        (w, task, failed, far.unwrap())
    }

    #[tokio::test]
    async fn bulk_chunks_hold_whole_messages_and_every_prefix() {
        let (writer, task, _failed, mut far) = writer_and_far_end(false).await;
        let prefixes: Vec<IpNetwork> = (0..20_000u32).map(v4).collect();
        let u = PeerUpdate {
            peer: peer_id(),
            withdraw: (20_000..21_000u32).map(v4).collect(),
            announce: vec![Announcement {
                attrs: attrs(1),
                prefixes,
            }],
        };
        writer.advertise(&u, cxt());
        writer.end_of_rib([Family::Ipv4Unicast], cxt());
        // Read until End-of-RIB; the stream must hold whole messages only.
        let mut all = Vec::new();
        let mut chunk = vec![0u8; 65536];
        let (seen, eor) = loop {
            let n = timeout(Duration::from_secs(10), far.read(&mut chunk))
                .await
                .expect("the writer sends everything")
                .unwrap();
            assert!(n > 0, "closed early");
            all.extend_from_slice(&chunk[..n]);
            let mut used = 0;
            while let Some(len) = crate::packet::frame(&all[used..]).unwrap() {
                used += len;
            }
            let (seen, eor) = decode_stream(&all[..used]);
            if !eor.is_empty() {
                break (seen, eor);
            }
        };
        drop(writer);
        task.await.unwrap().unwrap();
        assert_eq!(eor, vec![Family::Ipv4Unicast]);
        let announced = seen.iter().filter(|(_, nh)| nh.is_some()).count();
        assert_eq!((announced, seen.len() - announced), (20_000, 1000));
    }

    /// The peer does not read while 100,000 changes (100 per prefix) go to it: the queue never
    /// holds more than one entry per prefix, and once the peer reads, each prefix arrives in
    /// its final state after whatever the kernel's buffers held from before.
    #[tokio::test]
    async fn a_peer_that_does_not_read_gets_merged_changes_and_the_final_state() {
        let (writer, task, _failed, mut far) = writer_and_far_end(true).await;
        let sets = [attrs(1), attrs(2)];
        let mut last = HashMap::new();
        let mut max_queued = 0;
        for round in 0..100u32 {
            for i in 0..1000u32 {
                // Three states in turn: withdrawn, path 1, path 2.
                let state = (round + i) % 3;
                let mut u = PeerUpdate {
                    peer: peer_id(),
                    withdraw: Vec::new(),
                    announce: Vec::new(),
                };
                match state {
                    0 => u.withdraw.push(v4(i)),
                    s => u.announce.push(Announcement {
                        attrs: Arc::clone(&sets[s as usize - 1]),
                        prefixes: vec![v4(i)],
                    }),
                }
                writer.advertise(&u, cxt());
                last.insert(v4(i), state);
                max_queued = max_queued.max(writer.queued());
            }
            // Let the writer fill the socket meanwhile.
            tokio::task::yield_now().await;
        }
        assert!(
            max_queued <= 1000,
            "queued {max_queued} entries for 1,000 prefixes"
        );
        writer.end_of_rib([Family::Ipv4Unicast], cxt());
        let mut all = Vec::new();
        let mut chunk = vec![0u8; 65536];
        let seen = loop {
            let n = timeout(Duration::from_secs(10), far.read(&mut chunk))
                .await
                .expect("the writer sends everything once the peer reads")
                .unwrap();
            assert!(n > 0, "closed early");
            all.extend_from_slice(&chunk[..n]);
            let mut used = 0;
            while let Some(len) = crate::packet::frame(&all[used..]).unwrap() {
                used += len;
            }
            let (seen, eor) = decode_stream(&all[..used]);
            if !eor.is_empty() {
                break seen;
            }
        };
        drop(writer);
        task.await.unwrap().unwrap();
        // Without merging the peer would get all 100,000; what it gets beyond the final
        // 1,000 is what the socket buffers took before the queue started to merge.
        println!(
            "received {} prefix entries for 100,000 changes ({} bytes on the wire)",
            seen.len(),
            all.len()
        );
        assert!(
            seen.len() < 20_000,
            "{} entries reached the peer",
            seen.len()
        );
        let mut final_state = HashMap::new();
        for (p, nh) in &seen {
            final_state.insert(*p, *nh);
        }
        assert_eq!(final_state.len(), 1000);
        for (p, state) in last {
            let want = match state {
                0 => None,
                s => Some(IpAddr::from([10, 0, 0, s as u8])),
            };
            assert_eq!(final_state[&p], want, "{p}");
        }
    }

    #[tokio::test]
    async fn a_peer_that_takes_nothing_for_the_send_hold_time_is_reset() {
        let (writer, task, failed, mut far) = writer_and_far_end(true).await;
        writer.send_hold(Duration::from_secs(1));
        // More than the socket buffers hold: 200,000 prefixes.
        let u = PeerUpdate {
            peer: peer_id(),
            withdraw: Vec::new(),
            announce: vec![Announcement {
                attrs: attrs(1),
                prefixes: (0..200_000u32).map(v4).collect(),
            }],
        };
        let t0 = std::time::Instant::now();
        writer.advertise(&u, cxt());
        let e = timeout(Duration::from_secs(10), failed)
            .await
            .expect("the writer gives up")
            .expect("with an error");
        let waited = t0.elapsed();
        assert!(
            e.get_ref().is_some_and(|i| i.is::<SendHoldExpired>()),
            "{e}"
        );
        assert!(waited >= Duration::from_secs(1), "{waited:?}");
        assert!(task.await.unwrap().is_err());
        // The connection was reset, not closed in order: reading ends in an error (RST)
        // once the buffered bytes are read, not in a clean EOF after all 200,000.
        let mut buf = vec![0u8; 65536];
        let mut got = 0usize;
        let end = loop {
            match timeout(Duration::from_secs(5), far.read(&mut buf))
                .await
                .unwrap()
            {
                Ok(0) => break Ok(()),
                Ok(n) => got += n,
                Err(e) => break Err(e),
            }
        };
        assert!(got < 200_000 * 4, "read {got} bytes");
        assert!(end.is_err(), "expected a reset, got EOF after {got} bytes");
    }
}
