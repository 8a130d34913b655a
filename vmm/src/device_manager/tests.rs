//! The device manager on a real KVM VM (irqfd and ioeventfd registration
//! need one); skipped with a message where /dev/kvm is missing.

use vm_memory::GuestAddress;

use super::*;
use crate::config::PmemConfig;
use crate::snapshot::devices::DeviceStates;

fn kvm_vm() -> Option<VmFd> {
    let kvm = match kvm_ioctls::Kvm::new() {
        Ok(k) => k,
        Err(e) => {
            eprintln!("skipping: cannot open /dev/kvm ({e})");
            return None;
        }
    };
    let vm = kvm.create_vm().expect("create VM");
    vm.create_irq_chip().expect("irqchip");
    Some(vm)
}

fn mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
}

#[test]
fn vsock_is_attached_in_the_first_slot_and_announced() {
    let Some(vm) = kvm_vm() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut dm = DeviceManager::new();
    let cfg = VsockConfig {
        cid: 3,
        uds: dir.path().join("v.sock"),
    };
    dm.add_vsock(&vm, &mem(), &cfg).unwrap();
    assert_eq!(dm.vsock().unwrap().slot, MmioSlot::first());
    assert_eq!(
        dm.add_to_cmdline("console=ttyS0 -- -v"),
        "console=ttyS0 virtio_mmio.device=4K@0xd0000000:5 -- -v"
    );
    assert_eq!(dm.subscribers().len(), 1);
    // The transport answers on the bus at its window: magic "virt".
    let mut b = [0u8; 4];
    assert!(dm.mmio_bus().read(MmioSlot::first().base, &mut b));
    assert_eq!(&b, b"virt");

    let saved = dm.save();
    let v = saved.vsock.as_ref().unwrap();
    assert_eq!((v.slot, v.device.guest_cid), (MmioSlot::first(), 3));

    // Restore into a fresh VM, in two phases, as a clone with a new CID.
    let Some(vm2) = kvm_vm() else { return };
    let mut dm2 = DeviceManager::new();
    dm2.prepare_restore(&vm2, 1 << 20, &saved).unwrap();
    let clone = DeviceRestoreParams {
        clone: true,
        vsock_uds: Some(dir.path().join("v2.sock")),
        vsock_cid: None,
        ..Default::default()
    };
    assert!(matches!(
        dm2.restore_devices(&vm2, &mem(), &saved, &clone),
        Err(DeviceError::VsockCidMissing)
    ));
    let clone = DeviceRestoreParams {
        vsock_cid: Some(9),
        ..clone
    };
    dm2.restore_devices(&vm2, &mem(), &saved, &clone).unwrap();
    let v2 = dm2.vsock().unwrap();
    assert_eq!(v2.slot, MmioSlot::first());
    assert_eq!(lock(&v2.device).guest_cid(), 9);
    assert!(dm2.mmio_bus().read(MmioSlot::first().base, &mut b));
}

#[test]
fn restore_refuses_missing_socket_and_bad_slots() {
    let Some(vm) = kvm_vm() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut dm = DeviceManager::new();
    let cfg = VsockConfig {
        cid: 3,
        uds: dir.path().join("v.sock"),
    };
    dm.add_vsock(&vm, &mem(), &cfg).unwrap();
    let mut saved = dm.save();

    let Some(vm2) = kvm_vm() else { return };
    let mut dm2 = DeviceManager::new();
    let e = dm2
        .restore_devices(&vm2, &mem(), &saved, &DeviceRestoreParams::default())
        .unwrap_err();
    assert!(e.to_string().contains("--vsock-uds"), "{e}");

    if let Some(v) = saved.vsock.as_mut() {
        v.slot.base += 8;
    }
    let e = DeviceManager::new()
        .prepare_restore(&vm2, 1 << 20, &saved)
        .unwrap_err();
    assert!(
        matches!(e, DeviceError::Slot(SlotError::Invalid { .. })),
        "{e}"
    );
}

/// Snapshots written before the device manager recorded slots (no `slot`
/// field) still read, with vsock in the first slot; the JSON layout of the
/// devices is unchanged (`vsock` next to `serial`).
#[test]
fn device_states_read_snapshots_without_slots() {
    let Some(vm) = kvm_vm() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut dm = DeviceManager::new();
    let cfg = VsockConfig {
        cid: 4,
        uds: dir.path().join("v.sock"),
    };
    dm.add_vsock(&vm, &mem(), &cfg).unwrap();
    let states = DeviceStates {
        virtio: dm.save(),
        ..Default::default()
    };
    let mut json = serde_json::to_value(&states).unwrap();
    assert!(json["vsock"]["transport"].is_object());
    json["vsock"].as_object_mut().unwrap().remove("slot");
    let back: DeviceStates = serde_json::from_value(json).unwrap();
    assert_eq!(back.virtio.vsock.unwrap().slot, MmioSlot::first());

    let mut json = serde_json::to_value(DeviceStates::default()).unwrap();
    json.as_object_mut().unwrap().remove("vsock");
    let back: DeviceStates = serde_json::from_value(json).unwrap();
    assert!(back.virtio.vsock.is_none());
}

#[test]
fn pmem_gets_the_next_slot_and_a_window_above_ram() {
    let Some(vm) = kvm_vm() else { return };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("base");
    std::fs::write(&file, b"base").unwrap();
    let mut dm = DeviceManager::new();
    let mem = mem();
    dm.add_vsock(
        &vm,
        &mem,
        &VsockConfig {
            cid: 3,
            uds: dir.path().join("v.sock"),
        },
    )
    .unwrap();
    let cfg = PmemConfig {
        path: file.clone(),
        read_only: true,
    };
    dm.add_pmem(&vm, &mem, &cfg).unwrap();
    dm.add_pmem(&vm, &mem, &cfg).unwrap();
    let p = dm.pmem();
    assert_eq!(p[0].slot.irq, 6);
    assert_eq!(p[1].slot.irq, 7);
    assert_eq!(lock(&p[0].device).guest_addr(), 4 << 30);
    assert_eq!(lock(&p[1].device).guest_addr(), (4 << 30) + (128 << 20));
    assert_eq!(
        dm.add_to_cmdline(""),
        "virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6 \
         virtio_mmio.device=4K@0xd0002000:7"
    );
    assert_eq!(dm.subscribers().len(), 3);
    let saved = dm.save();
    assert_eq!(saved.pmem.len(), 2);

    // restore_devices without prepare_restore cannot map the files.
    let Some(vm2) = kvm_vm() else { return };
    let e = DeviceManager::new()
        .restore_devices(
            &vm2,
            &mem,
            &saved,
            &DeviceRestoreParams {
                vsock_uds: Some(dir.path().join("v2.sock")),
                ..Default::default()
            },
        )
        .unwrap_err();
    assert!(matches!(e, DeviceError::NotPrepared), "{e}");
}

#[test]
fn image_and_volume_slots_take_their_files_and_refuse_what_does_not_fit() {
    let Some(vm) = kvm_vm() else { return };
    let dir = tempfile::tempdir().unwrap();
    let slot = |name: &str| {
        let p = dir.path().join(name);
        std::fs::File::create(&p).unwrap().set_len(2 << 20).unwrap();
        PmemConfig {
            path: p,
            read_only: true,
        }
    };
    let mem = mem();
    let base = dir.path().join("base.erofs");
    std::fs::write(&base, [0xaa; 4096]).unwrap();
    let volumes = dir.path().join("volumes.erofs");
    std::fs::write(&volumes, [0xbb; 8192]).unwrap();

    // Only an image slot: no volume slot.
    let mut dm = DeviceManager::new();
    dm.add_pmem(&vm, &mem, &slot("image.slot")).unwrap();
    let e = dm.inject_volumes_base(&volumes).unwrap_err();
    assert!(matches!(e, DeviceError::NoVolumeSlot), "{e}");
    assert!(e.to_string().contains("second --pmem"), "{e}");

    // Image slot (pmem0) and volume slot (pmem1): each file in its own.
    dm.add_pmem(&vm, &mem, &slot("volume.slot")).unwrap();
    dm.inject_image_base(&base).unwrap();
    dm.inject_volumes_base(&volumes).unwrap();
    let p = dm.pmem();
    assert_eq!(lock(&p[0].device).path(), base.as_path());
    assert_eq!(lock(&p[1].device).path(), volumes.as_path());
    let mut b = [0u8; 1];
    assert!(lock(&p[1].device).mapping().read(8191, &mut b));
    assert_eq!(b, [0xbb]);

    // Larger than the slot: refused with the slot's size, the slot unchanged.
    let big = dir.path().join("big.erofs");
    std::fs::File::create(&big)
        .unwrap()
        .set_len((2 << 20) + 1)
        .unwrap();
    let e = dm.inject_volumes_base(&big).unwrap_err();
    assert!(
        matches!(e, DeviceError::VolumeSlotTooSmall { window, .. } if window == 2 << 20),
        "{e}"
    );
    assert!(e.to_string().contains("volume slot holds at most"), "{e}");
    assert_eq!(lock(&dm.pmem()[1].device).path(), volumes.as_path());

    // A writable second device is no slot.
    let Some(vm2) = kvm_vm() else { return };
    let mut dm = DeviceManager::new();
    dm.add_pmem(&vm2, &mem, &slot("image2.slot")).unwrap();
    let mut rw = slot("upper");
    rw.read_only = false;
    dm.add_pmem(&vm2, &mem, &rw).unwrap();
    let e = dm.inject_volumes_base(&volumes).unwrap_err();
    assert!(
        matches!(e, DeviceError::Pmem(PmemError::NotReadOnly(_))),
        "{e}"
    );
}

#[test]
fn fs_restore_needs_a_backend_for_each_connected_device_and_known_tags() {
    use crate::devices::virtio::fs::{FsConfig, FsState};
    use crate::snapshot::devices::{FsSnapshot, VirtioStates};
    let snap = |tag: &str, connected| FsSnapshot {
        slot: MmioSlot::first(),
        transport: Default::default(),
        device: FsState { tag: tag.into() },
        connected,
    };
    let states = VirtioStates {
        fs: vec![snap("data", true), snap("vol0", false)],
        ..Default::default()
    };
    let fs = |tag: &str| FsConfig {
        tag: tag.into(),
        socket: "/s".into(),
    };
    assert!(DeviceManager::check_fs_restore(&states, &[fs("data")]).is_ok());
    assert!(DeviceManager::check_fs_restore(&states, &[fs("data"), fs("vol0")]).is_ok());
    let e = DeviceManager::check_fs_restore(&states, &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("--fs data=SOCKET"), "{e}");
    let e = DeviceManager::check_fs_restore(&states, &[fs("data"), fs("x")])
        .unwrap_err()
        .to_string();
    assert!(e.contains("tag x") && e.contains("data, vol0"), "{e}");
}
