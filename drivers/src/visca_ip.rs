//! VISCA over IP (UDP 52381) as a byte stream, so a VISCA profile runs over
//! it unchanged: each VISCA packet written (ending `FF`) goes out as one
//! datagram behind the 8-byte header (payload type, payload length,
//! sequence number), and the payloads of the camera's replies are read
//! back in order. The stream starts with the control command RESET, which
//! sets the camera's sequence number back; commands then count from 1.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UdpSocket;

/// The camera's VISCA over IP port.
pub const PORT: u16 = 52381;
/// Payload type of a VISCA command.
pub const COMMAND: u16 = 0x0100;
/// Payload type of a VISCA inquiry (`8x 09 ...`).
pub const INQUIRY: u16 = 0x0110;
/// Payload type of a VISCA reply (acknowledge, completion, error, answer).
pub const REPLY: u16 = 0x0111;
/// Payload type of a control command (`01`: RESET the sequence number).
pub const CONTROL: u16 = 0x0200;
/// Payload type of a control reply.
pub const CONTROL_REPLY: u16 = 0x0201;
/// Length of the header.
pub const HEADER: usize = 8;
/// Longest payload accepted (VISCA packets are at most 16 bytes).
const MAX_PAYLOAD: usize = 64;

/// A datagram: the header and the payload.
pub fn wrap(payload_type: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
    let mut d = Vec::with_capacity(HEADER + payload.len());
    d.extend_from_slice(&payload_type.to_be_bytes());
    d.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    d.extend_from_slice(&seq.to_be_bytes());
    d.extend_from_slice(payload);
    d
}

/// A datagram's payload type, sequence number and payload, when its header
/// is whole and its length field matches.
pub fn unwrap(datagram: &[u8]) -> Option<(u16, u32, &[u8])> {
    let head = datagram.get(..HEADER)?;
    let kind = u16::from_be_bytes([head[0], head[1]]);
    let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
    let seq = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
    let payload = &datagram[HEADER..];
    (payload.len() == len && len <= MAX_PAYLOAD).then_some((kind, seq, payload))
}

/// The payload type for a VISCA packet: an inquiry when its second byte is `09`.
pub fn payload_type(packet: &[u8]) -> u16 {
    if packet.get(1) == Some(&0x09) {
        INQUIRY
    } else {
        COMMAND
    }
}

/// A VISCA over IP camera as a byte stream.
pub struct ViscaIpStream {
    socket: UdpSocket,
    seq: u32,
    /// Written bytes not yet ending a packet.
    pending: Vec<u8>,
    /// Datagrams ready to go, in order.
    outgoing: std::collections::VecDeque<Vec<u8>>,
    /// A reply's payload not yet read.
    incoming: Vec<u8>,
}

impl ViscaIpStream {
    /// A stream to the camera at `addr` (connected UDP), with RESET sent.
    pub async fn connect(addr: &str) -> io::Result<Self> {
        let target = tokio::net::lookup_host(addr)
            .await?
            .next()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address"))?;
        let local = if target.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        };
        let socket = UdpSocket::bind(local).await?;
        socket.connect(target).await?;
        socket.send(&wrap(CONTROL, 0, &[0x01])).await?;
        Ok(ViscaIpStream {
            socket,
            seq: 1,
            pending: Vec::new(),
            outgoing: Default::default(),
            incoming: Vec::new(),
        })
    }

    fn flush_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some(d) = self.outgoing.front() {
            match self.socket.poll_send(cx, d) {
                Poll::Ready(Ok(_)) => {
                    self.outgoing.pop_front();
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for ViscaIpStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.pending.len() + buf.len() > MAX_PAYLOAD * 4 {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a VISCA packet must end with FF within 64 bytes",
            )));
        }
        this.pending.extend_from_slice(buf);
        while let Some(end) = this.pending.iter().position(|&b| b == 0xFF) {
            let packet: Vec<u8> = this.pending.drain(..=end).collect();
            let d = wrap(payload_type(&packet), this.seq, &packet);
            this.seq = this.seq.wrapping_add(1);
            this.outgoing.push_back(d);
        }
        // The bytes are taken; sending happens now or at flush.
        let _ = this.flush_pending(cx)?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().flush_pending(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().flush_pending(cx)
    }
}

impl AsyncRead for ViscaIpStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // Writes waiting for room go out before waiting for their answers.
        if let Poll::Ready(Err(e)) = this.flush_pending(cx) {
            return Poll::Ready(Err(e));
        }
        loop {
            if !this.incoming.is_empty() {
                let n = this.incoming.len().min(out.remaining());
                out.put_slice(&this.incoming[..n]);
                this.incoming.drain(..n);
                return Poll::Ready(Ok(()));
            }
            let mut buf = [0u8; HEADER + MAX_PAYLOAD];
            let mut rb = ReadBuf::new(&mut buf);
            match this.socket.poll_recv(cx, &mut rb) {
                Poll::Ready(Ok(())) => match unwrap(rb.filled()) {
                    Some((REPLY, _, payload)) => this.incoming.extend_from_slice(payload),
                    Some((CONTROL_REPLY, _, _)) => {} // RESET acknowledged
                    _ => {
                        tracing::debug!("not a VISCA over IP reply, ignored: {:02x?}", rb.filled())
                    }
                },
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_as_the_cameras_expect_them() {
        // Power on, sequence 1: 01 00 | 00 06 | 00 00 00 01 | 81 01 04 00 02 FF
        let d = wrap(COMMAND, 1, &[0x81, 0x01, 0x04, 0x00, 0x02, 0xFF]);
        assert_eq!(
            d,
            [0x01, 0x00, 0x00, 0x06, 0, 0, 0, 1, 0x81, 0x01, 0x04, 0x00, 0x02, 0xFF]
        );
        assert_eq!(payload_type(&[0x81, 0x09, 0x04, 0x00, 0xFF]), INQUIRY);
        assert_eq!(
            wrap(CONTROL, 0, &[0x01]),
            [0x02, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0x01],
            "RESET"
        );
        let reply = wrap(REPLY, 7, &[0x90, 0x41, 0xFF]);
        assert_eq!(unwrap(&reply), Some((REPLY, 7, &[0x90, 0x41, 0xFF][..])));
        assert_eq!(unwrap(&reply[..10]), None, "length field does not match");
        assert_eq!(unwrap(&[1, 2, 3]), None);
    }
}
