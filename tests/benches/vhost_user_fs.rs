//! `cargo bench -p arrow-e2e --bench vhost_user_fs`: what a vhost-user-fs
//! volume costs, with the real guest kernel, arrow-vmm and virtiofsd.
//!
//! 1. Cold boot → APP_STARTED without and with one `--fs` device (the same
//!    app; guest RAM is a memfd with `--fs`), N rounds alternating
//!    (`VFS_BENCH_N`, default 3).
//! 2. A 128 MiB generic template with one fs slot; N clones that connect
//!    it (`restore --clone --fs vol0=…`): the per-clone conversion of the
//!    clone's copy-on-write RAM into a memfd (KiB copied = the template
//!    memory file's data extents, which become the clone's own memory; ms
//!    in arrow-vmm).
//!
//! Set `ARROW_VMM` to a release build for VMM-side figures.

use std::process::{Command, Stdio};

use arrow_e2e::vfs::{conversion_cost, finish, template_with_slots, text, virtiofsd};
use arrow_e2e::{arrow_vmm, boot_with_args, cmdline, explain, initrd, static_c_app};

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let n: usize = std::env::var("VFS_BENCH_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let dir = tempfile::tempdir().unwrap();
    let share = dir.path().join("share");
    std::fs::create_dir(&share).unwrap();
    std::fs::write(share.join("hello.txt"), "hello from the host\n").unwrap();
    let app = std::fs::read(static_c_app("fs-app", dir.path())).unwrap();
    let rd = initrd(&app, 0o755, &dir.path().join("app.cpio"));

    let (mut without, mut with) = (Vec::new(), Vec::new());
    for i in 0..n {
        let run = boot_with_args(&rd, &cmdline(""), "FS-APP", 1, &[]);
        let t = run
            .app_started
            .unwrap_or_else(|| panic!("{}", explain(&run)));
        without.push(t.as_secs_f64() * 1e3);
        let socket = dir.path().join(format!("fs{i}.sock"));
        let _fsd = virtiofsd(&share, &socket);
        let fs = format!("myfs={}", socket.display());
        let run = boot_with_args(
            &rd,
            &cmdline(""),
            "FS-APP: wrote",
            1,
            &["--fs".as_ref(), fs.as_ref()],
        );
        assert_eq!(run.exit_code, Some(0), "{}", explain(&run));
        let t = run
            .app_started
            .unwrap_or_else(|| panic!("{}", explain(&run)));
        with.push(t.as_secs_f64() * 1e3);
    }
    println!(
        "cold boot -> APP_STARTED (ms): without fs {without:.0?}, with one fs device {with:.0?}"
    );
    println!(
        "cold boot -> APP_STARTED, median of {n}: without fs {:.0} ms, with one fs device {:.0} ms",
        median(&mut without),
        median(&mut with)
    );

    let tpl = template_with_slots(dir.path(), &rd, 1);
    let spec = dir.path().join("spec.json");
    std::fs::write(&spec, r#"{"app": "/app", "args": ["vol0"]}"#).unwrap();
    let (mut kib, mut ms) = (Vec::new(), Vec::new());
    for i in 0..n.max(5) {
        let socket = dir.path().join(format!("clone{i}.sock"));
        let _fsd = virtiofsd(&share, &socket);
        let o = finish(
            Command::new(arrow_vmm())
                .args(["restore", "--clone", "--from"])
                .arg(&tpl)
                .arg("--app-spec")
                .arg(&spec)
                .arg("--fs")
                .arg(format!("vol0={}", socket.display()))
                .args(["--log-level", "info"])
                .env("NO_COLOR", "1")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let (k, m) = conversion_cost(&String::from_utf8_lossy(&o.stderr))
            .unwrap_or_else(|| panic!("no conversion line: {}", text(&o)));
        kib.push(k as f64);
        ms.push(m);
    }
    let max = |v: &[f64]| v.iter().cloned().fold(0.0, f64::max);
    println!("clone RAM -> memfd: KiB copied {kib:?}, ms {ms:.1?}");
    println!(
        "clone RAM -> memfd, 128 MiB template, {} clones: {:.1} MiB copied (median), {:.1} ms median, {:.1} ms max",
        kib.len(),
        median(&mut kib.clone()) / 1024.0,
        median(&mut ms.clone()),
        max(&ms)
    );
}
