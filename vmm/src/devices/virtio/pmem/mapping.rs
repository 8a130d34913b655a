//! The host mapping behind a pmem device: the file `MAP_SHARED` (so every
//! VM mapping the same read-only file shares the host's page-cache pages),
//! padded with anonymous zero pages up to the 2 MiB the guest's nvdimm
//! code needs.

use std::fs::File;
use std::os::fd::AsRawFd;

/// The guest's memremap of a pmem range works in 2 MiB subsections.
pub const REGION_ALIGN: u64 = 2 << 20;

/// Rounds `v` up to a multiple of `align` (a power of two); None on overflow.
pub fn align_up(v: u64, align: u64) -> Option<u64> {
    Some(v.checked_add(align - 1)? & !(align - 1))
}

/// A live mapping of `size` bytes at `addr`, unmapped on drop.
#[derive(Debug)]
pub struct PmemMapping {
    addr: *mut libc::c_void,
    size: usize,
}

// SAFETY: the mapping is plain memory owned by this value; the raw pointer
// is only handed to KVM and unmapped once, on drop.
unsafe impl Send for PmemMapping {}
// SAFETY: as above; nothing here reads or writes through the pointer.
unsafe impl Sync for PmemMapping {}

impl PmemMapping {
    /// Maps `file` (`file_len` bytes) into a `region_size` window, shared
    /// with the file, read-only or read-write.
    pub fn new(
        file: &File,
        file_len: u64,
        region_size: u64,
        read_only: bool,
    ) -> std::io::Result<Self> {
        let size = usize::try_from(region_size).map_err(|_| std::io::ErrorKind::InvalidInput)?;
        let file_part = align_up(file_len, 4096)
            .and_then(|l| usize::try_from(l).ok())
            .filter(|&l| l <= size)
            .ok_or(std::io::ErrorKind::InvalidInput)?;
        let prot = if read_only {
            libc::PROT_READ
        } else {
            libc::PROT_READ | libc::PROT_WRITE
        };
        // SAFETY: a fresh anonymous mapping at an address the kernel picks;
        // the result is checked below.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                prot,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let mapping = Self { addr, size };
        // SAFETY: replaces the first `file_part` bytes of the reservation
        // just made (owned by `mapping`) with the file; `file_part <= size`.
        let file_addr = unsafe {
            libc::mmap(
                addr,
                file_part,
                prot,
                libc::MAP_SHARED | libc::MAP_FIXED,
                file.as_raw_fd(),
                0,
            )
        };
        if file_addr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(mapping)
    }

    /// Puts `file` (`file_len` bytes, at most the window) read-only at the
    /// start of the window in place of what was mapped there, and zero pages
    /// after it: the host address (and KVM's slot) stay, KVM drops its old
    /// translations through its MMU notifier.
    pub fn replace_read_only(&self, file: &File, file_len: u64) -> std::io::Result<()> {
        let file_part = align_up(file_len, 4096)
            .and_then(|l| usize::try_from(l).ok())
            .filter(|&l| l > 0 && l <= self.size)
            .ok_or(std::io::ErrorKind::InvalidInput)?;
        // SAFETY: [addr, addr + file_part) lies inside the window this value
        // owns (checked above); MAP_FIXED replaces those pages only.
        let got = unsafe {
            libc::mmap(
                self.addr,
                file_part,
                libc::PROT_READ,
                libc::MAP_SHARED | libc::MAP_FIXED,
                file.as_raw_fd(),
                0,
            )
        };
        if got == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let rest = self.size - file_part;
        if rest > 0 {
            // SAFETY: the rest of the owned window, after the file part.
            let got = unsafe {
                libc::mmap(
                    (self.addr as *mut u8).add(file_part).cast(),
                    rest,
                    libc::PROT_READ,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_FIXED,
                    -1,
                    0,
                )
            };
            if got == libc::MAP_FAILED {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    }

    /// Host address of the window (for KVM's memory slot).
    pub fn host_addr(&self) -> u64 {
        self.addr as u64
    }

    pub fn size(&self) -> u64 {
        self.size as u64
    }

    /// Reads `buf.len()` bytes at `offset` of the window (tests, checks).
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> bool {
        let Some(end) = offset.checked_add(buf.len() as u64) else {
            return false;
        };
        if end > self.size as u64 {
            return false;
        }
        // SAFETY: [offset, end) lies inside the live mapping (checked above),
        // which is readable in both modes.
        unsafe {
            std::ptr::copy_nonoverlapping(
                (self.addr as *const u8).add(offset as usize),
                buf.as_mut_ptr(),
                buf.len(),
            )
        };
        true
    }
}

impl Drop for PmemMapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the window this value created and owns.
        unsafe { libc::munmap(self.addr, self.size) };
    }
}
