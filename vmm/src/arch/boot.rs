//! Loading the kernel, initrd and command line, and writing the boot
//! protocol structures (Linux zero page or PVH start info).

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::{load_cmdline, Cmdline, KernelLoader};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::layout::*;
use super::regs::EntryMode;
use crate::GuestMemoryMmap;

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("cannot open kernel {path}: {source}")]
    KernelOpen {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("kernel {path} is not an ELF file{hint}")]
    KernelNotElf { path: PathBuf, hint: &'static str },
    #[error("kernel {path} is a {what} ELF; arrow-vmm boots a 64-bit x86-64 vmlinux")]
    KernelWrongArch { path: PathBuf, what: String },
    #[error("cannot load kernel {path}: {source}")]
    KernelLoad {
        path: PathBuf,
        source: linux_loader::loader::Error,
    },
    #[error("kernel {path} has its entry point below 1 MiB: it is not a bootable vmlinux (a user-space program?)")]
    KernelEntryTooLow { path: PathBuf },
    #[error(
        "kernel {path} does not fit in guest memory (or is truncated): give the VM more --memory"
    )]
    KernelTooLarge { path: PathBuf },
    #[error("kernel {path} has a PVH entry note but it is invalid")]
    BadPvhNote { path: PathBuf },
    #[error("cannot read initrd {path}: {source}")]
    InitrdRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "initrd {path} ({size} bytes) does not fit in guest memory after the kernel; give the VM more --memory"
    )]
    InitrdTooLarge { path: PathBuf, size: u64 },
    #[error("kernel command line is invalid or longer than {CMDLINE_MAX} bytes: {0}")]
    Cmdline(String),
    #[error("cannot write boot structures into guest memory: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
    #[error("cannot write boot parameters: {0}")]
    Configurator(#[from] linux_loader::configurator::Error),
}

/// Which boot protocol to use.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
pub enum BootProtocol {
    /// PVH when the kernel has a PVH note, else the Linux 64-bit protocol.
    #[default]
    Auto,
    /// Linux 64-bit boot protocol (zero page).
    Linux64,
    /// Xen PVH entry (the kernel must have the PVH note).
    Pvh,
}

/// Where the boot vCPU starts.
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    pub addr: u64,
    pub mode: EntryMode,
}

/// Checks the ELF header with goblin so that a wrong file gets a clear error
/// before linux-loader's generic ones.
fn check_kernel_header(path: &Path, file: &mut File) -> Result<(), BootError> {
    let mut head = [0u8; 0x210];
    let n = read_up_to(file, &mut head).map_err(|source| BootError::KernelOpen {
        path: path.into(),
        source,
    })?;
    let head = &head[..n];
    if head.len() < 64 || &head[..4] != b"\x7fELF" {
        let hint = if head.len() >= 0x206 && &head[0x202..0x206] == b"HdrS" {
            " (it looks like a bzImage: pass the uncompressed vmlinux)"
        } else {
            ""
        };
        return Err(BootError::KernelNotElf {
            path: path.into(),
            hint,
        });
    }
    let header = goblin::elf::Elf::parse_header(head).map_err(|_| BootError::KernelNotElf {
        path: path.into(),
        hint: " (its ELF header is malformed)",
    })?;
    let machine = goblin::elf::header::machine_to_str(header.e_machine);
    let is_64 = header.e_ident[goblin::elf::header::EI_CLASS] == goblin::elf::header::ELFCLASS64;
    if header.e_machine != goblin::elf::header::EM_X86_64 || !is_64 {
        let bits = if is_64 { "64-bit" } else { "32-bit" };
        return Err(BootError::KernelWrongArch {
            path: path.into(),
            what: format!("{bits} {machine}"),
        });
    }
    Ok(())
}

fn read_up_to(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Loads the kernel ELF; returns its entry and the end of its image.
pub fn load_kernel(
    mem: &GuestMemoryMmap,
    path: &Path,
    protocol: BootProtocol,
) -> Result<(Entry, u64), BootError> {
    let mut file = File::open(path).map_err(|source| BootError::KernelOpen {
        path: path.into(),
        source,
    })?;
    check_kernel_header(path, &mut file)?;
    let loaded =
        Elf::load(mem, None, &mut file, Some(GuestAddress(HIGH_MEM_START))).map_err(|source| {
            match source {
                linux_loader::loader::Error::Elf(
                    linux_loader::loader::elf::Error::InvalidPvhNote,
                ) => BootError::BadPvhNote { path: path.into() },
                linux_loader::loader::Error::Elf(
                    linux_loader::loader::elf::Error::InvalidEntryAddress,
                ) => BootError::KernelEntryTooLow { path: path.into() },
                linux_loader::loader::Error::Elf(
                    linux_loader::loader::elf::Error::ReadKernelImage,
                ) => BootError::KernelTooLarge { path: path.into() },
                source => BootError::KernelLoad {
                    path: path.into(),
                    source,
                },
            }
        })?;
    let pvh = match loaded.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(addr) => Some(addr.0),
        _ => None,
    };
    let entry = match (protocol, pvh) {
        (BootProtocol::Auto | BootProtocol::Pvh, Some(addr)) => Entry {
            addr,
            mode: EntryMode::Pvh,
        },
        (BootProtocol::Pvh, None) => {
            tracing::warn!("kernel has no PVH note; using the Linux 64-bit boot protocol");
            Entry {
                addr: loaded.kernel_load.0,
                mode: EntryMode::Linux64,
            }
        }
        _ => Entry {
            addr: loaded.kernel_load.0,
            mode: EntryMode::Linux64,
        },
    };
    tracing::debug!(entry = format_args!("{:#x}", entry.addr), mode = ?entry.mode, end = format_args!("{:#x}", loaded.kernel_end), "kernel loaded");
    Ok((entry, loaded.kernel_end))
}

/// Loads the initrd at the top of low RAM, page aligned; returns (addr, size).
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    kernel_end: u64,
    mem_size: u64,
) -> Result<(u64, u64), BootError> {
    let data = std::fs::read(path).map_err(|source| BootError::InitrdRead {
        path: path.into(),
        source,
    })?;
    let size = data.len() as u64;
    let too_large = || BootError::InitrdTooLarge {
        path: path.into(),
        size,
    };
    let top = low_ram_end(mem_size);
    let addr = top.checked_sub(size).ok_or_else(too_large)? & !0xfff;
    if addr < kernel_end.max(HIGH_MEM_START) {
        return Err(too_large());
    }
    mem.write_slice(&data, GuestAddress(addr))?;
    Ok((addr, size))
}

/// Writes the command line and the protocol's boot structure.
pub fn write_boot_params(
    mem: &GuestMemoryMmap,
    entry: Entry,
    cmdline: &str,
    initrd: Option<(u64, u64)>,
    mem_size: u64,
) -> Result<(), BootError> {
    let cl =
        Cmdline::try_from(cmdline, CMDLINE_MAX).map_err(|e| BootError::Cmdline(e.to_string()))?;
    load_cmdline(mem, GuestAddress(CMDLINE_ADDR), &cl)
        .map_err(|e| BootError::Cmdline(e.to_string()))?;
    let map = e820_map(mem_size);
    match entry.mode {
        EntryMode::Linux64 => {
            let mut params = boot_params::default();
            params.hdr.type_of_loader = 0xff;
            params.hdr.boot_flag = 0xaa55;
            params.hdr.header = 0x5372_6448; // "HdrS"
            params.hdr.kernel_alignment = 0x0100_0000;
            params.hdr.cmd_line_ptr = CMDLINE_ADDR as u32;
            params.hdr.cmdline_size = cmdline.len() as u32 + 1;
            if let Some((addr, size)) = initrd {
                params.hdr.ramdisk_image = addr as u32;
                params.hdr.ramdisk_size = size as u32;
            }
            for (slot, e) in params.e820_table.iter_mut().zip(&map) {
                *slot = boot_e820_entry {
                    addr: e.addr,
                    size: e.size,
                    r#type: e.kind as u32,
                };
            }
            params.e820_entries = map.len() as u8;
            LinuxBootConfigurator::write_bootparams::<GuestMemoryMmap>(
                &BootParams::new(&params, GuestAddress(ZERO_PAGE_ADDR)),
                mem,
            )?;
        }
        EntryMode::Pvh => {
            let mut info = hvm_start_info {
                magic: 0x336e_c578,
                version: 1,
                cmdline_paddr: CMDLINE_ADDR,
                memmap_paddr: PVH_MEMMAP_ADDR,
                memmap_entries: map.len() as u32,
                ..Default::default()
            };
            let memmap: Vec<hvm_memmap_table_entry> = map
                .iter()
                .map(|e| hvm_memmap_table_entry {
                    addr: e.addr,
                    size: e.size,
                    type_: e.kind as u32,
                    reserved: 0,
                })
                .collect();
            let mut params = BootParams::new(&info, GuestAddress(PVH_INFO_ADDR));
            if let Some((addr, size)) = initrd {
                info.nr_modules = 1;
                info.modlist_paddr = PVH_MODLIST_ADDR;
                params = BootParams::new(&info, GuestAddress(PVH_INFO_ADDR));
                let module = hvm_modlist_entry {
                    paddr: addr,
                    size,
                    ..Default::default()
                };
                params.set_modules(&[module], GuestAddress(PVH_MODLIST_ADDR));
            }
            params.set_sections(&memmap, GuestAddress(PVH_MEMMAP_ADDR));
            PvhBootConfigurator::write_bootparams::<GuestMemoryMmap>(&params, mem)?;
        }
    }
    debug_assert!(mem.address_in_range(GuestAddress(ZERO_PAGE_ADDR)));
    Ok(())
}
