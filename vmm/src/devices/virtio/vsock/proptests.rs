//! Property tests: random descriptor chains and packet headers from a
//! hostile guest never panic the device, never grow its state past the
//! configured limits, and every chain is returned to the guest.

use proptest::prelude::*;
use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE;
use vm_memory::{Bytes, GuestAddress};

use super::packet::{Header, HEADER_SIZE, HOST_CID};
use super::tests::{guest_mem, Guest, CID};
use super::*;
use crate::devices::virtio::{IrqTrigger, VirtioDevice};

/// Addresses: mostly inside the buffer area, sometimes anywhere.
fn addr() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => 0x100_0000u64..0x110_0000,
        1 => any::<u64>(),
    ]
}

fn desc() -> impl Strategy<Value = (u64, u32, u16)> {
    let len = prop_oneof![
        0u32..128,
        Just(HEADER_SIZE as u32),
        0u32..0x2_0000,
        any::<u32>()
    ];
    (
        addr(),
        len,
        prop_oneof![Just(0u16), Just(VRING_DESC_F_WRITE as u16)],
    )
}

fn header() -> impl Strategy<Value = Header> {
    (
        prop_oneof![Just(CID), any::<u64>()],
        prop_oneof![Just(HOST_CID), any::<u64>()],
        0u32..4,
        prop_oneof![Just(52u32), any::<u32>()],
        prop_oneof![0u32..0x1000, any::<u32>()],
        prop_oneof![Just(1u16), any::<u16>()],
        0u16..10,
        0u32..4,
        any::<u32>(),
        any::<u32>(),
    )
        .prop_map(
            |(src_cid, dst_cid, src_port, dst_port, len, type_, op, flags, buf_alloc, fwd_cnt)| {
                Header {
                    src_cid,
                    dst_cid,
                    src_port,
                    dst_port,
                    len,
                    type_,
                    op,
                    flags,
                    buf_alloc,
                    fwd_cnt,
                }
            },
        )
}

#[derive(Debug, Clone)]
enum Step {
    /// A TX chain of raw descriptors, its first buffer holding `hdr`.
    Tx(Header, Vec<(u64, u32, u16)>),
    /// A well-formed TX packet.
    Packet(Header, Vec<u8>),
    /// An RX chain of raw descriptors.
    Rx(Vec<(u64, u32, u16)>),
    /// Well-formed RX buffers.
    RxGood(usize),
    Reset,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (header(), prop::collection::vec(desc(), 1..4)).prop_map(|(h, d)| Step::Tx(h, d)),
        4 => (header(), prop::collection::vec(any::<u8>(), 0..300)).prop_map(|(h, d)| Step::Packet(h, d)),
        2 => prop::collection::vec(desc(), 1..4).prop_map(Step::Rx),
        2 => (1usize..8).prop_map(Step::RxGood),
        1 => Just(Step::Reset),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn hostile_queues_never_break_the_device(steps in prop::collection::vec(step(), 1..24)) {
        let mem = guest_mem();
        let mut g = Guest::new(&mem);
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("v.sock");
        // A listener for guest connects to port 52.
        let mut side = uds.clone().into_os_string();
        side.push("_52");
        let _side = std::os::unix::net::UnixListener::bind(std::path::Path::new(&side)).unwrap();
        let limits = Limits { max_connections: 4, max_rst_backlog: 8, ..Limits::default() };
        let mut dev = Vsock::new(CID, &uds, limits.clone()).unwrap();
        let irq = Arc::new(IrqTrigger::new().unwrap());
        let activate = |dev: &mut Vsock, g: &Guest| {
            dev.activate(ActivateContext {
                mem: mem.clone(),
                acked_features: 1 << 32,
                queues: g.queues(),
                irq: irq.clone(),
            })
            .unwrap();
        };
        activate(&mut dev, &g);
        let mut tx_pushed = 0usize;
        let mut tx_used = 0usize;
        for s in steps {
            match s {
                Step::Tx(h, descs) => {
                    let _ = mem.write_slice(&h.to_bytes(), GuestAddress(descs[0].0));
                    g.push_chain(TXQ, &descs);
                    tx_pushed += 1;
                }
                Step::Packet(h, data) => {
                    g.send(h, &data);
                    tx_pushed += 1;
                }
                Step::Rx(descs) => {
                    g.push_chain(RXQ, &descs);
                }
                Step::RxGood(n) => g.add_rx(n, 4096),
                Step::Reset => {
                    dev.reset();
                    g = Guest::new(&mem);
                    activate(&mut dev, &g);
                    tx_pushed = 0;
                    tx_used = 0;
                }
            }
            dev.pump();
            // The guest consumes what the device returned.
            tx_used += g.used(TXQ).len();
            let _ = g.used(RXQ);
            prop_assert!(dev.muxer.connection_count() <= limits.max_connections);
            prop_assert!(dev.muxer.rst_backlog() <= 2 * limits.max_rst_backlog + limits.max_connections);
            // Every TX chain comes back unless TX is paused on a full backlog.
            if !dev.muxer.rx_backlogged() {
                prop_assert_eq!(tx_used, tx_pushed);
            }
            dev.muxer.changes.clear();
            // Keep the driver's ring bookkeeping within the queue size.
            if tx_pushed >= 20 || g.outstanding(RXQ) >= 20 {
                dev.reset();
                g = Guest::new(&mem);
                activate(&mut dev, &g);
                tx_pushed = 0;
                tx_used = 0;
            }
        }
    }
}
