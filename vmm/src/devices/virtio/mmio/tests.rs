use std::sync::{Arc, Mutex};

use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use super::*;
use crate::devices::virtio::{ActivateError, INT_VRING};

struct Dummy {
    evts: Vec<EventFd>,
    activated: Option<(u64, Vec<QueueConfig>)>,
    resets: usize,
}

impl VirtioDevice for Dummy {
    fn device_type(&self) -> u32 {
        42
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[16, 32]
    }
    fn avail_features(&self) -> u64 {
        (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_F_RING_EVENT_IDX) | 0b101
    }
    fn queue_evts(&self) -> &[EventFd] {
        &self.evts
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        data.fill(offset as u8 + 0xa0);
    }
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        self.activated = Some((
            ctx.acked_features,
            ctx.queues.iter().map(|q| q.state().into()).collect(),
        ));
        ctx.irq.trigger(INT_VRING);
        Ok(())
    }
    fn reset(&mut self) {
        self.activated = None;
        self.resets += 1;
    }
    fn active_queues(&self) -> Option<Vec<QueueConfig>> {
        self.activated.as_ref().map(|(_, q)| q.clone())
    }
}

fn setup() -> (MmioTransport, Arc<Mutex<Dummy>>) {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
    let dev = Arc::new(Mutex::new(Dummy {
        evts: vec![
            EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        ],
        activated: None,
        resets: 0,
    }));
    let t = MmioTransport::new(mem, dev.clone()).unwrap();
    (t, dev)
}

fn r(t: &mut MmioTransport, off: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(off, &mut b);
    u32::from_le_bytes(b)
}

fn w(t: &mut MmioTransport, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes());
}

fn negotiate(t: &mut MmioTransport, features: u64) {
    w(t, REG_STATUS, status::ACKNOWLEDGE);
    w(t, REG_STATUS, status::ACKNOWLEDGE | status::DRIVER);
    w(t, REG_DRIVER_FEATURES_SEL, 0);
    w(t, REG_DRIVER_FEATURES, features as u32);
    w(t, REG_DRIVER_FEATURES_SEL, 1);
    w(t, REG_DRIVER_FEATURES, (features >> 32) as u32);
    w(
        t,
        REG_STATUS,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
}

fn setup_queue(t: &mut MmioTransport, idx: u32, base: u64) {
    w(t, REG_QUEUE_SEL, idx);
    assert_eq!(r(t, REG_QUEUE_READY), 0);
    w(t, REG_QUEUE_NUM, 16);
    w(t, REG_QUEUE_DESC_LOW, base as u32);
    w(t, REG_QUEUE_DESC_HIGH, 0);
    w(t, REG_QUEUE_DRIVER_LOW, (base + 0x1000) as u32);
    w(t, REG_QUEUE_DRIVER_HIGH, 0);
    w(t, REG_QUEUE_DEVICE_LOW, (base + 0x2000) as u32);
    w(t, REG_QUEUE_DEVICE_HIGH, 0);
    w(t, REG_QUEUE_READY, 1);
}

const OK_STATUS: u32 = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;

#[test]
fn identification_registers() {
    let (mut t, _) = setup();
    assert_eq!(r(&mut t, REG_MAGIC), 0x7472_6976);
    assert_eq!(r(&mut t, REG_VERSION), 2);
    assert_eq!(r(&mut t, REG_DEVICE_ID), 42);
    assert_eq!(r(&mut t, REG_VENDOR_ID), VENDOR_ID);
    w(&mut t, REG_DEVICE_FEATURES_SEL, 0);
    assert_eq!(r(&mut t, REG_DEVICE_FEATURES), (1 << 29) | 0b101);
    w(&mut t, REG_DEVICE_FEATURES_SEL, 1);
    assert_eq!(r(&mut t, REG_DEVICE_FEATURES), 1);
    w(&mut t, REG_DEVICE_FEATURES_SEL, 7);
    assert_eq!(r(&mut t, REG_DEVICE_FEATURES), 0);
    w(&mut t, REG_QUEUE_SEL, 1);
    assert_eq!(r(&mut t, REG_QUEUE_NUM_MAX), 32);
    w(&mut t, REG_QUEUE_SEL, 2);
    assert_eq!(r(&mut t, REG_QUEUE_NUM_MAX), 0);
    assert_eq!(r(&mut t, REG_SHM_LEN_LOW), u32::MAX);
    let mut cfg = [0u8; 2];
    t.read(CONFIG_SPACE + 3, &mut cfg);
    assert_eq!(cfg, [0xa3, 0xa3]);
}

#[test]
fn bad_access_widths_are_ignored() {
    let (mut t, _) = setup();
    let mut b = [0xffu8; 2];
    t.read(REG_MAGIC, &mut b);
    assert_eq!(b, [0, 0]);
    let mut b = [0xffu8; 4];
    t.read(REG_MAGIC + 1, &mut b);
    assert_eq!(b, [0; 4]);
    t.write(REG_STATUS, &[1]);
    t.write(REG_STATUS + 2, &1u32.to_le_bytes());
    assert_eq!(r(&mut t, REG_STATUS), 0);
    t.write(REG_STATUS, &[1, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(r(&mut t, REG_STATUS), 0);
    // Unknown registers read as zero.
    assert_eq!(r(&mut t, 0x0f0), 0);
}

#[test]
fn feature_negotiation_accepts_subset_with_version_1() {
    let (mut t, _) = setup();
    negotiate(&mut t, (1 << VIRTIO_F_VERSION_1) | 0b1);
    assert_eq!(r(&mut t, REG_STATUS), OK_STATUS);
    assert_eq!(t.state().acked_features, (1 << 32) | 1);
    // Features are frozen after FEATURES_OK.
    w(&mut t, REG_DRIVER_FEATURES_SEL, 0);
    w(&mut t, REG_DRIVER_FEATURES, 0);
    assert_eq!(t.state().acked_features, (1 << 32) | 1);
}

#[test]
fn feature_negotiation_refuses_unknown_or_legacy() {
    let (mut t, _) = setup();
    negotiate(&mut t, (1 << VIRTIO_F_VERSION_1) | 0b10);
    assert_eq!(r(&mut t, REG_STATUS) & status::FEATURES_OK, 0);
    let (mut t, _) = setup();
    negotiate(&mut t, 0b1);
    assert_eq!(r(&mut t, REG_STATUS) & status::FEATURES_OK, 0);
    // Features written before DRIVER are ignored.
    let (mut t, _) = setup();
    w(&mut t, REG_DRIVER_FEATURES_SEL, 1);
    w(&mut t, REG_DRIVER_FEATURES, 1);
    assert_eq!(t.state().acked_features, 0);
}

#[test]
fn status_cannot_clear_bits_or_skip_features_ok() {
    let (mut t, dev) = setup();
    w(&mut t, REG_STATUS, status::ACKNOWLEDGE | status::DRIVER);
    w(&mut t, REG_STATUS, status::ACKNOWLEDGE);
    assert_eq!(r(&mut t, REG_STATUS), status::ACKNOWLEDGE | status::DRIVER);
    w(
        &mut t,
        REG_STATUS,
        status::ACKNOWLEDGE | status::DRIVER | status::DRIVER_OK,
    );
    assert_eq!(r(&mut t, REG_STATUS) & status::DRIVER_OK, 0);
    assert!(dev.lock().unwrap().activated.is_none());
}

#[test]
fn activation_hands_over_configured_queues() {
    let (mut t, dev) = setup();
    let features = (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_F_RING_EVENT_IDX);
    negotiate(&mut t, features);
    setup_queue(&mut t, 0, 0x1_0000);
    setup_queue(&mut t, 1, 0x2_0000);
    assert_eq!(r(&mut t, REG_QUEUE_READY), 1);
    assert_eq!(r(&mut t, REG_QUEUE_DESC_LOW), 0x2_0000);
    w(&mut t, REG_STATUS, OK_STATUS | status::DRIVER_OK);
    assert_eq!(r(&mut t, REG_STATUS), OK_STATUS | status::DRIVER_OK);
    let (acked, queues) = dev.lock().unwrap().activated.clone().unwrap();
    assert_eq!(acked, features);
    assert_eq!(queues.len(), 2);
    assert_eq!(queues[1].desc_table, 0x2_0000);
    assert_eq!(queues[1].avail_ring, 0x2_1000);
    assert_eq!(queues[1].used_ring, 0x2_2000);
    assert_eq!(queues[1].size, 16);
    assert!(queues[1].event_idx_enabled);
    // The device's interrupt reaches the VMM's irqfd and the status register.
    assert_eq!(t.irq_evt().read().unwrap(), 1);
    assert_eq!(r(&mut t, REG_INTERRUPT_STATUS), INT_VRING);
    w(&mut t, REG_INTERRUPT_ACK, INT_VRING);
    assert_eq!(r(&mut t, REG_INTERRUPT_STATUS), 0);
    // Queue registers are frozen after DRIVER_OK.
    w(&mut t, REG_QUEUE_SEL, 0);
    w(&mut t, REG_QUEUE_DESC_LOW, 0x5_0000);
    assert_eq!(r(&mut t, REG_QUEUE_DESC_LOW), 0x1_0000);
}

#[test]
fn invalid_queue_sets_needs_reset() {
    let (mut t, dev) = setup();
    negotiate(&mut t, 1 << VIRTIO_F_VERSION_1);
    setup_queue(&mut t, 0, 0x1_0000);
    // Queue 1 never made ready; then point queue 0 outside guest memory.
    w(&mut t, REG_STATUS, OK_STATUS | status::DRIVER_OK);
    assert_eq!(
        r(&mut t, REG_STATUS),
        OK_STATUS | status::DEVICE_NEEDS_RESET
    );
    assert!(dev.lock().unwrap().activated.is_none());
    assert_eq!(r(&mut t, REG_INTERRUPT_STATUS), INT_CONFIG);

    let (mut t, dev) = setup();
    negotiate(&mut t, 1 << VIRTIO_F_VERSION_1);
    setup_queue(&mut t, 0, 0x1_0000);
    setup_queue(&mut t, 1, 0xf_f000);
    w(&mut t, REG_STATUS, OK_STATUS | status::DRIVER_OK);
    assert_ne!(r(&mut t, REG_STATUS) & status::DEVICE_NEEDS_RESET, 0);
    assert!(dev.lock().unwrap().activated.is_none());
}

#[test]
fn reset_returns_to_initial_state() {
    let (mut t, dev) = setup();
    negotiate(&mut t, 1 << VIRTIO_F_VERSION_1);
    setup_queue(&mut t, 0, 0x1_0000);
    setup_queue(&mut t, 1, 0x2_0000);
    w(&mut t, REG_STATUS, OK_STATUS | status::DRIVER_OK);
    assert!(dev.lock().unwrap().activated.is_some());
    w(&mut t, REG_STATUS, 0);
    assert_eq!(r(&mut t, REG_STATUS), 0);
    assert_eq!(r(&mut t, REG_INTERRUPT_STATUS), 0);
    assert_eq!(dev.lock().unwrap().resets, 1);
    assert!(dev.lock().unwrap().activated.is_none());
    let s = t.state();
    assert_eq!(s.acked_features, 0);
    assert!(s.queues.iter().all(|q| !q.ready));
    // And it can be brought up again.
    negotiate(&mut t, 1 << VIRTIO_F_VERSION_1);
    setup_queue(&mut t, 0, 0x1_0000);
    setup_queue(&mut t, 1, 0x2_0000);
    w(&mut t, REG_STATUS, OK_STATUS | status::DRIVER_OK);
    assert!(dev.lock().unwrap().activated.is_some());
}

#[test]
fn queue_notify_signals_queue_eventfd() {
    let (mut t, dev) = setup();
    w(&mut t, NOTIFY_OFFSET, 1);
    w(&mut t, NOTIFY_OFFSET, 1);
    w(&mut t, NOTIFY_OFFSET, 9);
    assert_eq!(dev.lock().unwrap().evts[1].read().unwrap(), 2);
    assert!(dev.lock().unwrap().evts[0].read().is_err());
    // The transport's copies are the same eventfds (for KVM_IOEVENTFD).
    t.queue_evts()[0].write(1).unwrap();
    assert_eq!(dev.lock().unwrap().evts[0].read().unwrap(), 1);
}

#[test]
fn config_change_bumps_generation() {
    let (mut t, _) = setup();
    assert_eq!(r(&mut t, REG_CONFIG_GENERATION), 0);
    t.config_changed();
    assert_eq!(r(&mut t, REG_CONFIG_GENERATION), 1);
    assert_eq!(r(&mut t, REG_INTERRUPT_STATUS), INT_CONFIG);
    let s = serde_json::to_string(&t.state()).unwrap();
    assert!(s.contains("\"config_generation\":1"));
}

// ---- restore ----

fn dummy() -> Arc<Mutex<Dummy>> {
    Arc::new(Mutex::new(Dummy {
        evts: vec![
            EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        ],
        activated: None,
        resets: 0,
    }))
}

/// Guest memory as `active_state` left it: queue 1's used ring index (at
/// used ring + 2) is 5, the device's `next_used`.
fn test_mem() -> GuestMemoryMmap {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
    mem.write_obj(5u16, GuestAddress(0x2_2002)).unwrap();
    mem
}

/// A transport driven to DRIVER_OK; the device then "consumed" ring
/// entries (ring positions moved on in the device's queues).
fn active_state() -> MmioTransportState {
    let (mut t, dev) = setup();
    negotiate(&mut t, 1 << VIRTIO_F_VERSION_1);
    setup_queue(&mut t, 0, 0x1_0000);
    setup_queue(&mut t, 1, 0x2_0000);
    w(&mut t, REG_STATUS, OK_STATUS | status::DRIVER_OK);
    {
        let mut d = dev.lock().unwrap();
        let (_, q) = d.activated.as_mut().unwrap();
        q[1].next_avail = 7;
        q[1].next_used = 5;
    }
    w(&mut t, REG_QUEUE_SEL, 1);
    t.state()
}

#[test]
fn state_of_an_active_device_carries_ring_positions() {
    let s = active_state();
    assert_eq!(s.device_type, 42);
    assert_eq!(s.status, OK_STATUS | status::DRIVER_OK);
    assert_eq!((s.queues[1].next_avail, s.queues[1].next_used), (7, 5));
    assert_eq!(s.queues[1].desc_table, 0x2_0000);
    // Activation raised INT_VRING in the dummy.
    assert_eq!(s.interrupt_status, INT_VRING);
}

#[test]
fn restore_reactivates_with_ring_positions_and_registers() {
    let saved = active_state();
    let json = serde_json::to_string(&saved).unwrap();
    let state: MmioTransportState = serde_json::from_str(&json).unwrap();
    let dev = dummy();
    let mut t = MmioTransport::restore(test_mem(), dev.clone(), &state).unwrap();
    let (acked, queues) = dev.lock().unwrap().activated.clone().unwrap();
    assert_eq!(acked, 1 << VIRTIO_F_VERSION_1);
    assert_eq!((queues[1].next_avail, queues[1].next_used), (7, 5));
    assert_eq!(queues[0].used_ring, 0x1_2000);
    assert!(!queues[1].event_idx_enabled);
    // Registers read back as saved; queue registers are frozen again.
    assert_eq!(r(&mut t, REG_STATUS), OK_STATUS | status::DRIVER_OK);
    assert_eq!(r(&mut t, REG_QUEUE_DESC_LOW), 0x2_0000);
    assert_eq!(r(&mut t, REG_QUEUE_NUM), 16);
    w(&mut t, REG_QUEUE_NUM, 8);
    assert_eq!(r(&mut t, REG_QUEUE_NUM), 16);
    // The pending interrupt is re-raised on the new irqfd (Dummy raised one
    // more on activation, which is harmless).
    assert_eq!(r(&mut t, REG_INTERRUPT_STATUS), INT_VRING);
    assert!(t.irq_evt().read().unwrap() >= 1);
    // The next snapshot sees the same positions.
    assert_eq!(t.state(), state);
    // A driver reset after restore works as usual.
    w(&mut t, REG_STATUS, 0);
    assert_eq!(dev.lock().unwrap().resets, 1);
    assert_eq!(t.state().queues[1].next_avail, 0);
}

#[test]
fn restore_before_driver_ok_does_not_activate() {
    let (mut t, _) = setup();
    negotiate(&mut t, 1 << VIRTIO_F_VERSION_1);
    setup_queue(&mut t, 0, 0x1_0000);
    let saved = t.state();
    let dev = dummy();
    let mut t2 = MmioTransport::restore(test_mem(), dev.clone(), &saved).unwrap();
    assert!(dev.lock().unwrap().activated.is_none());
    assert_eq!(r(&mut t2, REG_INTERRUPT_STATUS), 0);
    // The driver carries on where it was: queue 1, then DRIVER_OK.
    setup_queue(&mut t2, 1, 0x2_0000);
    w(&mut t2, REG_STATUS, OK_STATUS | status::DRIVER_OK);
    let (_, queues) = dev.lock().unwrap().activated.clone().unwrap();
    assert_eq!(queues[0].desc_table, 0x1_0000);
    assert_eq!(queues[1].desc_table, 0x2_0000);
}

struct CfgChanging(Dummy, bool);

impl VirtioDevice for CfgChanging {
    fn device_type(&self) -> u32 {
        self.0.device_type()
    }
    fn queue_max_sizes(&self) -> &[u16] {
        self.0.queue_max_sizes()
    }
    fn avail_features(&self) -> u64 {
        self.0.avail_features()
    }
    fn queue_evts(&self) -> &[EventFd] {
        self.0.queue_evts()
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        self.0.read_config(offset, data)
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        self.0.write_config(offset, data)
    }
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        self.0.activate(ctx)
    }
    fn reset(&mut self) {
        self.0.reset()
    }
    fn active_queues(&self) -> Option<Vec<QueueConfig>> {
        self.0.active_queues()
    }
    fn take_config_changed(&mut self) -> bool {
        std::mem::take(&mut self.1)
    }
}

#[test]
fn restore_reports_config_change() {
    let mut saved = active_state();
    saved.interrupt_status = 0;
    saved.config_generation = 4;
    let Dummy { evts, .. } = Arc::into_inner(dummy()).unwrap().into_inner().unwrap();
    let dev = Arc::new(Mutex::new(CfgChanging(
        Dummy {
            evts,
            activated: None,
            resets: 0,
        },
        true,
    )));
    let mut t = MmioTransport::restore(test_mem(), dev, &saved).unwrap();
    assert_eq!(r(&mut t, REG_CONFIG_GENERATION), 5);
    assert_ne!(r(&mut t, REG_INTERRUPT_STATUS) & INT_CONFIG, 0);
}

#[test]
fn restore_rejects_snapshots_that_do_not_fit() {
    let good = active_state();
    let check = |f: &dyn Fn(&mut MmioTransportState), what: &str| {
        let mut s = good.clone();
        f(&mut s);
        let dev = dummy();
        match MmioTransport::restore(test_mem(), dev.clone(), &s) {
            Ok(_) => panic!("{what}: accepted"),
            Err(e) => assert!(!e.to_string().is_empty()),
        }
        assert!(dev.lock().unwrap().activated.is_none(), "{what}");
    };
    check(&|s| s.device_type = 19, "device type");
    check(&|s| s.queues.truncate(1), "queue count");
    check(&|s| s.queues[0].max_size = 64, "max size");
    check(&|s| s.queues[1].size = 3, "queue size");
    check(&|s| s.queues[1].desc_table = 0x2_0001, "unaligned ring");
    check(&|s| s.queues[1].used_ring = 0xf_fff0, "ring outside memory");
    check(&|s| s.queues[0].ready = false, "queue not ready");
    check(&|s| s.acked_features |= 0b10, "features");
    check(&|s| s.status = status::DRIVER_OK, "status skipping steps");
    check(&|s| s.status |= 0x100, "unknown status bits");
    // A snapshot whose device state lags the rings in memory (the device
    // moved on between saving its state and writing memory).
    check(&|s| s.queues[1].next_used = 4, "used index behind memory");
}
