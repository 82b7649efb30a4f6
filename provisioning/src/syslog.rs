//! Log shipping shared by init and the data plane (`[logging] remote`): each line as one RFC
//! 5424 syslog message to a collector on the management network, by UDP or by TCP with RFC
//! 6587 octet counting. Sending never waits: sockets are non-blocking, a line the socket does
//! not take at once is dropped and counted, and at most [`RATE`] lines a second leave (the
//! console keeps every line).

use std::io::Write as _;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant, SystemTime};

use crate::types::SyslogRemote;

/// Most lines a second a process ships; more are dropped and counted.
pub const RATE: u32 = 100;

/// Syslog severities used (RFC 5424, section 6.2.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    /// 3: an error.
    Error = 3,
    /// 4: a warning.
    Warning = 4,
    /// 6: informational.
    Info = 6,
}

/// Facility `daemon` (3).
const FACILITY: u8 = 3;

/// `t` as RFC 3339 in UTC with milliseconds, e.g. `2026-12-07T23:45:07.123Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    let secs = d.as_secs();
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// One RFC 5424 message: `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID - - MSG`. Header fields
/// are printable ASCII without spaces (anything else becomes `_`, an empty one `-`).
pub fn format(
    severity: Severity,
    time: SystemTime,
    hostname: &str,
    app: &str,
    pid: u32,
    msg: &str,
) -> String {
    let field = |s: &str, max: usize| {
        let f: String = s
            .chars()
            .take(max)
            .map(|c| if c.is_ascii_graphic() { c } else { '_' })
            .collect();
        if f.is_empty() { "-".to_owned() } else { f }
    };
    format!(
        "<{}>1 {} {} {} {pid} - - {}",
        FACILITY * 8 + severity as u8,
        rfc3339(time),
        field(hostname, 255),
        field(app, 48),
        msg.replace(['\n', '\r'], " ")
    )
}

/// Sends lines to the collector, never waiting.
pub struct Shipper {
    remote: SyslogRemote,
    hostname: String,
    app: String,
    udp: Option<UdpSocket>,
    tcp: Option<TcpStream>,
    /// The current second's start and the lines sent in it.
    window: (Instant, u32),
    /// Lines not shipped: over the rate, or not taken by the socket at once.
    pub dropped: u64,
    /// Lines shipped.
    pub sent: u64,
}

impl Shipper {
    /// A shipper for `remote`, naming this node `hostname` and the program `app`.
    pub fn new(remote: SyslogRemote, hostname: &str, app: &str) -> Self {
        Self {
            remote,
            hostname: hostname.to_owned(),
            app: app.to_owned(),
            udp: None,
            tcp: None,
            window: (Instant::now(), 0),
            dropped: 0,
            sent: 0,
        }
    }

    /// Ships one line (the console has it already); counts it as dropped when over the rate
    /// or when the socket cannot take it now.
    pub fn ship(&mut self, severity: Severity, line: &str) {
        let now = Instant::now();
        if now.duration_since(self.window.0) >= Duration::from_secs(1) {
            self.window = (now, 0);
        }
        if self.window.1 >= RATE {
            self.dropped += 1;
            return;
        }
        self.window.1 += 1;
        let msg = format(
            severity,
            SystemTime::now(),
            &self.hostname,
            &self.app,
            std::process::id(),
            line,
        );
        if self.send(&msg) {
            self.sent += 1;
        } else {
            self.dropped += 1;
        }
    }

    fn send(&mut self, msg: &str) -> bool {
        let to = SocketAddr::V4(self.remote.addr);
        if !self.remote.tcp {
            if self.udp.is_none() {
                self.udp = UdpSocket::bind("0.0.0.0:0")
                    .and_then(|s| s.set_nonblocking(true).map(|()| s))
                    .ok();
            }
            return self
                .udp
                .as_ref()
                .is_some_and(|s| s.send_to(msg.as_bytes(), to).is_ok());
        }
        if self.tcp.is_none() {
            // A short connect, once per failure; the data path never logs, so this only
            // delays init's or the control thread's next line by at most 200 ms.
            self.tcp = TcpStream::connect_timeout(&to, Duration::from_millis(200))
                .and_then(|s| s.set_nonblocking(true).map(|()| s))
                .ok();
        }
        let framed = format!("{} {msg}", msg.len());
        let ok = self
            .tcp
            .as_mut()
            .is_some_and(|s| s.write(framed.as_bytes()).is_ok_and(|n| n == framed.len()));
        if !ok {
            self.tcp = None;
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_796_687_107_123);
        assert_eq!(rfc3339(t), "2026-12-07T23:45:07.123Z");
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn a_message_has_the_rfc5424_header() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_687_107);
        assert_eq!(
            format(
                Severity::Info,
                t,
                "site-a-gw",
                "dwcp-dataplane",
                97,
                "ready\nnow"
            ),
            "<30>1 2026-12-07T23:45:07.000Z site-a-gw dwcp-dataplane 97 - - ready now"
        );
        assert!(format(Severity::Error, t, "", "a b", 1, "x").starts_with("<27>1 "));
        assert!(format(Severity::Error, t, "", "a b", 1, "x").contains(" - a_b 1 - - x"));
    }

    #[test]
    fn lines_reach_a_udp_collector_within_the_rate() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let std::net::SocketAddr::V4(addr) = rx.local_addr().unwrap() else {
            panic!()
        };
        let mut s = Shipper::new(SyslogRemote { tcp: false, addr }, "n1", "test");
        for i in 0..RATE + 5 {
            s.ship(Severity::Info, &format!("line {i}"));
        }
        assert_eq!(s.sent, u64::from(RATE));
        assert_eq!(s.dropped, 5, "over the rate");
        let mut buf = [0u8; 512];
        let n = rx.recv(&mut buf).unwrap();
        let got = std::str::from_utf8(&buf[..n]).unwrap();
        assert!(
            got.starts_with("<30>1 ") && got.contains(" n1 test "),
            "{got}"
        );
        assert!(got.ends_with(" - - line 0"), "{got}");
    }

    #[test]
    fn tcp_lines_are_octet_counted_and_a_missing_collector_is_counted() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let std::net::SocketAddr::V4(addr) = l.local_addr().unwrap() else {
            panic!()
        };
        let mut s = Shipper::new(SyslogRemote { tcp: true, addr }, "n1", "test");
        s.ship(Severity::Warning, "hello");
        let (mut c, _) = l.accept().unwrap();
        c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut buf = [0u8; 512];
        let n = std::io::Read::read(&mut c, &mut buf).unwrap();
        let got = std::str::from_utf8(&buf[..n]).unwrap();
        let (len, msg) = got.split_once(' ').unwrap();
        assert_eq!(len.parse::<usize>().unwrap(), msg.len(), "{got}");
        assert!(
            msg.starts_with("<28>1 ") && msg.ends_with(" - - hello"),
            "{got}"
        );
        drop(l);
        // Nothing listening: dropped and counted, no wait beyond the connect's.
        let closed = SyslogRemote {
            tcp: true,
            addr: "127.0.0.1:9".parse().unwrap(),
        };
        let mut s = Shipper::new(closed, "n1", "test");
        s.ship(Severity::Info, "lost");
        assert_eq!((s.sent, s.dropped), (0, 1));
    }
}
