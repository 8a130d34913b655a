//! End-to-end, one boot of the real guest kernel: an Arrow image of a static app that
//! dereferences NULL is pushed from one store to a real registry (Debian's docker-registry
//! on 127.0.0.1) and pulled into a fresh store (same digest); arrow-vmm boots the pulled
//! image with `--core-dir`, the app dies of SIGSEGV, and the host gets `core.1`: an ELF
//! core whose NT_PRSTATUS names signal 11 with RIP inside the app's text. When gdb is
//! installed, `gdb -batch` opens it and prints a backtrace through `main`.

#[path = "../../asdk/tests/support/registry.rs"]
mod registry;

use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;

use arrow_e2e::{
    boot_with_args, cmdline, explain, kvm_available, one_guest_at_a_time, static_c_app,
};
use goblin::elf::{program_header::PF_X, program_header::PT_LOAD, Elf};

const NT_PRSTATUS: u32 = 1;
/// Offsets in x86-64 `struct elf_prstatus`: pr_info.si_signo, pr_cursig, pr_reg.rip.
const PRSTATUS_SIGNO: usize = 0;
const PRSTATUS_CURSIG: usize = 12;
const PRSTATUS_RIP: usize = 112 + 16 * 8;

#[test]
fn pulled_image_crashes_and_leaves_a_core_on_the_host() {
    assert!(
        kvm_available(),
        "e2e: /dev/kvm is not usable here; this test boots the real guest kernel"
    );
    let dir = tempfile::tempdir().unwrap();
    let app = static_c_app("e2e-app", dir.path());
    let app_bytes = std::fs::read(&app).unwrap();

    // Build an image with argv "segv" in store A, push it, pull it into store B.
    let spec_file = asdk::spec::SpecFile {
        name: Some("crasher".into()),
        args: vec!["segv".into()],
        ..Default::default()
    };
    let (spec, files) = asdk::Spec::resolve(&spec_file, "crasher", "1.0.0", dir.path()).unwrap();
    let built = asdk::image::assemble(&app_bytes, &spec, &files).expect("assemble");
    let a = asdk::Store::open(dir.path().join("a")).unwrap();
    a.add(&built, &["crasher:latest".parse().unwrap()]).unwrap();
    let reg = registry::Registry::start(None);
    let remote = format!("{}/crasher:1", reg.addr);
    let opts = asdk::registry::RegistryOptions {
        progress: asdk::registry::ProgressMode::Plain,
        ..Default::default()
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let pushed = rt
        .block_on(asdk::registry::push(&a, "crasher", &remote, &opts))
        .unwrap();
    let b = asdk::Store::open(dir.path().join("b")).unwrap();
    let pulled = rt
        .block_on(asdk::registry::pull(&b, &remote, &opts))
        .unwrap();
    assert_eq!(pushed.digest, built.digest);
    assert_eq!(
        pulled.digest, built.digest,
        "same image ID after the registry"
    );
    let image = b.image(&remote).unwrap();
    let initrd = b.initrd_path(&image).unwrap();

    let _one = one_guest_at_a_time();
    let cores = dir.path().join("run");
    let run = boot_with_args(
        &initrd,
        &cmdline(&image.spec.kernel_cmdline().unwrap()),
        "ARROW-E2E: hello",
        1,
        &[OsStr::new("--core-dir"), cores.as_os_str()],
    );
    eprintln!(
        "e2e crash boot (core dumps on): APP_STARTED after {:?}, whole run {:.2} s",
        run.app_started,
        run.wall.as_secs_f64()
    );
    assert_eq!(run.exit_code, Some(139), "{}", explain(&run));
    let core_path = cores.join("core.1");
    let core = std::fs::read(&core_path)
        .unwrap_or_else(|e| panic!("no {}: {e}\n{}", core_path.display(), explain(&run)));
    eprintln!("core file: {} bytes", core.len());
    check_core(&core, &app_bytes);
    gdb_backtrace(&app, &core_path);
}

/// The core is an ELF core file whose NT_PRSTATUS says SIGSEGV at an address in the
/// app's executable segment.
fn check_core(core: &[u8], app: &[u8]) {
    let elf = Elf::parse(core).expect("core parses as ELF");
    assert_eq!(elf.header.e_type, goblin::elf::header::ET_CORE);
    let status = elf
        .iter_note_headers(core)
        .expect("core has PT_NOTE")
        .filter_map(Result::ok)
        .find(|n| n.n_type == NT_PRSTATUS && n.name == "CORE")
        .expect("NT_PRSTATUS note");
    let d = status.desc;
    let u32_at = |o: usize| u32::from_le_bytes(d[o..o + 4].try_into().unwrap());
    let rip = u64::from_le_bytes(d[PRSTATUS_RIP..PRSTATUS_RIP + 8].try_into().unwrap());
    assert_eq!(u32_at(PRSTATUS_SIGNO), 11, "si_signo");
    assert_eq!(u32_at(PRSTATUS_CURSIG) & 0xffff, 11, "pr_cursig");
    // RIP lies in one of the core's executable mappings ...
    let in_core_text = elf.program_headers.iter().any(|ph| {
        ph.p_type == PT_LOAD
            && ph.p_flags & PF_X != 0
            && (ph.p_vaddr..ph.p_vaddr + ph.p_memsz).contains(&rip)
    });
    assert!(
        in_core_text,
        "RIP {rip:#x} is not in an executable mapping of the core"
    );
    // ... and, for a non-PIE app, in the app's own text.
    let bin = Elf::parse(app).unwrap();
    if bin.header.e_type == goblin::elf::header::ET_EXEC {
        let in_app = bin.program_headers.iter().any(|ph| {
            ph.p_type == PT_LOAD
                && ph.p_flags & PF_X != 0
                && (ph.p_vaddr..ph.p_vaddr + ph.p_memsz).contains(&rip)
        });
        assert!(in_app, "RIP {rip:#x} is not in the app's text");
    }
    eprintln!("core: NT_PRSTATUS signal 11, rip {rip:#x}");
}

/// `gdb -batch` reads the core: the crashing frame is `main` of the app.
fn gdb_backtrace(app: &Path, core: &Path) {
    let Ok(out) = Command::new("gdb")
        .args(["-batch", "-nx", "-ex", "info registers rip", "-ex", "bt"])
        .arg(app)
        .arg(core)
        .output()
    else {
        eprintln!("gdb not installed: skipped the gdb check (the ELF checks above ran)");
        return;
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("gdb:\n{text}");
    assert!(
        text.contains("SIGSEGV") || text.contains("signal 11"),
        "{text}"
    );
    assert!(text.contains("main"), "backtrace through main: {text}");
}
