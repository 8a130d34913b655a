//! One vsock stream connection between a guest socket and a host Unix stream:
//! its state machine and credit-based flow control in both directions.
//!
//! Credit (virtio 1.x, 5.10.6.3): each side advertises `buf_alloc` (its
//! receive buffer) and `fwd_cnt` (bytes it has consumed). A sender may have at
//! most `buf_alloc - (sent - fwd_cnt)` bytes in flight.
//! - guest -> host: bytes the host socket does not take at once wait in
//!   `pending_out`, never more than our `buf_alloc`; a guest that sends past
//!   its credit is a protocol violation and gets RST.
//! - host -> guest: we read from the host socket only as much as the guest's
//!   credit allows, straight into the guest's RX buffer, so nothing is
//!   buffered on the host side in that direction.

use std::collections::VecDeque;
use std::io::{ErrorKind, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;

use virtio_vsock::packet::VsockPacket;
use vm_memory::bitmap::BitmapSlice;
use vm_memory::{ReadVolatile, VolatileMemoryError, VolatileSlice, WriteVolatile};

use super::packet::{
    Header, Op, HOST_CID, MAX_PKT_DATA, SHUTDOWN_BOTH, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM,
};

/// Why a connection must be reset.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("guest sent {len} bytes with {credit} bytes of credit")]
    CreditViolation { len: u32, credit: u32 },
    #[error("unexpected {0:?} in state {1:?}")]
    UnexpectedOp(Op, State),
    #[error("guest sent data after shutting down its sending side")]
    SendAfterShutdown,
    #[error("host socket: {0}")]
    Io(std::io::Error),
    #[error("guest memory: {0}")]
    Memory(VolatileMemoryError),
    #[error("RX packet header: {0}")]
    Packet(virtio_vsock::packet::Error),
}

/// Connection states; closing and reset are handled by the muxer removing
/// the connection (and sending RST when needed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum State {
    /// Host-initiated: REQUEST sent or queued, waiting for the guest's RESPONSE.
    LocalInit,
    /// Data flows (possibly half-closed, see the shutdown flags).
    Established,
}

/// Control packets owed to the guest.
#[derive(Clone, Copy, Debug, Default)]
struct Pending {
    request: bool,
    response: bool,
    shutdown: bool,
    credit_update: bool,
    credit_request: bool,
}

/// Snapshot-friendly summary of a connection (host sockets are not saved:
/// after restore the guest gets TRANSPORT_RESET).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ConnectionInfo {
    pub local_port: u32,
    pub peer_port: u32,
    pub state: State,
    pub pending_out: usize,
}

pub struct Connection {
    pub(super) stream: UnixStream,
    pub(super) token: u32,
    local_port: u32,
    peer_port: u32,
    state: State,
    // guest -> host
    buf_alloc: u32,
    rx_cnt: u32,
    fwd_cnt: u32,
    last_fwd_cnt_sent: u32,
    pending_out: VecDeque<u8>,
    peer_shutdown: u32,
    host_write_shut: bool,
    // host -> guest
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    tx_cnt: u32,
    host_readable: bool,
    host_eof: bool,
    credit_requested: bool,
    pending: Pending,
    /// Set while the muxer has this connection in its RX work queue.
    pub(super) queued: bool,
}

/// What to do with the connection after an event.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Keep,
    /// Both sides are done: reset it cleanly (send RST, drop).
    Close,
}

fn io_err(e: VolatileMemoryError) -> ConnError {
    match e {
        VolatileMemoryError::IOError(e) => ConnError::Io(e),
        e => ConnError::Memory(e),
    }
}

fn would_block(e: &VolatileMemoryError) -> bool {
    matches!(e, VolatileMemoryError::IOError(io) if io.kind() == ErrorKind::WouldBlock)
}

impl Connection {
    fn new(
        stream: UnixStream,
        token: u32,
        local_port: u32,
        peer_port: u32,
        buf_alloc: u32,
    ) -> Self {
        Self {
            stream,
            token,
            local_port,
            peer_port,
            state: State::Established,
            buf_alloc,
            rx_cnt: 0,
            fwd_cnt: 0,
            last_fwd_cnt_sent: 0,
            pending_out: VecDeque::new(),
            peer_shutdown: 0,
            host_write_shut: false,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            tx_cnt: 0,
            host_readable: false,
            host_eof: false,
            credit_requested: false,
            pending: Pending::default(),
            queued: false,
        }
    }

    /// The guest connected to a host port and the host listener accepted:
    /// answer RESPONSE.
    pub fn guest_initiated(stream: UnixStream, token: u32, req: &Header, buf_alloc: u32) -> Self {
        let mut c = Self::new(stream, token, req.dst_port, req.src_port, buf_alloc);
        c.update_peer_credit(req.buf_alloc, req.fwd_cnt);
        c.pending.response = true;
        c
    }

    /// A host client asked for guest port `peer_port`: send REQUEST.
    pub fn host_initiated(
        stream: UnixStream,
        token: u32,
        local_port: u32,
        peer_port: u32,
        buf_alloc: u32,
    ) -> Self {
        let mut c = Self::new(stream, token, local_port, peer_port, buf_alloc);
        c.state = State::LocalInit;
        c.pending.request = true;
        // The client may already have sent data after its CONNECT line.
        c.host_readable = true;
        c
    }

    /// Host-initiated and its REQUEST not yet handed to the guest.
    pub fn request_pending(&self) -> bool {
        self.pending.request
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn info(&self) -> ConnectionInfo {
        ConnectionInfo {
            local_port: self.local_port,
            peer_port: self.peer_port,
            state: self.state,
            pending_out: self.pending_out.len(),
        }
    }

    /// Bytes the guest may still send us.
    pub fn our_credit(&self) -> u32 {
        self.buf_alloc
            .saturating_sub(self.rx_cnt.wrapping_sub(self.fwd_cnt))
    }

    /// Bytes we may still send the guest. A bogus `fwd_cnt` from the guest
    /// (ahead of what we sent) yields 0, never a huge credit.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = self.tx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Every guest packet carries its receive-buffer state.
    pub fn update_peer_credit(&mut self, buf_alloc: u32, fwd_cnt: u32) {
        self.peer_buf_alloc = buf_alloc;
        self.peer_fwd_cnt = fwd_cnt;
        if self.peer_credit() > 0 {
            self.credit_requested = false;
        }
    }

    /// Guest RESPONSE to our REQUEST: tell the host client which port it got.
    pub fn on_response(&mut self) -> Result<(), ConnError> {
        if self.state != State::LocalInit || self.pending.request {
            return Err(ConnError::UnexpectedOp(Op::Response, self.state));
        }
        self.state = State::Established;
        let line = format!("OK {}\n", self.local_port);
        // The socket is fresh and its buffer empty: a short write of a few
        // bytes cannot happen short of an error.
        self.stream
            .write_all(line.as_bytes())
            .map_err(ConnError::Io)
    }

    /// Guest data for the host socket.
    pub fn on_rw<B: BitmapSlice>(
        &mut self,
        data: Option<&VolatileSlice<'_, B>>,
    ) -> Result<(), ConnError> {
        if self.state != State::Established {
            return Err(ConnError::UnexpectedOp(Op::Rw, self.state));
        }
        if self.peer_shutdown & SHUTDOWN_SEND != 0 {
            return Err(ConnError::SendAfterShutdown);
        }
        let Some(data) = data else { return Ok(()) };
        let len = data.len() as u32;
        let credit = self.our_credit();
        if len > credit {
            return Err(ConnError::CreditViolation { len, credit });
        }
        self.rx_cnt = self.rx_cnt.wrapping_add(len);
        let mut written = 0usize;
        if self.pending_out.is_empty() {
            match self.stream.write_volatile(data) {
                Ok(n) => written = n,
                Err(e) if would_block(&e) => {}
                Err(e) => return Err(io_err(e)),
            }
        }
        self.forwarded(written as u32);
        if written < data.len() {
            // Slow path (host socket full): keep the rest, bounded by credit.
            let rest = data.offset(written).map_err(ConnError::Memory)?;
            let mut tmp = vec![0u8; rest.len()];
            rest.copy_to(&mut tmp[..]);
            self.pending_out.extend(&tmp);
        }
        Ok(())
    }

    fn forwarded(&mut self, n: u32) {
        self.fwd_cnt = self.fwd_cnt.wrapping_add(n);
        // Tell the guest about freed space once a quarter of the buffer is
        // unreported; a blocked guest is then always woken eventually.
        if self.fwd_cnt.wrapping_sub(self.last_fwd_cnt_sent) >= self.buf_alloc / 4 {
            self.pending.credit_update = true;
        }
    }

    /// The host socket became writable: push out buffered guest data.
    pub fn flush(&mut self) -> Result<Verdict, ConnError> {
        while !self.pending_out.is_empty() {
            let (a, _) = self.pending_out.as_slices();
            match self.stream.write(a) {
                Ok(0) => return Err(ConnError::Io(ErrorKind::WriteZero.into())),
                Ok(n) => {
                    self.pending_out.drain(..n);
                    self.forwarded(n as u32);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(ConnError::Io(e)),
            }
        }
        if self.pending_out.is_empty() && self.pending_out.capacity() > 64 * 1024 {
            // Give back burst memory.
            self.pending_out.shrink_to(64 * 1024);
        }
        Ok(self.apply_shutdown())
    }

    /// Guest SHUTDOWN: flags accumulate.
    pub fn on_shutdown(&mut self, flags: u32) -> Result<Verdict, ConnError> {
        if self.state != State::Established {
            return Err(ConnError::UnexpectedOp(Op::Shutdown, self.state));
        }
        self.peer_shutdown |= flags & SHUTDOWN_BOTH;
        Ok(self.apply_shutdown())
    }

    fn apply_shutdown(&mut self) -> Verdict {
        if !self.pending_out.is_empty() {
            return Verdict::Keep;
        }
        if self.peer_shutdown & SHUTDOWN_SEND != 0 && !self.host_write_shut {
            // The host reader sees EOF; errors mean it is gone already.
            let _ = self.stream.shutdown(Shutdown::Write);
            self.host_write_shut = true;
        }
        if self.peer_shutdown == SHUTDOWN_BOTH {
            Verdict::Close
        } else {
            Verdict::Keep
        }
    }

    /// Guest CREDIT_REQUEST.
    pub fn on_credit_request(&mut self) {
        self.pending.credit_update = true;
    }

    /// The host socket has data (or EOF) to read.
    pub fn on_host_readable(&mut self) {
        self.host_readable = true;
    }

    fn can_send_data(&self) -> bool {
        self.state == State::Established
            && self.host_readable
            && !self.host_eof
            && self.peer_shutdown & SHUTDOWN_RCV == 0
    }

    /// Whether the connection has a packet for the guest's RX queue.
    pub fn has_rx_work(&self) -> bool {
        let p = &self.pending;
        p.request
            || p.response
            || p.shutdown
            || p.credit_update
            || p.credit_request
            || (self.can_send_data() && (self.peer_credit() > 0 || !self.credit_requested))
    }

    fn header(&self, guest_cid: u64, op: Op, len: u32, flags: u32) -> Header {
        Header {
            src_cid: HOST_CID,
            dst_cid: guest_cid,
            src_port: self.local_port,
            dst_port: self.peer_port,
            len,
            type_: TYPE_STREAM,
            op: op.as_u16(),
            flags,
            buf_alloc: self.buf_alloc,
            fwd_cnt: self.fwd_cnt,
        }
    }

    /// Fills the RX packet with the next packet for the guest; returns the
    /// bytes used (header + data) or `None` when there is nothing to send.
    pub fn fill_rx<B: BitmapSlice>(
        &mut self,
        guest_cid: u64,
        pkt: &mut VsockPacket<'_, B>,
    ) -> Result<Option<u32>, ConnError> {
        let (op, len, flags) = if self.pending.request {
            self.pending.request = false;
            (Op::Request, 0, 0)
        } else if self.pending.response {
            self.pending.response = false;
            (Op::Response, 0, 0)
        } else if let Some(n) = self.read_host(pkt)? {
            (Op::Rw, n, 0)
        } else if self.pending.shutdown {
            self.pending.shutdown = false;
            (Op::Shutdown, 0, SHUTDOWN_SEND)
        } else if self.pending.credit_update {
            (Op::CreditUpdate, 0, 0)
        } else if self.pending.credit_request
            || (self.can_send_data() && self.peer_credit() == 0 && !self.credit_requested)
        {
            self.pending.credit_request = false;
            self.credit_requested = true;
            (Op::CreditRequest, 0, 0)
        } else {
            return Ok(None);
        };
        // Every packet carries our fwd_cnt, so it doubles as a credit update.
        self.pending.credit_update = false;
        self.last_fwd_cnt_sent = self.fwd_cnt;
        self.header(guest_cid, op, len, flags)
            .write_to(pkt)
            .map_err(ConnError::Packet)?;
        Ok(Some(super::packet::HEADER_SIZE as u32 + len))
    }

    /// Reads host data into the packet's data buffer, bounded by the guest's
    /// credit. `None`: nothing to send now (no credit, no data, or EOF, which
    /// queues SHUTDOWN).
    fn read_host<B: BitmapSlice>(
        &mut self,
        pkt: &mut VsockPacket<'_, B>,
    ) -> Result<Option<u32>, ConnError> {
        if !self.can_send_data() {
            return Ok(None);
        }
        let credit = self.peer_credit();
        let Some(buf) = pkt.data_slice() else {
            return Ok(None);
        };
        let max = (buf.len() as u64)
            .min(credit.into())
            .min(MAX_PKT_DATA.into()) as usize;
        if max == 0 {
            return Ok(None);
        }
        let mut dst = buf.subslice(0, max).map_err(ConnError::Memory)?;
        loop {
            match self.stream.read_volatile(&mut dst) {
                Ok(0) => {
                    self.host_eof = true;
                    self.pending.shutdown = true;
                    return Ok(None);
                }
                Ok(n) => {
                    self.tx_cnt = self.tx_cnt.wrapping_add(n as u32);
                    return Ok(Some(n as u32));
                }
                Err(e) if would_block(&e) => {
                    self.host_readable = false;
                    return Ok(None);
                }
                Err(VolatileMemoryError::IOError(e)) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(io_err(e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn slice(buf: &mut [u8]) -> VolatileSlice<'_, ()> {
        VolatileSlice::from(buf)
    }

    fn pair() -> (UnixStream, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        b.set_nonblocking(true).unwrap();
        (a, b)
    }

    fn req() -> Header {
        Header {
            src_cid: 3,
            dst_cid: HOST_CID,
            src_port: 1000,
            dst_port: 52,
            type_: TYPE_STREAM,
            op: Op::Request.as_u16(),
            buf_alloc: 4096,
            ..Default::default()
        }
    }

    #[test]
    fn credit_math_survives_bogus_guest_counters() {
        let (a, _b) = pair();
        let mut c = Connection::guest_initiated(a, 1, &req(), 1024);
        assert_eq!(c.peer_credit(), 4096);
        c.tx_cnt = 100;
        c.update_peer_credit(4096, 50);
        assert_eq!(c.peer_credit(), 4046);
        // fwd_cnt ahead of what we sent: no credit, not u32::MAX.
        c.update_peer_credit(4096, 200);
        assert_eq!(c.peer_credit(), 0);
        // Wrapping counters.
        c.tx_cnt = 5;
        c.update_peer_credit(100, u32::MAX - 4);
        assert_eq!(c.peer_credit(), 90);
    }

    #[test]
    fn guest_data_buffered_under_backpressure_and_bounded() {
        let (a, mut b) = pair();
        let mut c = Connection::guest_initiated(a, 1, &req(), 256 * 1024);
        let mut chunk = vec![7u8; 64 * 1024];
        // Write until the host socket is full and data is buffered.
        let mut sent = 0u64;
        while c.our_credit() >= chunk.len() as u32 {
            c.on_rw(Some(&slice(&mut chunk))).unwrap();
            sent += chunk.len() as u64;
            if sent > 64 << 20 {
                panic!("socket never filled");
            }
        }
        assert!(c.pending_out.len() <= 256 * 1024);
        let credit = c.our_credit();
        let mut too_much = vec![1u8; credit as usize + 1];
        assert!(matches!(
            c.on_rw(Some(&slice(&mut too_much))),
            Err(ConnError::CreditViolation { .. })
        ));
        // Host drains: flushing frees credit and asks for a credit update.
        let mut sink = vec![0u8; 1 << 20];
        let mut got = 0u64;
        loop {
            match b.read(&mut sink) {
                Ok(n) => got += n as u64,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    c.flush().unwrap();
                    if c.pending_out.is_empty() {
                        while let Ok(n) = b.read(&mut sink) {
                            got += n as u64;
                        }
                        break;
                    }
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(got, sent);
        assert_eq!(c.our_credit(), 256 * 1024);
        assert!(c.pending.credit_update);
    }

    #[test]
    fn shutdown_waits_for_buffered_data() {
        let (a, b) = pair();
        let mut c = Connection::guest_initiated(a, 1, &req(), 1024);
        c.pending_out.extend([1, 2, 3]);
        assert_eq!(c.on_shutdown(SHUTDOWN_BOTH).unwrap(), Verdict::Keep);
        assert_eq!(c.flush().unwrap(), Verdict::Close);
        let mut buf = [0u8; 8];
        let mut b = b;
        assert_eq!(b.read(&mut buf).unwrap(), 3);
        // Host sees EOF after the data.
        assert_eq!(b.read(&mut buf).unwrap(), 0);
    }

    #[test]
    fn rw_rejected_outside_established_or_after_shutdown() {
        let (a, _b) = pair();
        let mut c = Connection::host_initiated(a, 1, 1 << 30, 52, 1024);
        let mut d = [0u8; 4];
        assert!(matches!(
            c.on_rw(Some(&slice(&mut d))),
            Err(ConnError::UnexpectedOp(Op::Rw, State::LocalInit))
        ));
        // RESPONSE before our REQUEST went out is unexpected too.
        assert!(c.on_response().is_err());
        let (a, _b) = pair();
        let mut c = Connection::guest_initiated(a, 1, &req(), 1024);
        c.on_shutdown(SHUTDOWN_SEND).unwrap();
        assert!(matches!(
            c.on_rw(Some(&slice(&mut d))),
            Err(ConnError::SendAfterShutdown)
        ));
    }
}
