//! What an instance's environment and arguments may be, given that they travel on the
//! guest kernel's command line (`KEY=VALUE … -- ARGS`, see `asdk::Spec::kernel_cmdline`).
//!
//! Linux reads every `KEY=VALUE` before `--` as a possible kernel parameter first: a name
//! it knows (`console`, `init`, `panic`, `quiet`, …) is consumed and never reaches the app,
//! and more than `MAX_INIT_ENVS` variables or `MAX_INIT_ARGS` arguments make the kernel
//! panic when it starts the app. The command line itself is at most 2048 bytes. These
//! checks refuse such requests with the reason instead of booting a broken guest. REST and
//! CRI both create instances through [`super::Supervisor::create`], which applies them.

use std::collections::BTreeMap;

use crate::error::{Error, Result};

/// Parameter names the guest kernel (Linux 6.12 with `kernel-config/arrow.config` and
/// `guest-kernel/patches`) consumes, read from its `.init.setup` table (`__setup` and
/// `early_param`) and its built-in `__param` table (names without a module prefix).
/// Names containing '.' are left out: variable names cannot contain one.
/// Early parameters and core parameters match the whole name.
#[rustfmt::skip]
const EXACT: &[&str] = &[
    // early_param
    "alloc_mptable", "apic", "apic_extnmi", "bootconfig", "cpu_init_udelay", "debug",
    "debug_boot_weak_hash", "disable_timer_pin_1", "disableapic", "early_ioremap_debug",
    "earlycon", "earlyprintk", "fw_devlink", "gather_data_sampling", "gbpages", "hostname",
    "idle", "ignore_loglevel", "indirect_target_selection", "init_on_alloc", "init_on_free",
    "initrd", "initrdmem", "io_delay", "iommu", "keep_bootcon", "kernelcore", "l1d_flush",
    "l1tf", "lapic", "lapic_timer_c2_ok", "log_buf_len", "loglevel", "maxcpus", "mds", "mem",
    "memblock", "memmap", "mitigations", "mmio_stale_data", "movable_node", "movablecore",
    "no_kvmapf", "no_kvmclock", "no_kvmclock_vsyscall", "no_steal_acc", "no_vmw_sched_clock",
    "no_hash_pointers", "noapic", "noapictimer", "nogbpages", "nohugeiomap", "nohugevmalloc",
    "noinvpcid", "nolapic", "nolapic_timer", "nopat", "nopcid", "nopv", "nosgx", "nosmp",
    "nosmt", "nospectre_v1", "nr_cpus", "oops", "panic_on_taint", "percpu_alloc",
    "possible_cpus", "quiet", "rdrand", "reg_file_data_sampling", "retbleed", "rodata",
    "skew_tick", "spec_rstack_overflow", "spectre_bhi", "srbds", "swiotlb",
    "thread_backlog_napi", "threadirqs", "tsa", "tsc_early_khz", "tsx_async_abort",
    "update_mptable", "userpte", "vmscape",
    // core __param
    "crash_kexec_post_notifiers", "ignore_rlimit_data", "initcall_debug", "panic",
    "panic_on_warn", "panic_print", "pause_on_oops",
];

/// `__setup` names: the kernel compares each as a prefix of `KEY=VALUE` and hands the rest
/// to the parameter's handler, so `NAME=` takes exactly `NAME`, and a bare `NAME` takes
/// every variable starting with it.
#[rustfmt::skip]
const PREFIX: &[&str] = &[
    "align_va_addr=", "apicpmtimer", "clearcpuid=", "clock=", "clocksource=", "console=",
    "console_msg_format=", "coredump_filter=", "debug_alternative", "debugpat",
    "deferred_probe_timeout=", "dhash_entries=", "driver_async_probe=", "fb_tunnels=",
    "highres=", "hpet=", "ihash_entries=", "init=", "initcall_blacklist=", "initramfs_async=",
    "initramfs_options=", "iomem=", "irqaffinity=", "irqfixup", "irqpoll", "isolcpus=",
    "load_ramdisk=", "lpj=", "memhp_default_state=", "mhash_entries=", "mphash_entries=",
    "no_console_suspend", "no_file_caps", "no_ipi_broadcast=", "no_timer_check", "noexec32=",
    "nofsgsbase", "nohpet", "nohz=", "nohz_full=", "noinitrd", "noirqdebug", "nonmi_ipi",
    "norandmaps", "noreplace_smp", "notsc", "ntp_tick_adj=", "print_fatal_signals=", "rdinit=",
    "reboot=", "relax_domain_level=", "reserve=", "reserve_mem=", "reset_devices",
    "retain_initrd", "ring3mwait=", "ro", "root=", "rootdelay=", "rootflags=", "rootfstype=",
    "rootwait", "rw", "sched_thermal_decay_shift=", "show_lapic=", "slab_max_order=",
    "slab_merge", "slab_min_objects=", "slab_min_order=", "slab_nomerge", "slub_max_order=",
    "slub_merge", "slub_min_objects=", "slub_min_order=", "slub_nomerge", "stack_guard_gap=",
    "strict_sas_size", "tsc=", "unknown_nmi_panic", "vdso=",
];

/// Variables the kernel sets itself (it replaces them rather than adding entries).
const KERNEL_SET: &[&str] = &["HOME", "TERM"];

/// The kernel's `MAX_INIT_ENVS` (32) minus the two it sets itself.
pub const MAX_ENV: usize = 30;
/// The kernel's `MAX_INIT_ARGS` (32) minus argv[0].
pub const MAX_ARGS: usize = 31;
/// The guest command line is at most 2048 bytes with its NUL (x86 `COMMAND_LINE_SIZE`);
/// arrow-vmm appends its device (`virtio_mmio.device=…`) and host-compatibility flags
/// (about 200 bytes), so arrowd keeps this much free.
pub const CMDLINE_RESERVE: usize = 256;
/// Longest command line arrowd passes to arrow-vmm.
pub const MAX_CMDLINE: usize = 2047 - CMDLINE_RESERVE;

/// The kernel parameter `key` would be taken as, if any.
fn kernel_param(key: &str) -> Option<&'static str> {
    if let Some(p) = EXACT.iter().find(|p| **p == key) {
        return Some(p);
    }
    PREFIX.iter().copied().find(|p| match p.strip_suffix('=') {
        Some(name) => name == key,
        None => key.starts_with(p),
    })
}

fn check_key(k: &str) -> Result<()> {
    let ok = k.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !ok {
        return Err(Error::Invalid(format!(
            "bad environment variable name {k:?}: use letters, digits and '_' (not starting with a digit), as in -e KEY=VALUE"
        )));
    }
    if let Some(p) = kernel_param(k) {
        return Err(Error::Invalid(format!(
            "environment variable {k:?} cannot be passed: the guest kernel would take it as its {:?} parameter and the app would never see it; rename the variable",
            p.trim_end_matches('=')
        )));
    }
    Ok(())
}

/// Checks the names of variables a request adds.
pub fn check_keys<'a>(keys: impl IntoIterator<Item = &'a String>) -> Result<()> {
    keys.into_iter().try_for_each(|k| check_key(k))
}

/// Checks the merged environment and arguments against the kernel's limits.
pub fn check_counts(env: &BTreeMap<String, String>, args: &[String]) -> Result<()> {
    let n = env
        .keys()
        .filter(|k| !KERNEL_SET.contains(&k.as_str()))
        .count();
    if n > MAX_ENV {
        return Err(Error::Invalid(format!(
            "too many environment variables ({n}, the image's and the request's together): the guest kernel passes at most {MAX_ENV} to the app; drop some or pass settings in a file"
        )));
    }
    if args.len() > MAX_ARGS {
        return Err(Error::Invalid(format!(
            "too many arguments ({}): the guest kernel passes at most {MAX_ARGS} to the app",
            args.len()
        )));
    }
    Ok(())
}

/// Checks the final command line's length.
pub fn check_cmdline(cmdline: &str) -> Result<()> {
    if cmdline.len() > MAX_CMDLINE {
        return Err(Error::Invalid(format!(
            "environment, arguments and volume paths are too long: the guest kernel command line would be {} bytes, at most {MAX_CMDLINE} fit (2048 less what arrow-vmm adds); shorten values or pass them in a file",
            cmdline.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_parameters_are_refused() {
        for k in [
            "console", "init", "panic", "quiet", "root", "rootwait", "loglevel",
        ] {
            let e = check_key(k).unwrap_err().to_string();
            assert!(e.contains("guest kernel would take it"), "{k}: {e}");
        }
        // A bare __setup name is a prefix.
        assert!(check_key("rootwait_extra").is_err());
        // `NAME=` setups take only NAME; early params only the exact name.
        for k in [
            "PATH",
            "consoles",
            "MODE",
            "panicky",
            "HOME",
            "http_proxy",
            "debug_level",
        ] {
            check_key(k).unwrap_or_else(|e| panic!("{k}: {e}"));
        }
        assert!(check_key("a.b").is_err());
        assert!(check_key("1A").is_err());
    }

    #[test]
    fn limits() {
        let mut env: BTreeMap<String, String> = (0..MAX_ENV)
            .map(|i| (format!("K{i}"), "v".to_owned()))
            .collect();
        env.insert("HOME".into(), "/x".into());
        check_counts(&env, &[]).unwrap();
        env.insert("ONE_MORE".into(), "v".into());
        assert!(check_counts(&env, &[])
            .unwrap_err()
            .to_string()
            .contains("at most 30"));
        let args = vec!["a".to_owned(); MAX_ARGS + 1];
        assert!(check_counts(&BTreeMap::new(), &args).is_err());
        check_cmdline(&"x".repeat(MAX_CMDLINE)).unwrap();
        assert!(check_cmdline(&"x".repeat(MAX_CMDLINE + 1)).is_err());
    }
}
