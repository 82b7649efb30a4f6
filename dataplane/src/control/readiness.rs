//! Telling init the data plane is ready: one `READY=1` datagram to the socket init names in
//! `DWCP_NOTIFY_SOCKET` (the same idea as systemd's `sd_notify`).

use std::ffi::OsStr;
use std::os::unix::net::UnixDatagram;

/// The environment variable init sets.
pub const NOTIFY_ENV: &str = "DWCP_NOTIFY_SOCKET";

/// Sends `READY=1` if init asked for it. Returns whether a notification was sent.
pub fn notify_ready() -> std::io::Result<bool> {
    notify(std::env::var_os(NOTIFY_ENV).as_deref())
}

fn notify(path: Option<&OsStr>) -> std::io::Result<bool> {
    send(path, b"READY=1\n")
}

/// Sends one `STATUS=` line (the latest is what init's console `status` shows), if init asked
/// for notifications. Newlines in `line` are flattened. Never waits: when init's queue is full
/// the line is dropped (`WouldBlock`), as the next one, two seconds on, says it again.
pub fn notify_status(line: &str) -> std::io::Result<bool> {
    let msg = format!("STATUS={}\n", line.replace('\n', " "));
    send_now(std::env::var_os(NOTIFY_ENV).as_deref(), msg.as_bytes())
}

/// Sends one `ERROR=` line (why the data plane cannot start) before exiting with code 6.
pub fn notify_error(line: &str) -> std::io::Result<bool> {
    let msg = format!("ERROR={}\n", line.replace('\n', " "));
    send(std::env::var_os(NOTIFY_ENV).as_deref(), msg.as_bytes())
}

fn send(path: Option<&OsStr>, msg: &[u8]) -> std::io::Result<bool> {
    let Some(path) = path else { return Ok(false) };
    let sock = UnixDatagram::unbound()?;
    sock.send_to(msg, path)?;
    Ok(true)
}

/// [`send`], failing with `WouldBlock` instead of waiting for room in the receiver's queue.
fn send_now(path: Option<&OsStr>, msg: &[u8]) -> std::io::Result<bool> {
    let Some(path) = path else { return Ok(false) };
    let sock = UnixDatagram::unbound()?;
    sock.set_nonblocking(true)?;
    sock.send_to(msg, path)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_ready_to_the_named_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let server = UnixDatagram::bind(&path).unwrap();
        assert!(notify(Some(path.as_os_str())).unwrap());
        let mut buf = [0u8; 32];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\n");
        assert!(!notify(None).unwrap());
        assert!(notify(Some(dir.path().join("absent").as_os_str())).is_err());
    }

    /// An init that stops reading must not stop the control loop: status lines past what its
    /// queue holds are refused at once, not waited on.
    #[test]
    fn status_never_waits_on_a_full_queue() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let server = UnixDatagram::bind(&path).unwrap();
        let line = "x".repeat(2000);
        let msg = format!("STATUS={line}\n");
        let full = (0..100_000)
            .map(|_| send_now(Some(path.as_os_str()), msg.as_bytes()))
            .find_map(Result::err)
            .expect("the queue never filled");
        assert_eq!(full.kind(), std::io::ErrorKind::WouldBlock);
        // What was queued is whole.
        let mut buf = [0u8; 4096];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], msg.as_bytes());
    }
}
