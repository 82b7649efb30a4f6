//! While the data plane is down in safe mode, init answers on the metrics address itself, so
//! `dwcp status` over the management network says why: `GET /status` gets the node's state
//! as JSON (the data plane's fields, `dataplane.state` = `safe_mode` with the reason),
//! `GET /metrics` a 503 (the scrape fails, as `up == 0` alerts expect), anything else 404.
//! One request at a time, each with 200 ms to arrive: init's loop is never held longer.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddrV4, TcpListener};
use std::os::fd::{AsFd, BorrowedFd};
use std::time::Duration;

/// The listener, while in safe mode.
pub struct SafeStatus {
    listener: TcpListener,
}

impl SafeStatus {
    /// Listens on `addr` (the config's `metrics.listen`).
    pub fn bind(addr: SocketAddrV4) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        Ok(Self { listener })
    }

    /// For init's poll.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.listener.as_fd()
    }

    /// Answers the connections waiting (`status` is the JSON to give).
    pub fn serve(&self, status: &str) {
        while let Ok((mut c, _)) = self.listener.accept() {
            let _ = c.set_nonblocking(false);
            let _ = c.set_read_timeout(Some(Duration::from_millis(200)));
            let _ = c.set_write_timeout(Some(Duration::from_millis(200)));
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 4096 {
                match c.read(&mut buf) {
                    Ok(n) if n > 0 => head.extend_from_slice(&buf[..n]),
                    _ => break,
                }
            }
            let _ = c.write_all(&answer(&head, status));
        }
    }
}

/// The answer to a request head.
pub fn answer(head: &[u8], status: &str) -> Vec<u8> {
    let reply = |code: &str, kind: &str, body: &str| {
        format!(
            "HTTP/1.1 {code}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    };
    if head.starts_with(b"GET /status ") {
        reply("200 OK", "application/json", status)
    } else if head.starts_with(b"GET /metrics ") || head.starts_with(b"GET / ") {
        reply(
            "503 Service Unavailable",
            "text/plain",
            "the data plane is down (safe mode): GET /status says why\n",
        )
    } else {
        reply("404 Not Found", "text/plain", "")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_is_served_and_metrics_are_unavailable() {
        let s = SafeStatus::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = s.listener.local_addr().unwrap();
        let ask = |path: &str| {
            let mut c = std::net::TcpStream::connect(addr).unwrap();
            c.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .unwrap();
            // The server side runs in this thread: serve, then read the answer.
            std::thread::sleep(Duration::from_millis(20));
            s.serve("{\"node\":\"n1\"}");
            let mut got = String::new();
            c.read_to_string(&mut got).unwrap();
            got
        };
        let got = ask("/status");
        assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
        assert!(got.ends_with("\r\n\r\n{\"node\":\"n1\"}"), "{got}");
        assert!(ask("/metrics").starts_with("HTTP/1.1 503 "));
        assert!(ask("/other").starts_with("HTTP/1.1 404 "));
    }
}
