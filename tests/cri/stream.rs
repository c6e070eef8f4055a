//! A blocking client of CRI's streaming server (containerd's, behind the
//! URL that `Exec` answers): kubelet's remotecommand protocol over a
//! WebSocket, subprotocol `v4.channel.k8s.io`.
//!
//! - Every binary message's first byte is its channel: 0 stdin (client →
//!   server), 1 stdout, 2 stderr, 3 the error channel, 4 resize (client →
//!   server, JSON `{"Width":W,"Height":H}`).
//! - v4's error channel carries one `metav1.Status` JSON when the process
//!   ended: `{"metadata":{},"status":"Success"}` for exit 0; otherwise
//!   `"status":"Failure"`, with `reason` `NonZeroExitCode` and
//!   `details.causes[{"reason":"ExitCode","message":"N"}]` for exit N, or
//!   without a cause when the exec itself failed. The server then closes
//!   the connection.
//! - v4 cannot close stdin on its own (v5's `CLOSE` message is newer than
//!   containerd 1.6's streaming server): a command fed stdin here must end
//!   without reading its EOF (`read x`, `head -c N`).

use super::ExecOutput;
use std::io;
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};
use tungstenite::client::IntoClientRequest;
use tungstenite::http::HeaderValue;
use tungstenite::Message;

/// The subprotocol asked for (and required of the server's answer).
pub const V4_CHANNEL_PROTOCOL: &str = "v4.channel.k8s.io";

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;

/// How long one blocking read waits before the deadline is looked at.
const READ_SLICE: Duration = Duration::from_millis(200);

/// What [`stream_exec`] sends once connected.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamInput {
    /// Written to the process's stdin (the `Exec` request must have had
    /// `stdin: true`). It is never closed: see the module docs.
    pub stdin: Option<Vec<u8>>,
    /// A terminal size (columns, rows) sent on the resize channel before
    /// stdin (a `tty: true` exec).
    pub tty_size: Option<(u16, u16)>,
}

/// Runs the exec behind the streaming `url` (`http://host:port/exec/<token>`
/// from `Exec`): connects, upgrades to a WebSocket, sends `input`, and
/// collects stdout and stderr until the status arrives and the server
/// closes. The whole exchange is bounded by `timeout`; the error then
/// says what had arrived.
pub fn stream_exec(url: &str, input: &StreamInput, timeout: Duration) -> io::Result<ExecOutput> {
    let end = Instant::now() + timeout;
    let ws_url = url
        .strip_prefix("http://")
        .map(|rest| format!("ws://{rest}"))
        .ok_or_else(|| io::Error::other(format!("{url}: not an http:// streaming URL")))?;
    let mut req = ws_url
        .as_str()
        .into_client_request()
        .map_err(|e| io::Error::other(format!("{url}: {e}")))?;
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static(V4_CHANNEL_PROTOCOL),
    );
    let host = req.uri().host().unwrap_or_default().to_string();
    let port = req.uri().port_u16().unwrap_or(80);
    let addr = (host.as_str(), port)
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::other(format!("{url}: no address for {host}")))?;
    let tcp = TcpStream::connect_timeout(&addr, timeout)?;
    // The upgrade is bounded by the whole timeout; then reads wake up
    // every READ_SLICE to look at the deadline.
    tcp.set_read_timeout(Some(timeout))?;
    tcp.set_write_timeout(Some(timeout))?;
    let (mut ws, resp) = tungstenite::client(req, tcp)
        .map_err(|e| io::Error::other(format!("WebSocket upgrade of {url}: {e}")))?;
    let proto = resp
        .headers()
        .get("Sec-WebSocket-Protocol")
        .and_then(|v| v.to_str().ok());
    if proto != Some(V4_CHANNEL_PROTOCOL) {
        return Err(io::Error::other(format!(
            "{url}: the server chose subprotocol {proto:?}, not {V4_CHANNEL_PROTOCOL}"
        )));
    }
    ws.get_ref().set_read_timeout(Some(READ_SLICE))?;
    let ws_err = |what: &str, e: tungstenite::Error| io::Error::other(format!("{what}: {e}"));
    if let Some((cols, rows)) = input.tty_size {
        let size = serde_json::json!({ "Width": cols, "Height": rows }).to_string();
        ws.send(Message::binary(framed(RESIZE, size.as_bytes())))
            .map_err(|e| ws_err("sending the terminal size", e))?;
    }
    if let Some(data) = &input.stdin {
        ws.send(Message::binary(framed(STDIN, data)))
            .map_err(|e| ws_err("sending stdin", e))?;
    }
    let mut demux = Demux::default();
    loop {
        match ws.read() {
            Ok(Message::Binary(b)) => demux.take(&b)?,
            Ok(Message::Text(t)) => {
                return Err(io::Error::other(format!(
                    "a text message on a binary channel protocol: {t:?}"
                )))
            }
            // Close, ping, pong: tungstenite answers them; the next read
            // says the connection ended.
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                if Instant::now() >= end {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no end of the exec in {timeout:?}; so far {demux:?}"),
                    ));
                }
            }
            Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => break,
            // A server that drops the TCP connection after the status
            // (no closing handshake) has still said everything.
            Err(_) if !demux.status.is_empty() => break,
            Err(e) => {
                return Err(ws_err(
                    &format!("reading the exec's streams ({demux:?})"),
                    e,
                ))
            }
        }
    }
    let status = String::from_utf8_lossy(&demux.status).into_owned();
    if status.is_empty() {
        return Err(io::Error::other(format!(
            "the server closed without a status: {demux:?}"
        )));
    }
    let exit_code = exit_code_of(&status).map_err(io::Error::other)?;
    Ok(ExecOutput {
        stdout: demux.stdout,
        stderr: demux.stderr,
        exit_code,
    })
}

/// `data` behind its channel byte.
fn framed(channel: u8, data: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(data.len() + 1);
    m.push(channel);
    m.extend_from_slice(data);
    m
}

/// The server's messages, by channel.
#[derive(Default)]
struct Demux {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    status: Vec<u8>,
}

impl Demux {
    /// Files one binary message (an empty one, or one with only its
    /// channel byte, carries nothing).
    fn take(&mut self, msg: &[u8]) -> io::Result<()> {
        let Some((&channel, data)) = msg.split_first() else {
            return Ok(());
        };
        match channel {
            STDOUT => self.stdout.extend_from_slice(data),
            STDERR => self.stderr.extend_from_slice(data),
            ERROR => self.status.extend_from_slice(data),
            c => {
                return Err(io::Error::other(format!(
                    "a server message on channel {c} ({} bytes)",
                    data.len()
                )))
            }
        }
        Ok(())
    }
}

impl std::fmt::Debug for Demux {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("streams")
            .field("stdout", &String::from_utf8_lossy(&self.stdout))
            .field("stderr", &String::from_utf8_lossy(&self.stderr))
            .field("status", &String::from_utf8_lossy(&self.status))
            .finish()
    }
}

/// The exit code in a v4 error-channel status (see the module docs); an
/// error naming the status when it reports no exit (the exec failed).
pub fn exit_code_of(status: &str) -> Result<i32, String> {
    let v: serde_json::Value =
        serde_json::from_str(status).map_err(|e| format!("exec status {status:?}: {e}"))?;
    match v["status"].as_str() {
        Some("Success") => return Ok(0),
        Some("Failure") => {}
        _ => return Err(format!("exec status without Success/Failure: {status}")),
    }
    v.pointer("/details/causes")
        .and_then(|c| c.as_array())
        .into_iter()
        .flatten()
        .find(|c| c["reason"] == "ExitCode")
        .and_then(|c| c["message"].as_str())
        .and_then(|m| m.parse().ok())
        .ok_or_else(|| format!("the exec failed: {status}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_from_v4_statuses() {
        assert_eq!(exit_code_of(r#"{"metadata":{},"status":"Success"}"#), Ok(0));
        let failed = r#"{"metadata":{},"status":"Failure",
            "message":"command terminated with non-zero exit code: exit status 3",
            "reason":"NonZeroExitCode",
            "details":{"causes":[{"reason":"ExitCode","message":"3"}]}}"#;
        assert_eq!(exit_code_of(failed), Ok(3));
        let no_exec = r#"{"metadata":{},"status":"Failure","message":"exec: not found",
            "reason":"InternalError","code":500}"#;
        assert!(exit_code_of(no_exec)
            .unwrap_err()
            .contains("exec: not found"));
        assert!(exit_code_of("not json").is_err());
    }

    #[test]
    fn messages_go_to_their_channels() {
        let mut d = Demux::default();
        for m in [
            &b""[..],
            b"\x01",
            b"\x01out",
            b"\x02err",
            b"\x01!",
            b"\x03{}",
        ] {
            d.take(m).unwrap();
        }
        assert_eq!(
            (&d.stdout[..], &d.stderr[..], &d.status[..]),
            (&b"out!"[..], &b"err"[..], &b"{}"[..])
        );
        assert!(d.take(b"\x07x").is_err());
        assert_eq!(framed(STDIN, b"hi"), b"\x00hi");
    }
}
