//! Vsock packet headers (virtio 1.x, 5.10.6) on top of `virtio-vsock`'s
//! [`VsockPacket`], which parses and bounds-checks the descriptor chains.
//!
//! [`Header`] is a plain copy of the header fields: the device reads it once
//! from guest memory and then works on the copy, so a guest rewriting the
//! buffer meanwhile cannot change what was validated.

use virtio_vsock::packet::{VsockPacket, PKT_HEADER_SIZE};
use vm_memory::bitmap::BitmapSlice;

/// The host's CID, as seen by the guest.
pub const HOST_CID: u64 = 2;
/// `VIRTIO_VSOCK_TYPE_STREAM`; the only socket type offered.
pub const TYPE_STREAM: u16 = 1;
/// SHUTDOWN flags: the sender will receive / send no more data.
pub const SHUTDOWN_RCV: u32 = 1;
pub const SHUTDOWN_SEND: u32 = 2;
pub const SHUTDOWN_BOTH: u32 = SHUTDOWN_RCV | SHUTDOWN_SEND;
/// Largest payload of one packet, both directions (Linux uses the same).
pub const MAX_PKT_DATA: u32 = 64 * 1024;
/// `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET`.
pub const EVENT_TRANSPORT_RESET: u32 = 0;
/// Size of `struct virtio_vsock_event`.
pub const EVENT_SIZE: usize = 4;
/// Header size, re-exported for the queue code.
pub const HEADER_SIZE: usize = PKT_HEADER_SIZE;

/// Packet operations (`VIRTIO_VSOCK_OP_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Request,
    Response,
    Rst,
    Shutdown,
    Rw,
    CreditUpdate,
    CreditRequest,
}

impl Op {
    pub fn from_u16(v: u16) -> Option<Self> {
        Some(match v {
            1 => Op::Request,
            2 => Op::Response,
            3 => Op::Rst,
            4 => Op::Shutdown,
            5 => Op::Rw,
            6 => Op::CreditUpdate,
            7 => Op::CreditRequest,
            _ => return None,
        })
    }

    pub fn as_u16(self) -> u16 {
        match self {
            Op::Request => 1,
            Op::Response => 2,
            Op::Rst => 3,
            Op::Shutdown => 4,
            Op::Rw => 5,
            Op::CreditUpdate => 6,
            Op::CreditRequest => 7,
        }
    }
}

/// A copy of one packet header, in host byte order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

fn le_u16(b: &[u8; HEADER_SIZE], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le_u32(b: &[u8; HEADER_SIZE], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le_u64(b: &[u8; HEADER_SIZE], at: usize) -> u64 {
    (u64::from(le_u32(b, at + 4)) << 32) | u64::from(le_u32(b, at))
}

impl Header {
    /// Copies the header of a parsed packet.
    pub fn of<B: BitmapSlice>(pkt: &VsockPacket<'_, B>) -> Self {
        Self {
            src_cid: pkt.src_cid(),
            dst_cid: pkt.dst_cid(),
            src_port: pkt.src_port(),
            dst_port: pkt.dst_port(),
            len: pkt.len(),
            type_: pkt.type_(),
            op: pkt.op(),
            flags: pkt.flags(),
            buf_alloc: pkt.buf_alloc(),
            fwd_cnt: pkt.fwd_cnt(),
        }
    }

    /// Decodes the wire layout (used for chains `VsockPacket` rejected).
    pub fn from_bytes(b: &[u8; HEADER_SIZE]) -> Self {
        Self {
            src_cid: le_u64(b, 0),
            dst_cid: le_u64(b, 8),
            src_port: le_u32(b, 16),
            dst_port: le_u32(b, 20),
            len: le_u32(b, 24),
            type_: le_u16(b, 28),
            op: le_u16(b, 30),
            flags: le_u32(b, 32),
            buf_alloc: le_u32(b, 36),
            fwd_cnt: le_u32(b, 40),
        }
    }

    /// Encodes the wire layout.
    pub fn to_bytes(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }

    /// Writes this header into an RX packet's header buffer.
    pub fn write_to<B: BitmapSlice>(
        &self,
        pkt: &mut VsockPacket<'_, B>,
    ) -> Result<(), virtio_vsock::packet::Error> {
        pkt.set_header_from_raw(&self.to_bytes())
    }

    pub fn op(&self) -> Option<Op> {
        Op::from_u16(self.op)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_roundtrip_and_layout() {
        let h = Header {
            src_cid: 0x0102_0304_0506_0708,
            dst_cid: 2,
            src_port: 0xaabb_ccdd,
            dst_port: 5,
            len: 6,
            type_: TYPE_STREAM,
            op: Op::Rw.as_u16(),
            flags: 9,
            buf_alloc: 10,
            fwd_cnt: 11,
        };
        let b = h.to_bytes();
        assert_eq!(b[0], 0x08);
        assert_eq!(b[7], 0x01);
        assert_eq!(&b[16..20], &[0xdd, 0xcc, 0xbb, 0xaa]);
        assert_eq!(b[30], 5);
        assert_eq!(Header::from_bytes(&b), h);
    }

    #[test]
    fn ops_roundtrip() {
        for v in 0..10u16 {
            match Op::from_u16(v) {
                Some(op) => assert_eq!(op.as_u16(), v),
                None => assert!(v == 0 || v > 7),
            }
        }
    }
}
