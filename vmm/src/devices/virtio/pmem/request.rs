//! Requests on the pmem queue (virtio 1.2, 5.19.6): a device-readable
//! `le32 type` followed by a device-writable `le32 ret`. The only type is
//! FLUSH (0); `ret` is 0 on success, 1 (EIO in the guest) otherwise.
//!
//! Everything comes from the guest: descriptors are read through vm-memory
//! (bounds-checked against guest RAM), a chain without a readable request
//! or a writable response is returned unused with length 0.

use crate::limited_warn as warn;
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryBackend};

use crate::GuestMemoryMmap;

pub const REQ_TYPE_FLUSH: u32 = 0;
pub const RESP_OK: u32 = 0;
pub const RESP_ERR: u32 = 1;

/// Why a chain could not be answered.
#[derive(Debug, PartialEq, Eq)]
pub enum RequestError {
    /// No device-readable descriptor of at least 4 bytes before the
    /// writable ones.
    NoRequest,
    /// No device-writable descriptor of at least 4 bytes.
    NoResponse,
    /// A descriptor points outside guest RAM.
    BadAddress(u64),
}

/// The request type and where to write the answer.
fn parse<M>(mut chain: DescriptorChain<M>) -> Result<(u32, GuestAddress), RequestError>
where
    M: std::ops::Deref,
    M::Target: GuestMemory,
{
    let mut req = None;
    let mut resp = None;
    for d in chain.by_ref() {
        if d.is_write_only() {
            if d.len() >= 4 {
                resp = Some(d.addr());
                break;
            }
        } else if req.is_none() && d.len() >= 4 {
            req = Some(d.addr());
        }
    }
    let req = req.ok_or(RequestError::NoRequest)?;
    let resp = resp.ok_or(RequestError::NoResponse)?;
    let ty: u32 = chain
        .memory()
        .read_obj(req)
        .map_err(|_| RequestError::BadAddress(req.0))?;
    Ok((u32::from_le(ty), resp))
}

/// Answers one chain; returns the bytes written into it.
fn handle<M>(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<M>,
    flush: &mut impl FnMut() -> std::io::Result<()>,
) -> Result<u32, RequestError>
where
    M: std::ops::Deref,
    M::Target: GuestMemory,
{
    let (ty, resp) = parse(chain)?;
    // Checked before the request is carried out, so a flush is never done
    // for a request that cannot be answered.
    if !GuestMemoryBackend::check_range(mem, resp, 4) {
        return Err(RequestError::BadAddress(resp.0));
    }
    let ret = match ty {
        REQ_TYPE_FLUSH => match flush() {
            Ok(()) => RESP_OK,
            Err(e) => {
                warn!("pmem: flush failed: {e}");
                RESP_ERR
            }
        },
        other => {
            warn!("pmem: unknown request type {other}");
            RESP_ERR
        }
    };
    mem.write_obj(ret.to_le(), resp)
        .map_err(|_| RequestError::BadAddress(resp.0))?;
    Ok(4)
}

/// Answers every available chain on `queue`; returns how many were put on
/// the used ring.
pub fn process(
    mem: &GuestMemoryMmap,
    queue: &mut Queue,
    mut flush: impl FnMut() -> std::io::Result<()>,
) -> usize {
    let mut used = 0;
    loop {
        let mut popped = 0;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            popped += 1;
            let head = chain.head_index();
            let len = handle(mem, chain, &mut flush).unwrap_or_else(|e| {
                warn!("pmem: malformed request: {e:?}");
                0
            });
            match queue.add_used(mem, head, len) {
                Ok(()) => used += 1,
                Err(e) => warn!("pmem: used ring: {e}"),
            }
        }
        match queue.enable_notification(mem) {
            Ok(true) if popped > 0 => continue,
            // More entries claimed than can be popped: a broken avail ring.
            Ok(true) => {
                warn!("pmem: avail ring is inconsistent");
                break;
            }
            Ok(false) => break,
            Err(e) => {
                warn!("pmem: queue: {e}");
                break;
            }
        }
    }
    used
}
