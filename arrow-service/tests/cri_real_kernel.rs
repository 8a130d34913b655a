//! CRI end to end with the real guest kernel: crictl's runp → create → start of the hello
//! app (examples/apps/hello) with CRI env and args; its output reaches the container log in
//! the CRI format and its exit code the container status. One real boot (~25 s on
//! nested-PVM hosts). The kernel is ARROW_TEST_KERNEL, or the cached build of
//! guest-kernel/build.sh (built on first use).

mod common;

use std::time::{Duration, Instant};

use common::cri::CriClient;
use common::Daemon;
use k8s_cri::v1::*;

#[test]
fn hello_app_through_cri_on_the_real_kernel() {
    let d = Daemon::with_real_kernel(&[]);
    let src = common::repo_root().join("examples/apps/hello");
    let store = asdk::Store::open(d.store_dir()).unwrap();
    asdk::build::build_into(&store, &src.join("hello.c"), &Default::default(), &[]).unwrap();
    let c = CriClient::connect(&d.cri_socket());
    let logs = d.dir.path().join("pods");
    let pod = c.run_pod("hello", &logs);
    let ctr = c.start_hello(&pod);
    let start = Instant::now();
    let st = loop {
        let st = c.status(&ctr).unwrap();
        if st.state == ContainerState::ContainerExited as i32 {
            break st;
        }
        assert!(
            start.elapsed() < Duration::from_secs(240),
            "the app did not finish: {st:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!((st.exit_code, st.reason.as_str()), (3, "Error"), "{st:?}");
    // The log copy finishes right after the instance.
    let path = logs.join("hello/0.log");
    let text = CriClient::wait_log(&path, " stdout F exit 3");
    for want in [
        " stdout F hello from Arrow",
        " stdout F argv[1]=--exit",
        " stdout F argv[2]=3",
        " stdout F env GREETING=from CRI",
        " stdout F exit 3",
    ] {
        assert!(
            text.contains(want),
            "{want:?} missing from the log:\n{text}"
        );
    }
    assert!(text.lines().all(|l| l.split(' ').nth(1) == Some("stdout")));
    c.call(c.runtime().remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: pod,
    }))
    .unwrap();
    assert!(d.vmms().is_empty());
}
