//! Delimited reads and writes with timeouts over a [`BoxStream`], shared by
//! every driver. Errors on a serial port are reported as the port being
//! gone, since that is what EOF or EIO on a tty means.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::transport::BoxStream;
use crate::DriverError;

/// Longest reply accepted before the driver gives up on the stream.
const MAX_REPLY: usize = 64 * 1024;

/// A stream with a read buffer.
pub struct LineIo {
    stream: BoxStream,
    buf: Vec<u8>,
    serial_path: Option<String>,
    /// Telnet option requests are answered and taken out of what is read.
    telnet: Option<Telnet>,
}

/// Where a Telnet command cut by a read stands.
#[derive(Debug, Default)]
struct Telnet {
    /// Bytes of an unfinished command (`IAC ...`).
    pending: Vec<u8>,
}

const IAC: u8 = 0xff;
const SB: u8 = 0xfa;
const SE: u8 = 0xf0;
const WILL: u8 = 0xfb;
const WONT: u8 = 0xfc;
const DO: u8 = 0xfd;
const DONT: u8 = 0xfe;

impl Telnet {
    /// Takes Telnet commands out of `input`, returning the data and the answers to send.
    fn filter(&mut self, input: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let mut bytes = std::mem::take(&mut self.pending);
        bytes.extend_from_slice(input);
        let (mut data, mut answers) = (Vec::with_capacity(bytes.len()), Vec::new());
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] != IAC {
                data.push(bytes[i]);
                i += 1;
                continue;
            }
            let Some(&cmd) = bytes.get(i + 1) else {
                break;
            };
            match cmd {
                IAC => {
                    data.push(IAC);
                    i += 2;
                }
                DO | DONT | WILL | WONT => {
                    let Some(&opt) = bytes.get(i + 2) else {
                        break;
                    };
                    match cmd {
                        DO => answers.extend([IAC, WONT, opt]),
                        WILL => answers.extend([IAC, DONT, opt]),
                        _ => {}
                    }
                    i += 3;
                }
                SB => match bytes[i..].windows(2).position(|w| w == [IAC, SE]) {
                    Some(end) => i += end + 2,
                    None => break,
                },
                _ => i += 2,
            }
        }
        self.pending = bytes[i..].to_vec();
        (data, answers)
    }
}

impl LineIo {
    /// Wraps a freshly opened stream; `serial_path` is set for serial ports.
    pub fn new(stream: BoxStream, serial_path: Option<String>) -> Self {
        LineIo {
            stream,
            buf: Vec::with_capacity(256),
            serial_path,
            telnet: None,
        }
    }

    /// Treats the stream as Telnet: refuses every option the device asks for
    /// (DO → WONT, WILL → DONT) and keeps the commands out of replies.
    pub fn refuse_telnet_options(&mut self) {
        self.telnet = Some(Telnet::default());
    }

    /// Adds what was read to the buffer (through the Telnet filter, answering it).
    async fn take(&mut self, chunk: &[u8]) -> Result<(), DriverError> {
        match self.telnet.as_mut() {
            None => self.buf.extend_from_slice(chunk),
            Some(t) => {
                let (data, answers) = t.filter(chunk);
                self.buf.extend_from_slice(&data);
                if !answers.is_empty() {
                    self.send(&answers).await?;
                }
            }
        }
        Ok(())
    }

    fn gone(&self, reason: String) -> DriverError {
        match &self.serial_path {
            Some(path) => DriverError::SerialGone {
                path: path.clone(),
                reason,
            },
            None if reason == "end of stream" => DriverError::Closed,
            None => DriverError::Io(std::io::Error::other(reason)),
        }
    }

    /// Writes all of `bytes`.
    pub async fn send(&mut self, bytes: &[u8]) -> Result<(), DriverError> {
        let written = async {
            self.stream.write_all(bytes).await?;
            self.stream.flush().await
        }
        .await;
        written.map_err(|e| self.gone(e.to_string()))
    }

    /// Discards everything that arrives until nothing has for `quiet` (a late
    /// answer after a timeout); gives up after 20 quiet periods of chatter.
    pub async fn drain(&mut self, quiet: Duration) -> Result<(), DriverError> {
        self.buf.clear();
        for _ in 0..20 {
            let mut chunk = [0u8; 256];
            match tokio::time::timeout(quiet, self.stream.read(&mut chunk)).await {
                Err(_) => return Ok(()),
                Ok(Ok(0)) => return Err(self.gone("end of stream".into())),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(self.gone(e.to_string())),
            }
        }
        Err(DriverError::Protocol(
            "the device kept sending without a pause; cannot find the start of an answer".into(),
        ))
    }

    /// Drops anything already received (stale replies after a timeout).
    pub fn discard_buffered(&mut self) {
        self.buf.clear();
    }

    /// Reads up to and including `delim`; returns what came before it.
    pub async fn read_until(
        &mut self,
        delim: &[u8],
        timeout: Duration,
        command: &str,
    ) -> Result<Vec<u8>, DriverError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(pos) = find(&self.buf, delim) {
                let rest = self.buf.split_off(pos + delim.len());
                let mut line = std::mem::replace(&mut self.buf, rest);
                line.truncate(pos);
                return Ok(line);
            }
            if self.buf.len() > MAX_REPLY {
                return Err(DriverError::Protocol(format!(
                    "reply to `{command}` longer than {MAX_REPLY} bytes without a terminator"
                )));
            }
            let mut chunk = [0u8; 1024];
            let read = tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await;
            match read {
                Err(_) => {
                    return Err(DriverError::Timeout {
                        command: command.to_owned(),
                        timeout_ms: timeout.as_millis() as u64,
                    })
                }
                Ok(Ok(0)) => return Err(self.gone("end of stream".into())),
                Ok(Ok(n)) => self.take(&chunk[..n]).await?,
                Ok(Err(e)) => return Err(self.gone(e.to_string())),
            }
        }
    }
}

impl LineIo {
    /// Reads until `cut` takes a whole frame from what has arrived.
    pub async fn read_frame(
        &mut self,
        mut cut: impl FnMut(&mut Vec<u8>) -> Option<Vec<u8>>,
        timeout: Duration,
        command: &str,
    ) -> Result<Vec<u8>, DriverError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(frame) = cut(&mut self.buf) {
                return Ok(frame);
            }
            if self.buf.len() > MAX_REPLY {
                return Err(DriverError::Protocol(format!(
                    "reply to `{command}` longer than {MAX_REPLY} bytes without a whole frame"
                )));
            }
            let mut chunk = [0u8; 1024];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => {
                    return Err(DriverError::Timeout {
                        command: command.to_owned(),
                        timeout_ms: timeout.as_millis() as u64,
                    })
                }
                Ok(Ok(0)) => return Err(self.gone("end of stream".into())),
                Ok(Ok(n)) => self.take(&chunk[..n]).await?,
                Ok(Err(e)) => return Err(self.gone(e.to_string())),
            }
        }
    }

    /// Reads exactly `n` bytes (binary handshakes).
    pub async fn read_exact(
        &mut self,
        n: usize,
        timeout: Duration,
        what: &str,
    ) -> Result<Vec<u8>, DriverError> {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.buf.len() < n {
            let mut chunk = [0u8; 256];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => {
                    return Err(DriverError::Timeout {
                        command: what.to_owned(),
                        timeout_ms: timeout.as_millis() as u64,
                    })
                }
                Ok(Ok(0)) => return Err(self.gone("end of stream".into())),
                Ok(Ok(k)) => self.take(&chunk[..k]).await?,
                Ok(Err(e)) => return Err(self.gone(e.to_string())),
            }
        }
        let rest = self.buf.split_off(n);
        Ok(std::mem::replace(&mut self.buf, rest))
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || haystack.len() < needle.len() {
        return None;
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn telnet_options_are_refused_and_removed() {
        let mut t = Telnet::default();
        // DO TTYPE, WILL ECHO, then text with an escaped 0xFF, cut mid-command.
        let (data, answers) =
            t.filter(&[IAC, DO, 0x18, IAC, WILL, 0x01, b'h', b'i', IAC, IAC, IAC]);
        assert_eq!(data, vec![b'h', b'i', 0xff]);
        assert_eq!(answers, vec![IAC, WONT, 0x18, IAC, DONT, 0x01]);
        let (data, answers) = t.filter(&[DO, 0x1f, IAC, SB, 0x18, 0x01, IAC, SE, b'!']);
        assert_eq!(data, vec![b'!']);
        assert_eq!(answers, vec![IAC, WONT, 0x1f]);
    }
}
