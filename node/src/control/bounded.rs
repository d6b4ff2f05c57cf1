//! The one accept loop behind the agent's two local endpoints (the control socket and HTTP):
//! one request in, one answer out, with the bounds a listener that others can reach needs.
//!
//! ```text
//!  listener ──accept──▶ permit? ──no──▶ closed at once (a flood cannot queue a probe behind it)
//!     │ error            │ yes
//!     ▼                  ▼
//!  wait 100 ms → 1 s   connection task, one deadline for all of it:
//!  (EMFILE leaves the    read ≤ max_request bytes until the terminator
//!   backlog readable:    ─▶ answer(Request) (pure, the endpoint's) ─▶ write, shut down,
//!   retrying at once     drain ≤ max_request bytes until the client closes
//!   spins a core)
//! ```
//!
//! Memory is bounded by `max_connections × max_request`, time by `deadline`, CPU at the
//! open-file limit by the back-off.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

/// The bounds of one endpoint.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once; one more is closed as soon as it is accepted.
    pub max_connections: usize,
    /// For a whole connection: reading the request, writing the answer, the closing drain.
    pub deadline: Duration,
    /// The longest request; a longer one gets the endpoint's answer to `Request::TooLarge`.
    pub max_request: usize,
    /// What ends a request (any of them), e.g. an empty line for HTTP.
    pub terminators: &'static [&'static [u8]],
}

/// What the endpoint is asked to answer.
#[derive(Debug, PartialEq, Eq)]
pub enum Request<'a> {
    /// The request up to and including its terminator.
    Complete(&'a [u8]),
    /// `max_request` bytes came without a terminator; these are they.
    TooLarge(&'a [u8]),
}

/// A listening socket the loop can accept from (a trait so tests can inject accept errors).
pub trait Listener: Send + 'static {
    type Conn: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn accept(&self) -> impl Future<Output = io::Result<Self::Conn>> + Send;
}

impl Listener for TcpListener {
    type Conn = TcpStream;
    async fn accept(&self) -> io::Result<TcpStream> {
        TcpListener::accept(self).await.map(|(s, _)| s)
    }
}

impl Listener for UnixListener {
    type Conn = UnixStream;
    async fn accept(&self) -> io::Result<UnixStream> {
        UnixListener::accept(self).await.map(|(s, _)| s)
    }
}

/// Serves `listener` until the returned task is aborted; `answer` turns a request into the
/// bytes sent back (nothing is sent to a client that closes before a whole request).
pub fn spawn<L, A>(endpoint: &'static str, listener: L, limits: Limits, answer: A) -> JoinHandle<()>
where
    L: Listener,
    A: Fn(Request<'_>) -> Vec<u8> + Send + Sync + 'static,
{
    let answer = Arc::new(answer);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    tokio::spawn(async move {
        let mut backoff = Backoff::default();
        loop {
            let conn = match listener.accept().await {
                Ok(c) => {
                    backoff.reset();
                    c
                }
                // The client gave up before we took its connection: nothing wrong here.
                Err(e) if about_one_connection(&e) => continue,
                Err(e) => {
                    let wait = backoff.next();
                    tracing::warn!(endpoint, error = %e, ?wait, "accept failed; waiting before the next");
                    tokio::time::sleep(wait).await;
                    continue;
                }
            };
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                tracing::debug!(
                    endpoint,
                    max = limits.max_connections,
                    "too many connections; closing a new one"
                );
                continue;
            };
            let answer = answer.clone();
            tokio::spawn(async move {
                let _permit = permit;
                match tokio::time::timeout(limits.deadline, exchange(conn, &limits, &*answer)).await
                {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::debug!(endpoint, error = %e, "client"),
                    Err(_) => {
                        tracing::debug!(endpoint, deadline = ?limits.deadline, "client too slow; closed")
                    }
                }
            });
        }
    })
}

fn about_one_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
    )
}

/// The wait after an accept error: 100 ms, doubling up to 1 s, from the start again after an
/// accept succeeds.
#[derive(Debug, Default)]
struct Backoff(Option<Duration>);

const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

impl Backoff {
    fn next(&mut self) -> Duration {
        let d = self.0.map_or(BACKOFF_FIRST, |d| (d * 2).min(BACKOFF_MAX));
        self.0 = Some(d);
        d
    }

    fn reset(&mut self) {
        self.0 = None;
    }
}

async fn exchange<C, A>(mut conn: C, limits: &Limits, answer: &A) -> io::Result<()>
where
    C: AsyncRead + AsyncWrite + Unpin,
    A: Fn(Request<'_>) -> Vec<u8> + ?Sized,
{
    let mut buf = vec![0u8; limits.max_request];
    let longest = limits
        .terminators
        .iter()
        .map(|t| t.len())
        .max()
        .unwrap_or(1);
    let mut n = 0;
    let request = loop {
        if n == buf.len() {
            break Request::TooLarge(&buf[..]);
        }
        let got = conn.read(&mut buf[n..]).await?;
        if got == 0 {
            return Ok(());
        }
        // Only the new bytes (and a terminator's worth before them) are searched: a client
        // sending one byte at a time costs linear, not quadratic, work.
        let from = n.saturating_sub(longest - 1);
        n += got;
        if let Some(end) = find_end(&buf[from..n], limits.terminators) {
            break Request::Complete(&buf[..from + end]);
        }
    };
    let reply = answer(request);
    conn.write_all(&reply).await?;
    conn.shutdown().await?;
    // Closing a TCP socket with unread bytes sends a reset, which can destroy the answer still
    // in flight; so read (and drop) what the client still sends, a bounded amount, until it
    // closes. The deadline ends a client that neither closes nor stops.
    let mut left = limits.max_request;
    while left > 0 {
        let got = conn.read(&mut buf[..left]).await?;
        if got == 0 {
            break;
        }
        left -= got;
    }
    Ok(())
}

/// The length of the request in `b` up to and including the first terminator.
fn find_end(b: &[u8], terminators: &[&[u8]]) -> Option<usize> {
    (0..b.len()).find_map(|i| {
        terminators
            .iter()
            .find(|t| b[i..].starts_with(t))
            .map(|t| i + t.len())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Instant;

    const LINE: Limits = Limits {
        max_connections: 4,
        deadline: Duration::from_millis(500),
        max_request: 16,
        terminators: &[b"\n"],
    };

    fn echo(r: Request<'_>) -> Vec<u8> {
        match r {
            Request::Complete(b) => [b"ok ", b].concat(),
            Request::TooLarge(b) => format!("too large after {}\n", b.len()).into_bytes(),
        }
    }

    #[test]
    fn terminators_are_found_across_reads_and_first_wins() {
        assert_eq!(
            find_end(b"GET / HTTP/1.1\r\n\r\nrest", &[b"\n\n", b"\n\r\n"]),
            Some(18)
        );
        assert_eq!(find_end(b"a\n\nb\r\n\r\n", &[b"\n\n", b"\n\r\n"]), Some(3));
        assert_eq!(find_end(b"no end\r\n", &[b"\n\n", b"\n\r\n"]), None);
    }

    #[test]
    fn backoff_doubles_to_a_second_and_starts_over_after_success() {
        let mut b = Backoff::default();
        let waits: Vec<_> = (0..6).map(|_| b.next().as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1000, 1000]);
        b.reset();
        assert_eq!(b.next(), BACKOFF_FIRST);
    }

    async fn local() -> (TcpListener, std::net::SocketAddr) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = l.local_addr().unwrap();
        (l, a)
    }

    async fn ask(addr: std::net::SocketAddr, req: &[u8]) -> Vec<u8> {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(req).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
            .await
            .expect("an answer within 5 s")
            .unwrap();
        out
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn security_a_request_one_byte_at_a_time_is_answered_and_a_long_one_is_cut() {
        let (l, addr) = local().await;
        let task = spawn("test", l, LINE, echo);
        let mut s = TcpStream::connect(addr).await.unwrap();
        for b in b"hi\n" {
            s.write_all(&[*b]).await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, b"ok hi\n");
        assert_eq!(ask(addr, &[b'x'; 40]).await, b"too large after 16\n");
        task.abort();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn security_connections_over_the_cap_are_closed_at_once_and_idle_ones_at_the_deadline() {
        let (l, addr) = local().await;
        let task = spawn("test", l, LINE, echo);
        let mut idle = Vec::new();
        for _ in 0..LINE.max_connections {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        // Every slot is held: one more connection is closed without an answer, at once.
        let t0 = Instant::now();
        let mut extra = TcpStream::connect(addr).await.unwrap();
        let _ = extra.write_all(b"hi\n").await;
        let mut out = Vec::new();
        let _ = extra.read_to_end(&mut out).await;
        assert!(out.is_empty(), "{out:?}");
        assert!(t0.elapsed() < LINE.deadline, "{:?}", t0.elapsed());
        // The idle ones are closed at the deadline, and the slots are free again.
        for mut s in idle {
            let mut b = [0u8; 1];
            let r = tokio::time::timeout(LINE.deadline * 4, s.read(&mut b)).await;
            assert!(matches!(r, Ok(Ok(0)) | Ok(Err(_))), "{r:?}");
        }
        assert_eq!(ask(addr, b"hi\n").await, b"ok hi\n");
        task.abort();
    }

    /// A listener at the open-file limit: every accept fails with EMFILE (like tokio's, it is
    /// ready again at once).
    struct Exhausted(Arc<AtomicUsize>);

    impl Listener for Exhausted {
        type Conn = TcpStream;
        async fn accept(&self) -> io::Result<TcpStream> {
            self.0.fetch_add(1, Ordering::Relaxed);
            tokio::task::yield_now().await;
            Err(io::Error::from_raw_os_error(libc::EMFILE))
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn security_accept_errors_back_off_instead_of_spinning() {
        let calls = Arc::new(AtomicUsize::new(0));
        let task = spawn("test", Exhausted(calls.clone()), LINE, echo);
        tokio::time::sleep(Duration::from_secs(1)).await;
        task.abort();
        let n = calls.load(Ordering::Relaxed);
        // 0, 100, 300, 700 ms: four tries in the first second (the first one at once).
        assert!((1..=5).contains(&n), "{n} accept calls in 1 s");
    }
}
