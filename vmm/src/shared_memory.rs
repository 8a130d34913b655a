//! Guest RAM that another process can map: one memfd, mapped `MAP_SHARED`.
//!
//! A vhost-user backend (virtiofsd) reads and writes guest buffers itself,
//! so it must map guest RAM: `SET_MEM_TABLE` passes it the memfd and where
//! each RAM region lies in it. Anonymous memory cannot be passed, and a
//! clone's RAM (a `MAP_PRIVATE` copy-on-write mapping of its template's
//! memory file) cannot either: the backend would map the template's file
//! and never see the clone's writes.
//!
//! - [`SharedMemory::create`]: a cold boot with `--fs` gets its RAM as a
//!   memfd from the start.
//! - [`SharedMemory::convert`]: a clone that gets a backend copies the data
//!   extents of the template's memory file (`SEEK_DATA`/`SEEK_HOLE`: never
//!   the holes) into a new memfd and maps it `MAP_SHARED | MAP_FIXED` over
//!   its RAM at the same host addresses, before any vCPU runs. KVM's
//!   memory slots keep their addresses; KVM drops its old translations
//!   through its MMU notifier. The copied bytes are the clone's own memory
//!   from then on (no longer shared with other clones through the page
//!   cache): that is the per-clone cost, measured in docs/benchmarks.md.
//!
//! - The virtio-mem hotplug region ([`hotplug`]), when the VM has one, lies
//!   in the same memfd after RAM: a cold boot maps it `MAP_SHARED` from the
//!   start (sparse: nothing is allocated until the guest writes), a clone's
//!   conversion copies its data extents (the blocks plugged when the
//!   template was saved) like RAM's. Backends get it only in the pieces
//!   with plugged memory (`VHOST_USER_ADD_MEM_REG` / `REM_MEM_REG`), and
//!   unplugged memory is punched out of the memfd (`fallocate`), which frees
//!   it in every process that maps it.
//!
//! Why one memfd for both, rather than a second one for the region: a
//! second file buys nothing (backends map each table entry at its own
//! offset either way) and would be a second descriptor to pass and keep.
//! Why share plugged slots only, rather than the whole region up front: a
//! hostile guest could otherwise point virtio-fs buffers into unplugged
//! memory and have virtiofsd write there, allocating host memory up to the
//! region's size that no plugged block accounts for (and that `actl update
//! --memory` could never take back).
//!
//! Snapshots read guest memory through its mapping, so they do not care
//! whether it is shared.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::time::{Duration, Instant};

use vm_memory::{Address, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::snapshot::memory::RegionInfo;
use crate::GuestMemoryMmap;

mod hotplug;
pub use hotplug::MemTableListener;

/// Granularity in which the hotplug region is shared with backends.
pub fn hotplug_slot_size() -> u64 {
    hotplug::SLOT_SIZE
}
use hotplug::HotplugShare;

#[derive(Debug, thiserror::Error)]
pub enum SharedMemoryError {
    #[error("cannot create the shared guest memory (memfd): {0}")]
    Create(std::io::Error),
    #[error("cannot map the shared guest memory: {0}")]
    Map(String),
    #[error("cannot copy the template's memory into the clone's shared memory: {0}")]
    Copy(std::io::Error),
    #[error("guest memory has no region at {addr:#x} of {size} bytes")]
    NoRegion { addr: u64, size: u64 },
}

/// Where one RAM region lies in the memfd and in this process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SharedRegion {
    pub guest_addr: u64,
    pub size: u64,
    /// Start of the region's mapping in this process.
    pub host_addr: u64,
    /// Offset of the region in the memfd.
    pub offset: u64,
}

/// What converting a clone's RAM cost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConvertStats {
    /// Bytes copied (the data extents of the template's memory file).
    pub copied: u64,
    pub elapsed: Duration,
}

/// Guest RAM as a memfd.
#[derive(Debug)]
pub struct SharedMemory {
    file: File,
    /// RAM regions: always in the backends' memory tables.
    regions: Vec<SharedRegion>,
    /// The hotplug region, shared with backends slot by slot.
    hotplug: Option<HotplugShare>,
}

fn memfd(size: u64) -> Result<File, SharedMemoryError> {
    // SAFETY: the name is a NUL-terminated string; the returned descriptor
    // is checked before use.
    let fd = unsafe { libc::memfd_create(c"arrow-guest-ram".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(SharedMemoryError::Create(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` is a new descriptor owned by nobody else.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size).map_err(SharedMemoryError::Create)?;
    Ok(file)
}

impl SharedMemory {
    /// Guest memory for `ranges` (guest address, size), backed by one new
    /// memfd mapped `MAP_SHARED`.
    pub fn create(
        ranges: &[(GuestAddress, usize)],
    ) -> Result<(GuestMemoryMmap, Self), SharedMemoryError> {
        Self::create_with_hotplug(ranges, None)
    }

    /// [`Self::create`] for RAM `ranges` and the virtio-mem region
    /// `hotplug` (guest address, size), which the same memfd holds after
    /// RAM; none of it is shared with backends until plugged
    /// ([`Self::share_hotplug_slot`]).
    pub fn create_with_hotplug(
        ranges: &[(GuestAddress, usize)],
        hotplug: Option<(u64, u64)>,
    ) -> Result<(GuestMemoryMmap, Self), SharedMemoryError> {
        let mut all = ranges.to_vec();
        if let Some((addr, size)) = hotplug {
            let size =
                usize::try_from(size).map_err(|_| SharedMemoryError::NoRegion { addr, size })?;
            all.push((GuestAddress(addr), size));
        }
        let total: u64 = all.iter().map(|r| r.1 as u64).sum();
        let file = memfd(total)?;
        let mut offset = 0u64;
        let mut with_files = Vec::with_capacity(all.len());
        for &(addr, size) in &all {
            let fd = file.try_clone().map_err(SharedMemoryError::Create)?;
            with_files.push((addr, size, Some(FileOffset::new(fd, offset))));
            offset += size as u64;
        }
        let mem = GuestMemoryMmap::from_ranges_with_files(&with_files)
            .map_err(|e| SharedMemoryError::Map(e.to_string()))?;
        let regions: Vec<SharedRegion> = mem
            .iter()
            .map(|r| SharedRegion {
                guest_addr: r.start_addr().raw_value(),
                size: r.len(),
                host_addr: r.as_ptr() as u64,
                offset: r.file_offset().map_or(0, |f| f.start()),
            })
            .collect();
        Ok((mem, Self::split(file, regions, hotplug)))
    }

    /// Keeps the hotplug region (if any) apart from RAM.
    fn split(file: File, all: Vec<SharedRegion>, hotplug: Option<(u64, u64)>) -> Self {
        let is_hotplug = |r: &SharedRegion| hotplug.is_some_and(|(addr, _)| r.guest_addr == addr);
        let hotplug = all
            .iter()
            .find(|r| is_hotplug(r))
            .map(|r| HotplugShare::new(*r));
        let regions = all.into_iter().filter(|r| !is_hotplug(r)).collect();
        Self {
            file,
            regions,
            hotplug,
        }
    }

    /// Replaces the RAM regions `regions` of `mem`, a clone's copy-on-write
    /// mapping of `source` (the template's memory file, at each region's
    /// `file_offset`), by a memfd holding the same bytes, mapped at the same
    /// host addresses. Only `source`'s data extents are copied. vCPUs must
    /// not run, and nothing may have written to `mem` yet. `hotplug`: the
    /// region of `regions` that is the virtio-mem region (its plugged
    /// blocks are data extents and are copied like RAM).
    pub fn convert(
        mem: &GuestMemoryMmap,
        source: &File,
        regions: &[RegionInfo],
        hotplug: Option<(u64, u64)>,
    ) -> Result<(Self, ConvertStats), SharedMemoryError> {
        let started = Instant::now();
        let total: u64 = regions.iter().map(|r| r.size).sum();
        let file = memfd(total)?;
        let mut shared = Vec::with_capacity(regions.len());
        let mut offset = 0u64;
        let mut copied = 0u64;
        for r in regions {
            let region = mem
                .iter()
                .find(|g| g.start_addr().raw_value() == r.guest_addr && g.len() == r.size)
                .ok_or(SharedMemoryError::NoRegion {
                    addr: r.guest_addr,
                    size: r.size,
                })?;
            let host = region.as_ptr();
            for (start, len) in
                data_extents(source, r.file_offset, r.size).map_err(SharedMemoryError::Copy)?
            {
                // SAFETY: [start, start+len) lies inside the region (the
                // extents are clamped to it) whose mapping `mem` keeps alive.
                let src =
                    unsafe { std::slice::from_raw_parts(host.add(start as usize), len as usize) };
                write_all_at(&file, src, offset + start).map_err(SharedMemoryError::Copy)?;
                copied += len;
            }
            shared.push(SharedRegion {
                guest_addr: r.guest_addr,
                size: r.size,
                host_addr: host as u64,
                offset,
            });
            offset += r.size;
        }
        for s in &shared {
            // SAFETY: maps the memfd over the region's own mapping (same
            // address, same length), which `mem` owns and unmaps on drop;
            // MAP_FIXED replaces it in place, so nothing else is touched.
            let p = unsafe {
                libc::mmap(
                    s.host_addr as *mut libc::c_void,
                    s.size as usize,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED | libc::MAP_FIXED | libc::MAP_NORESERVE,
                    file.as_raw_fd(),
                    s.offset as libc::off_t,
                )
            };
            if p == libc::MAP_FAILED {
                return Err(SharedMemoryError::Map(
                    std::io::Error::last_os_error().to_string(),
                ));
            }
        }
        let stats = ConvertStats {
            copied,
            elapsed: started.elapsed(),
        };
        tracing::info!(
            copied_kib = copied >> 10,
            ms = stats.elapsed.as_secs_f64() * 1e3,
            "clone RAM converted to shared memory for vhost-user backends"
        );
        Ok((Self::split(file, shared, hotplug), stats))
    }

    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// The RAM regions (without the hotplug region: see [`Self::table`]).
    pub fn regions(&self) -> &[SharedRegion] {
        &self.regions
    }
}

/// The data extents of `file` within [base, base+len), relative to `base`.
fn data_extents(file: &File, base: u64, len: u64) -> std::io::Result<Vec<(u64, u64)>> {
    let fd = file.as_raw_fd();
    let end = base + len;
    let mut out = Vec::new();
    let mut pos = base;
    while pos < end {
        // SAFETY: lseek on an open descriptor; the result is checked.
        let data = unsafe { libc::lseek(fd, pos as libc::off_t, libc::SEEK_DATA) };
        if data < 0 {
            let e = std::io::Error::last_os_error();
            // ENXIO: no data after `pos`.
            if e.raw_os_error() == Some(libc::ENXIO) {
                break;
            }
            return Err(e);
        }
        let data = data as u64;
        if data >= end {
            break;
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data as libc::off_t, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let hole = (hole as u64).min(end);
        out.push((data - base, hole - data));
        pos = hole;
    }
    Ok(out)
}

fn write_all_at(file: &File, mut buf: &[u8], mut off: u64) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    while !buf.is_empty() {
        let n = file.write_at(buf, off)?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        buf = &buf[n..];
        off += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;
    use vm_memory::Bytes;

    #[test]
    fn created_memory_is_the_memfd() {
        let (mem, shared) = SharedMemory::create(&[(GuestAddress(0), 2 << 20)]).unwrap();
        mem.write_obj(0xabcd_u32, GuestAddress(0x1000)).unwrap();
        let mut b = [0u8; 4];
        shared.file.read_exact_at(&mut b, 0x1000).unwrap();
        assert_eq!(u32::from_le_bytes(b), 0xabcd);
        assert_eq!(shared.regions().len(), 1);
        assert_eq!(shared.regions()[0].size, 2 << 20);
    }

    #[test]
    fn convert_copies_data_extents_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("memory.bin");
        let src = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
        src.write_obj(0x1234_5678_u32, GuestAddress(0x20_0000))
            .unwrap();
        let (regions, _) = crate::snapshot::memory::dump(&src, &path).unwrap();
        let mem = crate::snapshot::memory::map_private(&path, &regions).unwrap();
        let host = mem.get_host_address(GuestAddress(0x20_0000)).unwrap();
        let file = File::open(&path).unwrap();
        let (shared, stats) = SharedMemory::convert(&mem, &file, &regions, None).unwrap();
        assert_eq!(mem.get_host_address(GuestAddress(0x20_0000)).unwrap(), host);
        assert_eq!(
            mem.read_obj::<u32>(GuestAddress(0x20_0000)).unwrap(),
            0x1234_5678
        );
        assert!(
            stats.copied >= 4 && stats.copied < 4 << 20,
            "only data: {}",
            stats.copied
        );
        // Writes go to the memfd now (a backend mapping it sees them) and
        // never to the template's file.
        mem.write_obj(7u32, GuestAddress(0x10)).unwrap();
        let mut b = [0u8; 4];
        shared.file.read_exact_at(&mut b, 0x10).unwrap();
        assert_eq!(u32::from_le_bytes(b), 7);
        file.read_exact_at(&mut b, regions[0].file_offset + 0x10)
            .unwrap_or_default();
        assert_ne!(u32::from_le_bytes(b), 7);
    }

    #[test]
    fn convert_copies_plugged_hotplug_memory_into_the_memfd() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("memory.bin");
        let region = 1u64 << 32;
        let size = hotplug::SLOT_SIZE;
        let src = GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 2 << 20),
            (GuestAddress(region), size as usize),
        ])
        .unwrap();
        src.write_obj(0xfeed_u32, GuestAddress(region + (4 << 20)))
            .unwrap();
        let (regions, _) = crate::snapshot::memory::dump(&src, &path).unwrap();
        let mem = crate::snapshot::memory::map_private(&path, &regions).unwrap();
        let file = File::open(&path).unwrap();
        let (shared, _) =
            SharedMemory::convert(&mem, &file, &regions, Some((region, size))).unwrap();
        assert_eq!(shared.regions().len(), 1, "RAM only");
        assert!(shared.has_hotplug());
        // The plugged data is in the memfd, after RAM, and nothing else is.
        assert_eq!(shared.hotplug_allocated(), Some(4096));
        let mut b = [0u8; 4];
        shared
            .file
            .read_exact_at(&mut b, (2 << 20) + (4 << 20))
            .unwrap();
        assert_eq!(u32::from_le_bytes(b), 0xfeed);
        shared.share_hotplug_slot(0, true).unwrap();
        assert_eq!(shared.table()[1].offset, 2 << 20);
        assert_eq!(shared.table()[1].guest_addr, region);
    }
}
