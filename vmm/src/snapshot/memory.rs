//! Guest memory in a snapshot: a sparse file (holes where the guest never
//! wrote), mapped back `MAP_PRIVATE` so any number of restored VMs share its
//! pages copy-on-write and the file itself is never modified.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use serde::{Deserialize, Serialize};
use vm_memory::mmap::MmapRegion;
use vm_memory::{
    Address, Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryRegion,
    GuestRegionMmap,
};

use crate::GuestMemoryMmap;

const PAGE: usize = 4096;
/// Bytes read from guest memory per step while dumping.
const CHUNK: usize = 1 << 20;

/// One guest RAM region and where it lives in the memory file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionInfo {
    pub guest_addr: u64,
    pub size: u64,
    pub file_offset: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("cannot write memory file {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot read guest memory while saving it: {0}")]
    Read(#[from] vm_memory::GuestMemoryError),
    #[error("cannot open memory file {path}: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
    #[error("memory file {path} has {actual} bytes, the snapshot says {expected}: it is truncated or from another snapshot")]
    Size {
        path: String,
        expected: u64,
        actual: u64,
    },
    #[error("cannot map memory file {path}: {reason}")]
    Map { path: String, reason: String },
    #[error("snapshot memory layout is invalid: {0}; the snapshot is damaged or was not written by arrow-vmm: take it again")]
    Layout(String),
}

/// Checks a snapshot's region table against the memory file's length before
/// anything is mapped: every region is page aligned, non-empty, lies wholly
/// inside the file (a mapping past EOF would SIGBUS the VMM when the guest
/// touches it), and no two regions overlap in the file or in guest memory.
/// All sums are overflow-checked. Returns the total size.
pub fn validate_regions(regions: &[RegionInfo], file_len: u64) -> Result<u64, MemoryError> {
    let bad = |m: String| Err(MemoryError::Layout(m));
    if regions.is_empty() {
        return bad("no memory regions".into());
    }
    let page = PAGE as u64;
    let mut total = 0u64;
    for (i, r) in regions.iter().enumerate() {
        if r.size == 0
            || r.size % page != 0
            || r.file_offset % page != 0
            || r.guest_addr % page != 0
        {
            return bad(format!(
                "region {i} (guest {:#x}, size {:#x}, file offset {:#x}) is empty or not page aligned",
                r.guest_addr, r.size, r.file_offset
            ));
        }
        let Some(file_end) = r.file_offset.checked_add(r.size) else {
            return bad(format!("region {i}: file offset + size overflows"));
        };
        if file_end > file_len {
            return bad(format!(
                "region {i} ends at byte {file_end} of a {file_len}-byte memory file"
            ));
        }
        if r.guest_addr.checked_add(r.size).is_none() {
            return bad(format!("region {i}: guest address + size overflows"));
        }
        if usize::try_from(r.size).is_err() {
            return bad(format!(
                "region {i} is larger than this host's address space"
            ));
        }
        total = match total.checked_add(r.size) {
            Some(t) => t,
            None => return bad("the region sizes overflow when summed".into()),
        };
        for (j, o) in regions[..i].iter().enumerate() {
            // Both ends were checked above for the earlier regions.
            let overlap = |a: u64, b: u64| a < b + o.size && b < a + r.size;
            if overlap(r.file_offset, o.file_offset) {
                return bad(format!("regions {j} and {i} overlap in the memory file"));
            }
            if overlap(r.guest_addr, o.guest_addr) {
                return bad(format!("regions {j} and {i} overlap in guest memory"));
            }
        }
    }
    Ok(total)
}

/// Writes every page that is not all zeroes; returns the regions' layout and
/// the number of pages written.
pub fn dump(mem: &GuestMemoryMmap, path: &Path) -> Result<(Vec<RegionInfo>, u64), MemoryError> {
    dump_skipping(mem, path, &[])
}

/// [`dump`] that never reads the guest ranges `skip` (guest address, size):
/// they are holes in the file. Unplugged hotplug memory is skipped so: it
/// is zero by definition, and reading a shared memfd mapping (`--fs`) would
/// allocate every page read.
pub fn dump_skipping(
    mem: &GuestMemoryMmap,
    path: &Path,
    skip: &[(u64, u64)],
) -> Result<(Vec<RegionInfo>, u64), MemoryError> {
    let werr = |source| MemoryError::Write {
        path: path.display().to_string(),
        source,
    };
    let file = File::create(path).map_err(werr)?;
    let mut regions = Vec::new();
    let mut offset = 0u64;
    let mut written = 0u64;
    let mut buf = vec![0u8; CHUNK];
    for region in mem.iter() {
        let len = region.len();
        regions.push(RegionInfo {
            guest_addr: region.start_addr().raw_value(),
            size: len,
            file_offset: offset,
        });
        let mut pos = 0u64;
        while pos < len {
            let n = CHUNK.min((len - pos) as usize);
            let at = region.start_addr().raw_value() + pos;
            if skip
                .iter()
                .any(|&(a, l)| at >= a && at + n as u64 <= a.saturating_add(l))
            {
                pos += n as u64;
                continue;
            }
            mem.read_slice(&mut buf[..n], region.start_addr().unchecked_add(pos))?;
            for (i, page) in buf[..n].chunks(PAGE).enumerate() {
                if page.iter().any(|&b| b != 0) {
                    file.write_all_at(page, offset + pos + (i * PAGE) as u64)
                        .map_err(werr)?;
                    written += 1;
                }
            }
            pos += n as u64;
        }
        offset += len;
    }
    // Holes for the rest: the file is as long as guest memory.
    file.set_len(offset).map_err(werr)?;
    file.sync_all().map_err(werr)?;
    Ok((regions, written))
}

/// Opens the memory file and checks that it is exactly as long as the
/// regions say (a shorter file would fault the guest with SIGBUS).
pub fn open_checked(path: &Path, regions: &[RegionInfo]) -> Result<File, MemoryError> {
    let p = path.display().to_string();
    let open_err = |source| MemoryError::Open {
        path: p.clone(),
        source,
    };
    let file = File::open(path).map_err(open_err)?;
    let expected = validate_regions(regions, u64::MAX)?;
    let actual = file.metadata().map_err(open_err)?.len();
    if actual != expected {
        return Err(MemoryError::Size {
            path: p,
            expected,
            actual,
        });
    }
    validate_regions(regions, actual)?;
    Ok(file)
}

/// Maps the memory file privately: reads share the file's page cache, writes
/// go to anonymous copies owned by this process.
pub fn map_private(path: &Path, regions: &[RegionInfo]) -> Result<GuestMemoryMmap, MemoryError> {
    let p = path.display().to_string();
    let file = open_checked(path, regions)?;
    let mut mapped = Vec::with_capacity(regions.len());
    for r in regions {
        let map_err = |reason: String| MemoryError::Map {
            path: p.clone(),
            reason,
        };
        let fd = file.try_clone().map_err(|e| map_err(e.to_string()))?;
        let region = MmapRegion::build(
            Some(FileOffset::new(fd, r.file_offset)),
            r.size as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_NORESERVE,
        )
        .map_err(|e| map_err(e.to_string()))?;
        let region = GuestRegionMmap::new(region, GuestAddress(r.guest_addr))
            .ok_or_else(|| map_err("region wraps the address space".into()))?;
        mapped.push(region);
    }
    GuestMemoryMmap::from_regions(mapped).map_err(|e| MemoryError::Map {
        path: p,
        reason: e.to_string(),
    })
}

/// Reserves guest memory with the layout of `regions` but no content
/// (anonymous, nothing committed): a pooled VM registers it with KVM ahead
/// of time and [`map_over`] puts a template's memory file in its place.
pub fn reserve(regions: &[RegionInfo]) -> Result<GuestMemoryMmap, MemoryError> {
    let map_err = |reason: String| MemoryError::Map {
        path: "(anonymous reservation)".into(),
        reason,
    };
    let mut mapped = Vec::with_capacity(regions.len());
    for r in regions {
        let size = usize::try_from(r.size).map_err(|e| map_err(e.to_string()))?;
        let region = MmapRegion::build(
            None,
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
        )
        .map_err(|e| map_err(e.to_string()))?;
        let region = GuestRegionMmap::new(region, GuestAddress(r.guest_addr))
            .ok_or_else(|| map_err("region wraps the address space".into()))?;
        mapped.push(region);
    }
    GuestMemoryMmap::from_regions(mapped).map_err(|e| map_err(e.to_string()))
}

/// Maps `file` (checked by [`open_checked`] against the same `regions`)
/// copy-on-write over the reserved memory `mem`, in place: host addresses,
/// and so KVM's memory slots, stay as they are; KVM drops its old
/// translations through its MMU notifier. The file is never written.
pub fn map_over(
    mem: &GuestMemoryMmap,
    file: &File,
    regions: &[RegionInfo],
) -> Result<(), MemoryError> {
    let map_err = |reason: String| MemoryError::Map {
        path: "(template memory)".into(),
        reason,
    };
    for r in regions {
        let region = mem
            .iter()
            .find(|g| g.start_addr().raw_value() == r.guest_addr && g.len() == r.size)
            .ok_or_else(|| {
                map_err(format!(
                    "no reserved region at {:#x} of {} bytes",
                    r.guest_addr, r.size
                ))
            })?;
        let offset = libc::off_t::try_from(r.file_offset).map_err(|e| map_err(e.to_string()))?;
        let addr = region.as_ptr().cast::<libc::c_void>();
        // SAFETY: `addr` and `r.size` are exactly one region of `mem`, a
        // mapping this process owns and keeps for the VM's life; MAP_FIXED
        // replaces its pages with the file's at the same address, so every
        // pointer into guest memory (KVM slots, devices) stays valid. The
        // file's length was checked to cover every region.
        let got = unsafe {
            libc::mmap(
                addr,
                region.len() as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_FIXED | libc::MAP_NORESERVE,
                std::os::fd::AsRawFd::as_raw_fd(file),
                offset,
            )
        };
        if got != addr {
            return Err(map_err(std::io::Error::last_os_error().to_string()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(guest_addr: u64, size: u64, file_offset: u64) -> RegionInfo {
        RegionInfo {
            guest_addr,
            size,
            file_offset,
        }
    }

    #[test]
    fn region_tables_are_checked_before_mapping() {
        let mib = 1u64 << 20;
        assert_eq!(validate_regions(&[region(0, mib, 0)], mib).unwrap(), mib);
        let bad: &[(&[RegionInfo], u64)] = &[
            (&[], 0),
            (&[region(0, 0, 0)], 0),
            (&[region(0, 100, 0)], mib),
            (&[region(0, mib, 4096)], mib),
            (&[region(0, mib, u64::MAX - 4095)], mib),
            (&[region(u64::MAX - 4095, mib, 0)], mib),
            (
                &[region(0, u64::MAX - 4095, 0), region(1 << 40, 8192, 0)],
                u64::MAX,
            ),
            (&[region(0, mib, 0), region(2 * mib, mib, 0)], 2 * mib),
            (&[region(0, mib, 0), region(mib / 2, mib, mib)], 2 * mib),
        ];
        for (regions, len) in bad {
            assert!(
                matches!(validate_regions(regions, *len), Err(MemoryError::Layout(_))),
                "{regions:?} in a {len}-byte file must be refused"
            );
        }
    }

    /// A state whose sizes add up to the file's length but whose region lies
    /// past its end used to be mapped and SIGBUS the VMM on first touch.
    #[test]
    fn region_past_the_end_of_the_file_is_refused_not_mapped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("memory.bin");
        std::fs::File::create(&path)
            .unwrap()
            .set_len(2 << 20)
            .unwrap();
        let regions = [region(0, 1 << 20, 0), region(1 << 30, 1 << 20, 4 << 20)];
        let e = map_private(&path, &regions).unwrap_err();
        assert!(matches!(e, MemoryError::Layout(_)), "{e}");
        assert!(e.to_string().contains("ends at byte"), "{e}");
    }

    #[test]
    fn dump_is_sparse_and_private_maps_do_not_write_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("memory.bin");
        let mem = GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 1 << 20),
            (GuestAddress(1 << 30), 1 << 20),
        ])
        .unwrap();
        mem.write_obj(0xdead_beefu32, GuestAddress(0x2000)).unwrap();
        mem.write_obj(0x1234u32, GuestAddress((1 << 30) + 8))
            .unwrap();
        let (regions, pages) = dump(&mem, &path).unwrap();
        assert_eq!(pages, 2);
        assert_eq!(
            regions[1],
            RegionInfo {
                guest_addr: 1 << 30,
                size: 1 << 20,
                file_offset: 1 << 20
            }
        );
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), 2 << 20);
        use std::os::unix::fs::MetadataExt;
        assert!(
            meta.blocks() * 512 < (64 << 10),
            "file must be sparse, has {} blocks",
            meta.blocks()
        );

        let a = map_private(&path, &regions).unwrap();
        let b = map_private(&path, &regions).unwrap();
        assert_eq!(
            a.read_obj::<u32>(GuestAddress(0x2000)).unwrap(),
            0xdead_beef
        );
        a.write_obj(7u32, GuestAddress(0x2000)).unwrap();
        assert_eq!(
            b.read_obj::<u32>(GuestAddress(0x2000)).unwrap(),
            0xdead_beef,
            "clones are isolated"
        );
        assert_eq!(
            b.read_obj::<u32>(GuestAddress((1 << 30) + 8)).unwrap(),
            0x1234
        );
        drop(a);
        let again = map_private(&path, &regions).unwrap();
        assert_eq!(
            again.read_obj::<u32>(GuestAddress(0x2000)).unwrap(),
            0xdead_beef,
            "file untouched"
        );

        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(4096)
            .unwrap();
        assert!(matches!(
            map_private(&path, &regions),
            Err(MemoryError::Size { .. })
        ));
    }

    #[test]
    fn reserved_memory_takes_the_file_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("memory.bin");
        let src = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        src.write_obj(0xfeed_f00du32, GuestAddress(0x3000)).unwrap();
        let (regions, _) = dump(&src, &path).unwrap();

        let mem = reserve(&regions).unwrap();
        let host = mem.get_host_address(GuestAddress(0x3000)).unwrap();
        assert_eq!(mem.read_obj::<u32>(GuestAddress(0x3000)).unwrap(), 0);
        let file = open_checked(&path, &regions).unwrap();
        map_over(&mem, &file, &regions).unwrap();
        assert_eq!(mem.get_host_address(GuestAddress(0x3000)).unwrap(), host);
        assert_eq!(
            mem.read_obj::<u32>(GuestAddress(0x3000)).unwrap(),
            0xfeed_f00d
        );
        mem.write_obj(1u32, GuestAddress(0x3000)).unwrap();
        let again = map_private(&path, &regions).unwrap();
        assert_eq!(
            again.read_obj::<u32>(GuestAddress(0x3000)).unwrap(),
            0xfeed_f00d,
            "the file is never written"
        );

        let other = vec![RegionInfo {
            guest_addr: 1 << 30,
            ..regions[0].clone()
        }];
        assert!(map_over(&mem, &file, &other).is_err());
    }
}
