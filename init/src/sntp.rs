//! Setting the clock at boot from the config's time servers (`[time] servers`): an SNTP
//! client (RFC 4330, client mode of RFC 5905) run once after the management interface is up
//! and before the data plane starts, since the handshake's timestamps must not go back (a
//! node whose clock was reset would have its initiations refused as replays). The clock is
//! stepped when it is off by more than [`STEP_OVER`].

use std::net::{SocketAddrV4, UdpSocket};
use std::time::{Duration, SystemTime};

/// Seconds between the NTP era (1900) and the Unix epoch (1970).
const NTP_UNIX: u64 = 2_208_988_800;
/// Offsets smaller than this are left alone.
pub const STEP_OVER: Duration = Duration::from_millis(500);
/// How long one server has to answer.
const WAIT: Duration = Duration::from_secs(1);

/// `t` as a 64-bit NTP timestamp.
pub fn to_ntp(t: SystemTime) -> u64 {
    let d = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    let secs = d.as_secs() + NTP_UNIX;
    let frac = (u64::from(d.subsec_nanos()) << 32) / 1_000_000_000;
    (secs << 32) | frac
}

/// A 64-bit NTP timestamp as seconds since the Unix epoch (negative before 1970).
pub fn from_ntp(ts: u64) -> f64 {
    let secs = (ts >> 32) as f64 - NTP_UNIX as f64;
    secs + (ts & 0xffff_ffff) as f64 / 4_294_967_296.0
}

/// A client request sent at `t1`.
pub fn request(t1: SystemTime) -> [u8; 48] {
    let mut p = [0u8; 48];
    p[0] = 0b00_100_011; // LI 0, version 4, mode 3 (client)
    p[40..48].copy_from_slice(&to_ntp(t1).to_be_bytes());
    p
}

/// What a server's answer says.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Answer {
    /// Seconds to add to the local clock.
    pub offset: f64,
    /// Round-trip delay, seconds.
    pub delay: f64,
    /// The server's stratum.
    pub stratum: u8,
}

/// Why an answer was not taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Not 48 bytes or more.
    #[error("not an NTP packet")]
    Short,
    /// Not a server's answer of version 3 or 4.
    #[error("not a server's answer")]
    NotServer,
    /// Stratum 0 (kiss-o'-death) or 16 (unsynchronised), or leap indicator 3.
    #[error("the server is not synchronised")]
    Unsynchronised,
    /// Its originate timestamp is not our request's.
    #[error("it does not answer our request")]
    NotOurs,
}

/// Reads a server's answer to the request sent at `t1` (NTP timestamp), received at `t4`.
pub fn answer(reply: &[u8], t1: u64, t4: SystemTime) -> Result<Answer, Refused> {
    if reply.len() < 48 {
        return Err(Refused::Short);
    }
    let (li, vn, mode) = (reply[0] >> 6, (reply[0] >> 3) & 7, reply[0] & 7);
    if mode != 4 || !(3..=4).contains(&vn) {
        return Err(Refused::NotServer);
    }
    let stratum = reply[1];
    if li == 3 || stratum == 0 || stratum >= 16 {
        return Err(Refused::Unsynchronised);
    }
    let ts = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&reply[at..at + 8]);
        u64::from_be_bytes(b)
    };
    if ts(24) != t1 {
        return Err(Refused::NotOurs);
    }
    let (t1, t2, t3) = (from_ntp(t1), from_ntp(ts(32)), from_ntp(ts(40)));
    let t4 = from_ntp(to_ntp(t4));
    Ok(Answer {
        offset: ((t2 - t1) + (t3 - t4)) / 2.0,
        delay: (t4 - t1) - (t3 - t2),
        stratum,
    })
}

/// Asks `server` once.
pub fn query(server: SocketAddrV4) -> Result<Answer, String> {
    let sock = UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(WAIT))
        .map_err(|e| e.to_string())?;
    let t1 = SystemTime::now();
    let req = request(t1);
    sock.send_to(&req, server).map_err(|e| e.to_string())?;
    let mut buf = [0u8; 512];
    loop {
        let (n, from) = sock.recv_from(&mut buf).map_err(|e| match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                format!("no answer within {} s", WAIT.as_secs())
            }
            _ => e.to_string(),
        })?;
        if from != std::net::SocketAddr::V4(server) {
            continue;
        }
        return answer(&buf[..n], to_ntp(t1), SystemTime::now()).map_err(|e| e.to_string());
    }
}

/// Steps the clock by `offset` seconds.
pub fn step(offset: f64) -> Result<(), String> {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_secs_f64();
    let target = now + offset;
    if target <= 0.0 {
        return Err("the server's time is before 1970".into());
    }
    let ts = nix::sys::time::TimeSpec::from(Duration::from_secs_f64(target));
    nix::time::clock_settime(nix::time::ClockId::CLOCK_REALTIME, ts).map_err(|e| e.to_string())
}

/// The clock's state after [`sync`], for the console, `status` and the data plane.
#[derive(Clone, Debug, PartialEq)]
pub enum Clock {
    /// No `[time] servers` configured.
    NoSource,
    /// Set from a server.
    Synchronised {
        /// The server.
        server: SocketAddrV4,
        /// What was added to the clock (0 when within [`STEP_OVER`]).
        stepped: f64,
        /// The server's stratum.
        stratum: u8,
    },
    /// No server answered usefully; why, per server.
    Unsynchronised(Vec<String>),
}

impl Clock {
    /// One line for the console.
    pub fn line(&self) -> String {
        match self {
            Clock::NoSource => {
                "time: no [time] servers configured; the clock is as the hardware had it".into()
            }
            Clock::Synchronised {
                server,
                stepped,
                stratum,
            } => format!(
                "time: synchronised from {server} (stratum {stratum}), clock stepped by {stepped:+.3} s"
            ),
            Clock::Unsynchronised(why) => format!(
                "time: WARNING clock NOT synchronised ({}); handshakes may be refused if it is behind",
                why.join("; ")
            ),
        }
    }

    /// Whether the clock came from a server.
    pub fn synchronised(&self) -> bool {
        matches!(self, Clock::Synchronised { .. })
    }
}

/// Asks each server in turn (three tries each) and steps the clock from the first good answer.
pub fn sync(servers: &[SocketAddrV4]) -> Clock {
    if servers.is_empty() {
        return Clock::NoSource;
    }
    let mut why = Vec::new();
    for &server in servers {
        let mut last = String::new();
        for _ in 0..3 {
            match query(server) {
                Ok(a) => {
                    let stepped = if a.offset.abs() > STEP_OVER.as_secs_f64() {
                        if let Err(e) = step(a.offset) {
                            why.push(format!("{server}: cannot set the clock: {e}"));
                            break;
                        }
                        a.offset
                    } else {
                        0.0
                    };
                    return Clock::Synchronised {
                        server,
                        stepped,
                        stratum: a.stratum,
                    };
                }
                Err(e) => last = e,
            }
        }
        if !last.is_empty() {
            why.push(format!("{server}: {last}"));
        }
    }
    Clock::Unsynchronised(why)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(t1: u64, t2: u64, t3: u64, stratum: u8) -> [u8; 48] {
        let mut p = [0u8; 48];
        p[0] = 0b00_100_100; // version 4, mode 4 (server)
        p[1] = stratum;
        p[24..32].copy_from_slice(&t1.to_be_bytes());
        p[32..40].copy_from_slice(&t2.to_be_bytes());
        p[40..48].copy_from_slice(&t3.to_be_bytes());
        p
    }

    #[test]
    fn timestamps_convert_both_ways() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_796_687_107_250);
        let n = to_ntp(t);
        assert_eq!(n >> 32, 1_796_687_107 + NTP_UNIX);
        assert!((from_ntp(n) - 1_796_687_107.25).abs() < 1e-6);
        let r = request(t);
        assert_eq!(r[0], 0x23);
        assert_eq!(&r[40..48], &n.to_be_bytes());
    }

    #[test]
    fn the_offset_is_computed_and_bad_answers_refused() {
        // Our clock says 2015; the server says 2026 (an RTC reset).
        let t1 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_420_070_400);
        let t4 = t1 + Duration::from_millis(20);
        let server = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_687_107);
        let (n1, n2) = (to_ntp(t1), to_ntp(server));
        let n3 = to_ntp(server + Duration::from_millis(1));
        let a = answer(&reply(n1, n2, n3, 2), n1, t4).unwrap();
        let expected = 1_796_687_107.0 - 1_420_070_400.0 - 0.0095;
        assert!((a.offset - expected).abs() < 0.001, "{a:?}");
        assert!((a.delay - 0.019).abs() < 0.001, "{a:?}");
        assert_eq!(a.stratum, 2);
        assert_eq!(answer(&[0; 47], n1, t4), Err(Refused::Short));
        assert_eq!(
            answer(&reply(n1, n2, n3, 0), n1, t4),
            Err(Refused::Unsynchronised)
        );
        assert_eq!(
            answer(&reply(n1, n2, n3, 16), n1, t4),
            Err(Refused::Unsynchronised)
        );
        assert_eq!(
            answer(&reply(n1 + 1, n2, n3, 2), n1, t4),
            Err(Refused::NotOurs)
        );
        let mut client = reply(n1, n2, n3, 2);
        client[0] = 0x23;
        assert_eq!(answer(&client, n1, t4), Err(Refused::NotServer));
    }

    #[test]
    fn a_server_that_does_not_answer_is_named() {
        // A bound socket that never answers.
        let quiet = UdpSocket::bind("127.0.0.1:0").unwrap();
        let std::net::SocketAddr::V4(addr) = quiet.local_addr().unwrap() else {
            panic!()
        };
        let c = sync(&[addr]);
        assert!(!c.synchronised());
        assert!(
            c.line().contains(&format!("{addr}: no answer within 1 s")),
            "{}",
            c.line()
        );
        assert_eq!(sync(&[]), Clock::NoSource);
    }
}
