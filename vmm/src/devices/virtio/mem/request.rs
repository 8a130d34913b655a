//! virtio-mem wire format (virtio 1.2, 5.15.6): the 24-byte request the
//! driver posts and the 10-byte response the device writes back, and the
//! checks every request field goes through before it touches memory.

use vm_memory::ByteValued;

/// Request types.
pub const REQ_PLUG: u16 = 0;
pub const REQ_UNPLUG: u16 = 1;
pub const REQ_UNPLUG_ALL: u16 = 2;
pub const REQ_STATE: u16 = 3;

/// Response types.
pub const RESP_ACK: u16 = 0;
pub const RESP_NACK: u16 = 1;
pub const RESP_BUSY: u16 = 2;
pub const RESP_ERROR: u16 = 3;

/// Block states in a STATE response.
pub const STATE_PLUGGED: u16 = 0;
pub const STATE_UNPLUGGED: u16 = 1;
pub const STATE_MIXED: u16 = 2;

/// `struct virtio_mem_req`: type, padding, then addr + nb_blocks (the
/// PLUG, UNPLUG and STATE variants of the union share this layout).
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, Default)]
pub struct RawRequest {
    pub req_type: u16,
    pub padding: [u16; 3],
    pub addr: u64,
    pub nb_blocks: u16,
    pub padding2: [u16; 3],
}

// SAFETY: plain old data of integer fields, no padding bytes (packed), every
// bit pattern valid.
unsafe impl ByteValued for RawRequest {}

/// `struct virtio_mem_resp`: type, padding, state (STATE requests only).
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RawResponse {
    pub resp_type: u16,
    pub padding: [u16; 3],
    pub state: u16,
}

// SAFETY: as for RawRequest.
unsafe impl ByteValued for RawResponse {}

pub const REQUEST_SIZE: usize = std::mem::size_of::<RawRequest>();
pub const RESPONSE_SIZE: usize = std::mem::size_of::<RawResponse>();
const _: () = assert!(REQUEST_SIZE == 24 && RESPONSE_SIZE == 10);

/// A decoded request; ranges are already checked against the region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    Plug(BlockRange),
    Unplug(BlockRange),
    UnplugAll,
    State(BlockRange),
}

/// Blocks `first .. first + count` of the region (indices, not addresses).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockRange {
    pub first: u64,
    pub count: u64,
}

/// Why a request is answered with ERROR.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("unknown request type {0}")]
    UnknownType(u16),
    #[error("request for zero blocks")]
    NoBlocks,
    #[error("address {0:#x} is not aligned to the block size")]
    Unaligned(u64),
    #[error("range at {addr:#x} of {nb_blocks} blocks is outside the usable region")]
    OutOfRange { addr: u64, nb_blocks: u16 },
}

/// The geometry requests are checked against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub addr: u64,
    pub block_size: u64,
    pub usable_size: u64,
}

impl Geometry {
    /// Decodes `raw`, rejecting anything outside `[addr, addr + usable_size)`.
    pub fn decode(&self, raw: &RawRequest) -> Result<Request, RequestError> {
        let req_type = raw.req_type;
        let range = || self.range(raw.addr, raw.nb_blocks);
        Ok(match u16::from_le(req_type) {
            REQ_PLUG => Request::Plug(range()?),
            REQ_UNPLUG => Request::Unplug(range()?),
            REQ_UNPLUG_ALL => Request::UnplugAll,
            REQ_STATE => Request::State(range()?),
            t => return Err(RequestError::UnknownType(t)),
        })
    }

    fn range(&self, addr: u64, nb_blocks: u16) -> Result<BlockRange, RequestError> {
        let addr = u64::from_le(addr);
        let nb_blocks = u16::from_le(nb_blocks);
        if nb_blocks == 0 {
            return Err(RequestError::NoBlocks);
        }
        let out = RequestError::OutOfRange { addr, nb_blocks };
        let offset = addr.checked_sub(self.addr).ok_or(out)?;
        if offset % self.block_size != 0 {
            return Err(RequestError::Unaligned(addr));
        }
        let len = u64::from(nb_blocks) * self.block_size;
        let end = offset.checked_add(len).ok_or(out)?;
        if end > self.usable_size {
            return Err(out);
        }
        Ok(BlockRange {
            first: offset / self.block_size,
            count: u64::from(nb_blocks),
        })
    }
}

impl RawResponse {
    pub fn new(resp_type: u16) -> Self {
        Self {
            resp_type: resp_type.to_le(),
            ..Default::default()
        }
    }

    pub fn state(state: u16) -> Self {
        Self {
            resp_type: RESP_ACK.to_le(),
            padding: [0; 3],
            state: state.to_le(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: Geometry = Geometry {
        addr: 1 << 32,
        block_size: 2 << 20,
        usable_size: 64 << 20,
    };

    fn raw(t: u16, addr: u64, nb: u16) -> RawRequest {
        RawRequest {
            req_type: t,
            addr,
            nb_blocks: nb,
            ..Default::default()
        }
    }

    #[test]
    fn decodes_valid_ranges() {
        assert_eq!(
            G.decode(&raw(REQ_PLUG, G.addr + (4 << 20), 3)),
            Ok(Request::Plug(BlockRange { first: 2, count: 3 }))
        );
        // The last block exactly.
        assert_eq!(
            G.decode(&raw(REQ_STATE, G.addr + (62 << 20), 1)),
            Ok(Request::State(BlockRange {
                first: 31,
                count: 1
            }))
        );
        // UNPLUG_ALL ignores the (garbage) range fields.
        assert_eq!(
            G.decode(&raw(REQ_UNPLUG_ALL, u64::MAX, 0)),
            Ok(Request::UnplugAll)
        );
    }

    #[test]
    fn rejects_hostile_fields() {
        assert_eq!(
            G.decode(&raw(7, G.addr, 1)),
            Err(RequestError::UnknownType(7))
        );
        assert_eq!(
            G.decode(&raw(REQ_PLUG, G.addr, 0)),
            Err(RequestError::NoBlocks)
        );
        assert_eq!(
            G.decode(&raw(REQ_UNPLUG, G.addr + 4096, 1)),
            Err(RequestError::Unaligned(G.addr + 4096))
        );
        for (addr, nb) in [
            (G.addr - (2 << 20), 1),  // below the region
            (G.addr + (62 << 20), 2), // runs past the end
            (G.addr + (64 << 20), 1), // just past the end
            (u64::MAX - (2 << 20) + 1, u16::MAX),
            (0, 1),
            (G.addr, u16::MAX), // far past the end
        ] {
            assert!(
                matches!(
                    G.decode(&raw(REQ_PLUG, addr, nb)),
                    Err(RequestError::OutOfRange { .. }) | Err(RequestError::Unaligned(_))
                ),
                "{addr:#x} x {nb}"
            );
        }
    }
}
