//! The host side of the hotplug region: which parts the guest may touch
//! (KVM memory slots) and giving unplugged memory back to the host.
//!
//! The region is one host mapping (part of guest memory, so the VMM's own
//! devices can reach plugged blocks) but it is shown to KVM in slots of
//! [`SLOT_SIZE`] bytes, each registered only while at least one of its
//! blocks is plugged: a guest access to a fully unplugged slot finds no
//! memory (an MMIO exit the VMM ignores). KVM slot updates cost several ms
//! on nested hosts, so per-block slots would make a 1 GiB plug take seconds;
//! within a registered slot, unplugged blocks are discarded and read as
//! zeroes (the driver acknowledged UNPLUGGED_INACCESSIBLE and does not touch
//! them).
//!
//! Discarding: on an anonymous mapping `MADV_DONTNEED` frees the pages; on
//! a clone's private mapping of a template's memory file it would bring
//! the template's pages back, so fresh anonymous memory is mapped over the
//! range instead. When vhost-user backends map guest memory
//! ([`crate::shared_memory`], `--fs`), the region is part of a memfd:
//! unplugged ranges are punched out of it (which frees them in the
//! backends' mappings too), and each slot is shared with the backends
//! exactly while it is registered with KVM (taken from them before KVM
//! loses it and before its memory is freed).

use std::io;
use std::sync::Arc;

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::shared_memory::SharedMemory;
use crate::GuestMemoryMmap;

/// KVM slot granularity inside the region (also Linux's x86-64 memory block).
pub const SLOT_SIZE: u64 = 128 << 20;
/// First KVM slot number used for the region (boot RAM and other devices'
/// memory use lower numbers).
pub const FIRST_SLOT: u32 = 1024;

/// Registers and removes KVM memory slots (a fake in tests).
pub trait SlotControl: Send {
    /// Registers slot `slot` (or removes it when `size` is 0).
    fn set_slot(&self, slot: u32, guest_addr: u64, size: u64, host_addr: u64) -> io::Result<()>;
}

impl SlotControl for Arc<VmFd> {
    fn set_slot(&self, slot: u32, guest_addr: u64, size: u64, host_addr: u64) -> io::Result<()> {
        let r = kvm_userspace_memory_region {
            slot,
            guest_phys_addr: guest_addr,
            memory_size: size,
            userspace_addr: host_addr,
            flags: 0,
        };
        // SAFETY: `host_addr .. + size` lies inside the hotplug region's
        // mapping, which lives in the VM's guest memory and outlives the VM
        // fd (HotplugMemory::new checked the range against that mapping).
        unsafe { self.set_user_memory_region(r) }
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("guest memory has no mapping of {size:#x} bytes at {addr:#x} for the hotplug region")]
    NoRegion { addr: u64, size: u64 },
    #[error("the hotplug region at {0:#x} is not aligned to {SLOT_SIZE:#x} bytes")]
    Unaligned(u64),
    #[error("cannot register the hotplug memory with KVM: {0}")]
    Slot(io::Error),
    #[error("cannot give memory back to the host: {0}")]
    Discard(io::Error),
    #[error("cannot update the vhost-user backends' memory tables: {0}")]
    Share(String),
}

/// The hotplug region's host mapping and its KVM slots.
pub struct HotplugMemory<S: SlotControl> {
    guest_addr: u64,
    size: u64,
    /// Host address of the region's first byte (a live mapping owned by the
    /// VM's guest memory).
    host_addr: usize,
    /// A private file mapping (clone of a template) rather than anonymous.
    file_backed: bool,
    /// Plugged bytes per slot.
    plugged: Vec<u64>,
    slots: S,
    /// Guest memory as a memfd that vhost-user backends map.
    shared: Option<Arc<SharedMemory>>,
}

impl<S: SlotControl> HotplugMemory<S> {
    /// The region `[guest_addr, guest_addr + size)`, which must be exactly
    /// one region of `mem`.
    pub fn new(
        mem: &GuestMemoryMmap,
        guest_addr: u64,
        size: u64,
        slots: S,
    ) -> Result<Self, BackendError> {
        if !guest_addr.is_multiple_of(SLOT_SIZE) || !size.is_multiple_of(SLOT_SIZE) {
            return Err(BackendError::Unaligned(guest_addr));
        }
        let region = mem
            .find_region(GuestAddress(guest_addr))
            .filter(|r| r.start_addr() == GuestAddress(guest_addr) && r.len() == size)
            .ok_or(BackendError::NoRegion {
                addr: guest_addr,
                size,
            })?;
        let host = region.as_ptr();
        // Keeps the region's mapping from merging with an adjacent one (guest
        // RAM) so its resident memory can be told apart; core dumps skip it.
        // SAFETY: advice on a live mapping owned by guest memory; no data
        // changes.
        unsafe { libc::madvise(host.cast(), size as usize, libc::MADV_DONTDUMP) };
        Ok(Self {
            guest_addr,
            size,
            host_addr: host as usize,
            file_backed: region.file_offset().is_some(),
            plugged: vec![0; (size / SLOT_SIZE) as usize],
            slots,
            shared: None,
        })
    }

    /// Guest memory is (now) `shared`, a memfd backends map, whose hotplug
    /// region is this one: the slots registered so far are shared with the
    /// backends, unplugged memory is punched out of the memfd from now on.
    pub fn set_shared(&mut self, shared: Arc<SharedMemory>) -> Result<(), BackendError> {
        for i in 0..self.plugged.len() {
            if self.plugged[i] > 0 {
                shared
                    .share_hotplug_slot(i, true)
                    .map_err(BackendError::Share)?;
            }
        }
        self.shared = Some(shared);
        Ok(())
    }

    fn slot_range(&self, offset: u64, len: u64) -> std::ops::Range<usize> {
        (offset / SLOT_SIZE) as usize..(offset + len).div_ceil(SLOT_SIZE) as usize
    }

    /// Bytes of `[offset, offset+len)` that fall into slot `i`.
    fn overlap(offset: u64, len: u64, i: usize) -> u64 {
        let s = i as u64 * SLOT_SIZE;
        (offset + len).min(s + SLOT_SIZE) - offset.max(s)
    }

    fn set_kvm_slot(&self, i: usize, on: bool) -> Result<(), BackendError> {
        let off = i as u64 * SLOT_SIZE;
        self.slots
            .set_slot(
                FIRST_SLOT + i as u32,
                self.guest_addr + off,
                if on { SLOT_SIZE } else { 0 },
                self.host_addr as u64 + off,
            )
            .map_err(BackendError::Slot)
    }

    /// Shows slot `i` to the guest (KVM) and to the vhost-user backends, or
    /// takes it from both: the backends get it after KVM and lose it
    /// before, so they never map what the guest cannot reach.
    fn register(&self, i: usize, on: bool) -> Result<(), BackendError> {
        let share = |on: bool| match &self.shared {
            Some(s) => s.share_hotplug_slot(i, on).map_err(BackendError::Share),
            None => Ok(()),
        };
        if on {
            self.set_kvm_slot(i, true)?;
            if let Err(e) = share(true) {
                let _ = self.set_kvm_slot(i, false);
                return Err(e);
            }
        } else {
            share(false)?;
            if let Err(e) = self.set_kvm_slot(i, false) {
                let _ = share(true);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Makes `len` bytes at region offset `offset` reachable by the guest.
    /// The caller passes only unplugged, in-bounds, block-aligned ranges.
    pub fn plug(&mut self, offset: u64, len: u64) -> Result<(), BackendError> {
        debug_assert!(offset + len <= self.size);
        let mut registered = Vec::new();
        for i in self.slot_range(offset, len) {
            if self.plugged[i] == 0 {
                if let Err(e) = self.register(i, true) {
                    // Leave the slots as they were: the request is refused.
                    for j in registered {
                        let _ = self.register(j, false);
                    }
                    return Err(e);
                }
                registered.push(i);
            }
        }
        for i in self.slot_range(offset, len) {
            self.plugged[i] += Self::overlap(offset, len, i);
        }
        Ok(())
    }

    /// Gives `len` bytes at `offset` back to the host; slots left without
    /// plugged memory are removed from the guest. The caller passes only
    /// plugged, in-bounds, block-aligned ranges.
    pub fn unplug(&mut self, offset: u64, len: u64) -> Result<(), BackendError> {
        debug_assert!(offset + len <= self.size);
        // The counts change only once every slot left empty is removed and
        // the memory freed: on a failure the device answers BUSY and keeps
        // the blocks plugged, so the counts (and slots) must still include
        // them, or a later unplug would remove a slot under blocks that are
        // still plugged. Slots go first, so that neither the guest nor a
        // backend can write the range again once it is freed.
        let mut removed = Vec::new();
        let undo = |this: &Self, removed: Vec<usize>| {
            for j in removed {
                let _ = this.register(j, true);
            }
        };
        for i in self.slot_range(offset, len) {
            if self.plugged[i] <= Self::overlap(offset, len, i) {
                if let Err(e) = self.register(i, false) {
                    undo(self, removed);
                    return Err(e);
                }
                removed.push(i);
            }
        }
        // A removed slot has no plugged block left: all of it goes back,
        // including unplugged blocks a guest (or, through it, a backend)
        // wrote while the slot was registered.
        let whole = removed.iter().map(|&i| (i as u64 * SLOT_SIZE, SLOT_SIZE));
        for (off, n) in std::iter::once((offset, len)).chain(whole) {
            if let Err(e) = self.discard(off, n) {
                undo(self, removed);
                return Err(e);
            }
        }
        for i in self.slot_range(offset, len) {
            self.plugged[i] = self.plugged[i].saturating_sub(Self::overlap(offset, len, i));
        }
        Ok(())
    }

    fn discard(&self, offset: u64, len: u64) -> Result<(), BackendError> {
        if let Some(shared) = &self.shared {
            // Shared mappings of a memfd: MADV_DONTNEED would leave the
            // pages in the file (and in the backends' mappings).
            return shared
                .punch_hotplug(offset, len)
                .map_err(BackendError::Discard);
        }
        let addr = (self.host_addr as u64 + offset) as *mut libc::c_void;
        let len = len as usize;
        if self.file_backed {
            // SAFETY: the range lies inside the region's mapping (checked by
            // the caller against the region size); MAP_FIXED replaces those
            // pages only, with the same protection, so every pointer into
            // guest memory stays valid (the pages now read as zeroes).
            let p = unsafe {
                libc::mmap(
                    addr,
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED | libc::MAP_NORESERVE,
                    -1,
                    0,
                )
            };
            if p == libc::MAP_FAILED {
                return Err(BackendError::Discard(io::Error::last_os_error()));
            }
        } else {
            // SAFETY: as above; MADV_DONTNEED on a private anonymous mapping
            // only drops the pages' contents.
            if unsafe { libc::madvise(addr, len, libc::MADV_DONTNEED) } != 0 {
                return Err(BackendError::Discard(io::Error::last_os_error()));
            }
        }
        Ok(())
    }

    /// The region will be a private mapping of a memory file by the time
    /// blocks are unplugged (a pooled VM maps its template over the
    /// reservation at start).
    pub fn set_file_backed(&mut self) {
        self.file_backed = true;
    }

    /// After a restore: registers the slots the plugged ranges need.
    pub fn restore(&mut self, plugged: &[(u64, u64)]) -> Result<(), BackendError> {
        for &(offset, len) in plugged {
            self.plug(offset, len)?;
        }
        Ok(())
    }

    /// Bytes of the region resident in host memory: the `Rss` of this
    /// process's mappings inside the region (/proc/self/smaps; the shared
    /// zero page, which reads of untouched memory map, is not counted, and
    /// on a clone the template's pages are counted while the region still
    /// maps them).
    ///
    /// With shared memory it is what the memfd holds in the region: pages a
    /// backend wrote count although this process never touched them.
    pub fn resident_bytes(&self) -> Option<u64> {
        if let Some(shared) = &self.shared {
            return shared.hotplug_allocated();
        }
        let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
        let (start, end) = (self.host_addr as u64, self.host_addr as u64 + self.size);
        let mut inside = false;
        let mut kib = 0u64;
        for line in smaps.lines() {
            let mut words = line.split_whitespace();
            let first = words.next().unwrap_or("");
            if let Some((a, b)) = first.split_once('-') {
                if let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) {
                    inside = a >= start && b <= end;
                    continue;
                }
            }
            if inside && first == "Rss:" {
                kib += words
                    .next()
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
        Some(kib << 10)
    }

    /// Slots currently registered (for tests and status).
    pub fn registered_slots(&self) -> usize {
        self.plugged.iter().filter(|&&p| p > 0).count()
    }
}

/// The operations the device model needs from the host; implemented by
/// [`HotplugMemory`] (a fake one can stand in for tests of request logic).
pub trait MemoryBackend: Send {
    fn plug(&mut self, offset: u64, len: u64) -> Result<(), BackendError>;
    fn unplug(&mut self, offset: u64, len: u64) -> Result<(), BackendError>;
    /// Bytes of the region resident on the host, if known.
    fn resident_bytes(&self) -> Option<u64> {
        None
    }
    /// Guest memory became `shared` (a clone's RAM converted for backends).
    fn set_shared(&mut self, _shared: Arc<SharedMemory>) -> Result<(), BackendError> {
        Ok(())
    }
}

impl<S: SlotControl> MemoryBackend for HotplugMemory<S> {
    fn plug(&mut self, offset: u64, len: u64) -> Result<(), BackendError> {
        HotplugMemory::plug(self, offset, len)
    }
    fn unplug(&mut self, offset: u64, len: u64) -> Result<(), BackendError> {
        HotplugMemory::unplug(self, offset, len)
    }
    fn resident_bytes(&self) -> Option<u64> {
        HotplugMemory::resident_bytes(self)
    }
    fn set_shared(&mut self, shared: Arc<SharedMemory>) -> Result<(), BackendError> {
        HotplugMemory::set_shared(self, shared)
    }
}
