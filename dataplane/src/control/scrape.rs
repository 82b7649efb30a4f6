//! The metrics endpoint's HTTP server, run by the control thread's loop: non-blocking, a
//! bounded table of connections each with a deadline, so no client (an idle one, a slow
//! reader, a flood of connections) holds up signals, reloads or status.
//!
//! `GET /metrics` (or `/`) gets the text, `GET /status` the node's state as JSON
//! (docs/operations.md, "Status"), any other request 404, a request whose headers do not fit
//! 431. The whole request head is read before answering, so closing after the answer
//! never resets a connection with unread bytes.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

/// What a request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Page {
    /// The metrics, Prometheus text.
    Metrics,
    /// The node's state, JSON.
    Status,
}

/// Connections served at once; a new one past this closes the oldest (counted).
pub const MAX_CONNECTIONS: usize = 8;
/// How long a connection has for its request and the answer.
pub const DEADLINE: Duration = Duration::from_secs(5);
/// The longest request head read.
const HEAD_MAX: usize = 4096;
/// Connections accepted per turn, so a flood cannot keep the loop accepting.
const ACCEPTS_PER_TURN: usize = 64;

/// What the server has done since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScrapeStats {
    /// Requests answered (any status).
    pub answered: u64,
    /// Connections closed unanswered: to make room, or past their deadline.
    pub dropped: u64,
}

struct Conn {
    stream: TcpStream,
    since: Instant,
    head: Vec<u8>,
    /// The answer and how much of it is written; empty until the head is complete.
    out: Vec<u8>,
    sent: usize,
}

/// The endpoint: its listener and the connections being served.
pub struct Server {
    listener: TcpListener,
    conns: Vec<Conn>,
    stats: ScrapeStats,
}

impl Server {
    /// Serves on `listener` (made non-blocking).
    pub fn new(listener: TcpListener) -> std::io::Result<Self> {
        listener.set_nonblocking(true)?;
        Ok(Self {
            listener,
            conns: Vec::with_capacity(MAX_CONNECTIONS),
            stats: ScrapeStats::default(),
        })
    }

    /// The descriptors to poll, each with whether it waits to write (else to read): the
    /// listener and every connection.
    pub fn fds(&self) -> impl Iterator<Item = (BorrowedFd<'_>, bool)> {
        std::iter::once((self.listener.as_fd(), false)).chain(
            self.conns
                .iter()
                .map(|c| (c.stream.as_fd(), !c.out.is_empty())),
        )
    }

    /// Counters so far.
    pub fn stats(&self) -> ScrapeStats {
        self.stats
    }

    /// One turn of the loop, never blocking: accepts what is pending, reads what has come,
    /// answers complete requests (`body` renders the metrics), writes what the sockets take,
    /// and closes connections that are done or past their deadline at `now`.
    pub fn turn(&mut self, now: Instant, mut body: impl FnMut(Page) -> String) {
        for _ in 0..ACCEPTS_PER_TURN {
            let Ok((stream, _)) = self.listener.accept() else {
                break;
            };
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            if self.conns.len() == MAX_CONNECTIONS {
                // The oldest goes: a flood of idle connections cannot lock a scraper out for
                // longer than the flood lasts.
                self.conns.remove(0);
                self.stats.dropped += 1;
            }
            self.conns.push(Conn {
                stream,
                since: now,
                head: Vec::new(),
                out: Vec::new(),
                sent: 0,
            });
        }
        let stats = &mut self.stats;
        self.conns.retain_mut(|c| {
            let keep = c.step(&mut body, stats);
            if keep && now.duration_since(c.since) >= DEADLINE {
                stats.dropped += 1;
                return false;
            }
            keep
        });
    }
}

impl Conn {
    /// Reads and writes what the socket allows; false when the connection is finished with.
    fn step(&mut self, body: &mut impl FnMut(Page) -> String, stats: &mut ScrapeStats) -> bool {
        if self.out.is_empty() {
            let mut buf = [0u8; 1024];
            loop {
                match self.stream.read(&mut buf) {
                    Ok(0) => return false,
                    Ok(n) => {
                        let take = n.min(HEAD_MAX - self.head.len());
                        self.head.extend_from_slice(&buf[..take]);
                        if let Some(answer) = answer(&self.head, body) {
                            self.out = answer;
                            stats.answered += 1;
                            break;
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
                    Err(_) => return false,
                }
            }
        }
        while self.sent < self.out.len() {
            match self.stream.write(&self.out[self.sent..]) {
                Ok(0) => return false,
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
                Err(_) => return false,
            }
        }
        // What the client sent past the head (a 431's rest) is read and dropped first: closing
        // with unread bytes would reset the connection, perhaps before the answer arrives.
        let mut buf = [0u8; 4096];
        for _ in 0..16 {
            match self.stream.read(&mut buf) {
                Ok(n) if n > 0 => {}
                _ => break,
            }
        }
        let _ = self.stream.shutdown(Shutdown::Write);
        false
    }
}

/// The answer to a request head, once it is complete (or too long to be).
fn answer(head: &[u8], body: &mut impl FnMut(Page) -> String) -> Option<Vec<u8>> {
    let complete =
        head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n");
    if !complete {
        return (head.len() >= HEAD_MAX).then(|| {
            b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec()
        });
    }
    let page = if head.starts_with(b"GET /metrics ") || head.starts_with(b"GET / ") {
        Some((Page::Metrics, "text/plain; version=0.0.4"))
    } else if head.starts_with(b"GET /status ") {
        Some((Page::Status, "application/json"))
    } else {
        None
    };
    let text = if let Some((page, kind)) = page {
        let b = body(page);
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{b}",
            b.len()
        )
    } else {
        "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_owned()
    };
    Some(text.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server() -> (Server, std::net::SocketAddr) {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        (Server::new(l).expect("server"), addr)
    }

    /// Turns the server until `client` has read to its end; what it read.
    fn read_all(s: &mut Server, client: &mut TcpStream, body: &str) -> String {
        client.set_nonblocking(true).expect("nonblocking");
        let mut got = Vec::new();
        let mut buf = [0u8; 65536];
        let start = Instant::now();
        loop {
            s.turn(Instant::now(), |page| match page {
                Page::Metrics => body.to_owned(),
                Page::Status => "{\"node\":\"n\"}".to_owned(),
            });
            match client.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => panic!("read: {e}"),
            }
            assert!(start.elapsed() < Duration::from_secs(20), "no answer");
        }
        String::from_utf8(got).expect("text")
    }

    fn get(path: &str) -> Vec<u8> {
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n").into_bytes()
    }

    #[test]
    fn a_scrape_gets_the_text_and_other_paths_404() {
        let (mut s, addr) = server();
        let mut c = TcpStream::connect(addr).expect("connect");
        c.write_all(&get("/metrics")).expect("send");
        let r = read_all(&mut s, &mut c, "dwcp_up 1\n");
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(r.contains("Content-Length: 10\r\n"), "{r}");
        assert!(r.ends_with("\r\n\r\ndwcp_up 1\n"), "{r}");
        let mut c = TcpStream::connect(addr).expect("connect");
        c.write_all(&get("/status")).expect("send");
        let r = read_all(&mut s, &mut c, "dwcp_up 1\n");
        assert!(r.contains("Content-Type: application/json\r\n"), "{r}");
        assert!(r.ends_with("\r\n\r\n{\"node\":\"n\"}"), "{r}");
        let mut c = TcpStream::connect(addr).expect("connect");
        c.write_all(&get("/other")).expect("send");
        let r = read_all(&mut s, &mut c, "dwcp_up 1\n");
        assert!(r.starts_with("HTTP/1.1 404 Not Found\r\n"), "{r}");
        assert_eq!(s.stats().answered, 3);
        assert_eq!(s.stats().dropped, 0);
        assert_eq!(s.conns.len(), 0, "answered connections are closed");
    }

    #[test]
    fn a_request_in_pieces_is_answered_once_whole() {
        let (mut s, addr) = server();
        let mut c = TcpStream::connect(addr).expect("connect");
        let req = get("/metrics");
        c.write_all(&req[..7]).expect("send");
        let mut rendered = 0;
        for _ in 0..20 {
            s.turn(Instant::now(), |_| {
                rendered += 1;
                String::new()
            });
            std::thread::sleep(Duration::from_millis(2));
        }
        assert_eq!(rendered, 0, "answered before the request head was whole");
        assert_eq!(s.conns.len(), 1);
        c.write_all(&req[7..]).expect("send");
        let r = read_all(&mut s, &mut c, "x 1\n");
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
    }

    #[test]
    fn idle_connections_hold_nothing_up_and_make_room_for_a_scraper() {
        let (mut s, addr) = server();
        let idle: Vec<TcpStream> = (0..3 * MAX_CONNECTIONS)
            .map(|_| TcpStream::connect(addr).expect("connect"))
            .collect();
        let start = Instant::now();
        for _ in 0..5 {
            s.turn(Instant::now(), |_| String::new());
        }
        // The blocking server this replaces waited 500 ms per idle connection.
        assert!(
            start.elapsed() < Duration::from_millis(400),
            "turns took {:?} with idle connections",
            start.elapsed()
        );
        assert_eq!(s.conns.len(), MAX_CONNECTIONS);
        assert_eq!(s.stats().dropped, (2 * MAX_CONNECTIONS) as u64);
        let mut c = TcpStream::connect(addr).expect("connect");
        c.write_all(&get("/metrics")).expect("send");
        let r = read_all(&mut s, &mut c, "y 2\n");
        assert!(r.ends_with("y 2\n"), "{r}");
        drop(idle);
    }

    #[test]
    fn a_connection_past_its_deadline_is_closed_and_counted() {
        let (mut s, addr) = server();
        let mut c = TcpStream::connect(addr).expect("connect");
        c.write_all(b"GET /metr").expect("send");
        let t0 = Instant::now();
        for _ in 0..50 {
            s.turn(t0, |_| String::new());
            if !s.conns.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        assert_eq!(s.conns.len(), 1);
        s.turn(t0 + DEADLINE, |_| String::new());
        assert_eq!(s.conns.len(), 0);
        assert_eq!(s.stats().dropped, 1);
        let mut buf = [0u8; 16];
        assert_eq!(
            c.read(&mut buf).expect("eof"),
            0,
            "closed without an answer"
        );
    }

    #[test]
    fn a_slow_reader_gets_a_large_answer_whole() {
        let (mut s, addr) = server();
        let body: String = (0..200_000).map(|i| format!("m{i} {i}\n")).collect();
        let mut c = TcpStream::connect(addr).expect("connect");
        c.write_all(&get("/metrics")).expect("send");
        // The client reads nothing for a while: the socket buffers fill and writes would
        // block; turns must return meanwhile.
        for _ in 0..20 {
            let t = Instant::now();
            s.turn(Instant::now(), |_| body.clone());
            assert!(t.elapsed() < Duration::from_millis(200), "a turn blocked");
            std::thread::sleep(Duration::from_millis(2));
        }
        let r = read_all(&mut s, &mut c, &body);
        assert!(r.ends_with(&body), "{} of {} bytes", r.len(), body.len());
        assert_eq!(s.stats().answered, 1, "rendered once");
    }

    #[test]
    fn a_head_that_does_not_fit_gets_431() {
        let (mut s, addr) = server();
        let mut c = TcpStream::connect(addr).expect("connect");
        let mut req = b"GET /metrics HTTP/1.1\r\n".to_vec();
        req.extend(std::iter::repeat_n(b'a', HEAD_MAX));
        c.write_all(&req).expect("send");
        let r = read_all(&mut s, &mut c, "z 1\n");
        assert!(r.starts_with("HTTP/1.1 431 "), "{r}");
    }
}
