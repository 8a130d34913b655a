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
}

/// Writes every page that is not all zeroes; returns the regions' layout and
/// the number of pages written.
pub fn dump(mem: &GuestMemoryMmap, path: &Path) -> Result<(Vec<RegionInfo>, u64), MemoryError> {
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

/// Maps the memory file privately: reads share the file's page cache, writes
/// go to anonymous copies owned by this process.
pub fn map_private(path: &Path, regions: &[RegionInfo]) -> Result<GuestMemoryMmap, MemoryError> {
    let p = path.display().to_string();
    let file = File::open(path).map_err(|source| MemoryError::Open {
        path: p.clone(),
        source,
    })?;
    let expected: u64 = regions.iter().map(|r| r.size).sum();
    let actual = file
        .metadata()
        .map_err(|source| MemoryError::Open {
            path: p.clone(),
            source,
        })?
        .len();
    if actual != expected {
        return Err(MemoryError::Size {
            path: p,
            expected,
            actual,
        });
    }
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
