//! The virtio-mem hotplug region in shared memory: which parts of it the
//! vhost-user backends may map, and giving unplugged memory back.
//!
//! The region lies in the same memfd as RAM (after it; a sparse file costs
//! nothing until pages are written). It is shared with backends in the
//! pieces KVM sees ([`SLOT_SIZE`] slots, `devices::virtio::mem::backend`):
//! a slot is in the backends' memory tables exactly while it is registered
//! with KVM, i.e. while at least one of its blocks is plugged. So a guest
//! can never make a backend map memory the guest itself cannot reach, and
//! what a backend may allocate by writing guest buffers is bounded by the
//! same ranges the guest can write to directly (and goes back to the host
//! with them: a slot is punched out whole when it is removed).
//!
//! Changes reach each backend through its device ([`MemTableListener`]):
//! `VHOST_USER_ADD_MEM_REG` / `REM_MEM_REG` when the backend offers
//! `CONFIGURE_MEM_SLOTS`, else a new `SET_MEM_TABLE`.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::{Mutex, Weak};

use super::{SharedMemory, SharedRegion};
pub use crate::devices::virtio::mem::backend::SLOT_SIZE;

/// A device whose backend maps guest memory.
pub trait MemTableListener: Send + Sync {
    /// The shared hotplug slots changed: bring the backend's memory table up
    /// to date (a no-op while the backend has no table yet).
    fn mem_table_changed(&self) -> Result<(), String>;
}

/// The hotplug part of a [`SharedMemory`].
pub(super) struct HotplugShare {
    /// The whole region (guest range, host mapping, memfd offset).
    pub(super) region: SharedRegion,
    /// Slot i is in the backends' memory tables.
    shared: Mutex<Vec<bool>>,
    listeners: Mutex<Vec<Weak<dyn MemTableListener>>>,
}

impl std::fmt::Debug for HotplugShare {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HotplugShare")
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl HotplugShare {
    pub(super) fn new(region: SharedRegion) -> Self {
        Self {
            region,
            shared: Mutex::new(vec![false; region.size.div_ceil(SLOT_SIZE) as usize]),
            listeners: Mutex::new(Vec::new()),
        }
    }

    /// Slot `i` of the region as a memory-table entry.
    pub(super) fn slot(&self, i: usize) -> Option<SharedRegion> {
        let off = (i as u64).checked_mul(SLOT_SIZE)?;
        if off >= self.region.size {
            return None;
        }
        Some(SharedRegion {
            guest_addr: self.region.guest_addr + off,
            size: SLOT_SIZE.min(self.region.size - off),
            host_addr: self.region.host_addr + off,
            offset: self.region.offset + off,
        })
    }

    /// The slots shared now, as memory-table entries.
    pub(super) fn entries(&self) -> Vec<SharedRegion> {
        lock(&self.shared)
            .iter()
            .enumerate()
            .filter(|(_, &on)| on)
            .filter_map(|(i, _)| self.slot(i))
            .collect()
    }

    fn notify(&self) -> Result<(), String> {
        let listeners: Vec<_> = {
            let mut l = lock(&self.listeners);
            l.retain(|w| w.strong_count() > 0);
            l.clone()
        };
        let mut first = Ok(());
        for l in listeners.iter().filter_map(Weak::upgrade) {
            if let Err(e) = l.mem_table_changed() {
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }
}

impl SharedMemory {
    /// Whether guest memory has a hotplug region in the memfd.
    pub fn has_hotplug(&self) -> bool {
        self.hotplug.is_some()
    }

    /// Whether `r` is (part of) the hotplug region.
    pub fn is_hotplug(&self, r: &SharedRegion) -> bool {
        self.hotplug.as_ref().is_some_and(|h| {
            r.guest_addr >= h.region.guest_addr
                && r.guest_addr < h.region.guest_addr + h.region.size
        })
    }

    /// What a backend's memory table must hold now: every RAM region and
    /// the hotplug slots with plugged memory.
    pub fn table(&self) -> Vec<SharedRegion> {
        let mut t = self.regions.clone();
        if let Some(h) = &self.hotplug {
            t.extend(h.entries());
        }
        t
    }

    /// Shares slot `i` of the hotplug region with the backends (`on`) or
    /// takes it back from them; returns once every backend has its new
    /// table. On a backend's failure the slot keeps its old state (every
    /// backend is brought back to it) and the error is returned.
    pub fn share_hotplug_slot(&self, i: usize, on: bool) -> Result<(), String> {
        let Some(h) = &self.hotplug else {
            return Ok(());
        };
        {
            let mut s = lock(&h.shared);
            match s.get_mut(i) {
                Some(v) if *v == on => return Ok(()),
                Some(v) => *v = on,
                None => return Err(format!("hotplug slot {i} is outside the region")),
            }
        }
        if let Err(e) = h.notify() {
            if let Some(v) = lock(&h.shared).get_mut(i) {
                *v = !on;
            }
            let _ = h.notify();
            return Err(e);
        }
        Ok(())
    }

    /// Tells `listener` about every change of the shared hotplug slots.
    pub fn watch(&self, listener: Weak<dyn MemTableListener>) {
        if let Some(h) = &self.hotplug {
            lock(&h.listeners).push(listener);
        }
    }

    /// Frees `len` bytes at `offset` of the hotplug region in the memfd
    /// (`FALLOCATE_PUNCH_HOLE`): the pages go back to the host, in every
    /// process that maps them, and read as zeroes. `MADV_DONTNEED` would
    /// only drop this process's view of the page-cache pages.
    pub fn punch_hotplug(&self, offset: u64, len: u64) -> io::Result<()> {
        let h = self
            .hotplug
            .as_ref()
            .ok_or_else(|| io::Error::other("guest memory has no shared hotplug region"))?;
        let end = offset.checked_add(len).filter(|&e| e <= h.region.size);
        if end.is_none() {
            return Err(io::Error::other(format!(
                "{len:#x} bytes at {offset:#x} are outside the hotplug region"
            )));
        }
        let at = libc::off_t::try_from(h.region.offset + offset).map_err(io::Error::other)?;
        let len = libc::off_t::try_from(len).map_err(io::Error::other)?;
        // SAFETY: fallocate on the memfd this value owns; the range was
        // checked to lie inside the hotplug region's part of it.
        let r = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                at,
                len,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Bytes of the hotplug region the memfd holds (pages written by the
    /// guest, this process or a backend, and not punched out since).
    pub fn hotplug_allocated(&self) -> Option<u64> {
        let h = self.hotplug.as_ref()?;
        let extents = super::data_extents(&self.file, h.region.offset, h.region.size).ok()?;
        Some(extents.iter().map(|e| e.1).sum())
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileExt;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;

    use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

    use super::*;

    const RAM: u64 = 4 << 20;
    const REGION: u64 = 1 << 32;
    const REGION_SIZE: u64 = 2 * SLOT_SIZE;

    fn create() -> (crate::GuestMemoryMmap, SharedMemory) {
        SharedMemory::create_with_hotplug(
            &[(GuestAddress(0), RAM as usize)],
            Some((REGION, REGION_SIZE)),
        )
        .unwrap()
    }

    /// Counts calls; fails them while `fail` is set.
    #[derive(Default)]
    struct Listener {
        calls: AtomicUsize,
        fail: AtomicBool,
    }

    impl MemTableListener for Listener {
        fn mem_table_changed(&self) -> Result<(), String> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if self.fail.load(Ordering::SeqCst) {
                return Err("backend refused".into());
            }
            Ok(())
        }
    }

    #[test]
    fn the_region_follows_ram_in_the_memfd_and_only_shared_slots_are_in_the_table() {
        let (mem, shared) = create();
        assert!(shared.has_hotplug());
        // RAM alone in the table until a slot is shared.
        assert_eq!(shared.table(), shared.regions().to_vec());
        assert_eq!(shared.regions().len(), 1);
        assert_eq!(shared.regions()[0].offset, 0);
        // Guest writes to the region land in the memfd right after RAM.
        mem.write_obj(0x5a5a_u32, GuestAddress(REGION + SLOT_SIZE + 0x40))
            .unwrap();
        let mut b = [0u8; 4];
        shared
            .file
            .read_exact_at(&mut b, RAM + SLOT_SIZE + 0x40)
            .unwrap();
        assert_eq!(u32::from_le_bytes(b), 0x5a5a);

        shared.share_hotplug_slot(1, true).unwrap();
        let host = mem.get_host_address(GuestAddress(REGION)).unwrap() as u64;
        let entry = SharedRegion {
            guest_addr: REGION + SLOT_SIZE,
            size: SLOT_SIZE,
            host_addr: host + SLOT_SIZE,
            offset: RAM + SLOT_SIZE,
        };
        assert_eq!(shared.table().len(), 2);
        assert_eq!(shared.table()[1], entry);
        assert!(shared.is_hotplug(&entry));
        assert!(!shared.is_hotplug(&shared.regions()[0]));
        shared.share_hotplug_slot(1, false).unwrap();
        assert_eq!(shared.table().len(), 1);
        assert!(
            shared.share_hotplug_slot(2, true).is_err(),
            "past the region"
        );
    }

    #[test]
    fn listeners_hear_every_change_and_a_refusal_restores_the_old_table() {
        let (_mem, shared) = create();
        let l = Arc::new(Listener::default());
        let weak: Weak<Listener> = Arc::downgrade(&l);
        shared.watch(weak);
        shared.share_hotplug_slot(0, true).unwrap();
        assert_eq!(l.calls.load(Ordering::SeqCst), 1);
        shared.share_hotplug_slot(0, true).unwrap();
        assert_eq!(l.calls.load(Ordering::SeqCst), 1, "no change, no call");
        l.fail.store(true, Ordering::SeqCst);
        let e = shared.share_hotplug_slot(1, true).unwrap_err();
        assert!(e.contains("refused"), "{e}");
        assert_eq!(shared.table().len(), 2, "slot 1 was not shared");
        assert_eq!(
            l.calls.load(Ordering::SeqCst),
            3,
            "told again of the old table"
        );
        l.fail.store(false, Ordering::SeqCst);
        drop(l);
        shared.share_hotplug_slot(1, true).unwrap();
        assert_eq!(shared.table().len(), 3);
    }

    #[test]
    fn punching_gives_the_memfd_pages_back() {
        let (mem, shared) = create();
        assert_eq!(shared.hotplug_allocated(), Some(0));
        let buf = vec![7u8; 4 << 20];
        mem.write_slice(&buf, GuestAddress(REGION + (2 << 20)))
            .unwrap();
        assert_eq!(shared.hotplug_allocated(), Some(4 << 20));
        shared.punch_hotplug(2 << 20, 2 << 20).unwrap();
        assert_eq!(shared.hotplug_allocated(), Some(2 << 20));
        assert_eq!(
            mem.read_obj::<u8>(GuestAddress(REGION + (2 << 20)))
                .unwrap(),
            0,
            "punched pages read as zeroes"
        );
        assert_eq!(
            mem.read_obj::<u8>(GuestAddress(REGION + (4 << 20)))
                .unwrap(),
            7
        );
        assert!(shared.punch_hotplug(REGION_SIZE - 4096, 8192).is_err());
        // RAM is never punched through this.
        mem.write_obj(1u8, GuestAddress(0)).unwrap();
        shared.punch_hotplug(0, REGION_SIZE).unwrap();
        assert_eq!(shared.hotplug_allocated(), Some(0));
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0)).unwrap(), 1);
    }
}
