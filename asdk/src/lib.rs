//! asdk: builds, stores and ships Arrow images.
//!
//! An Arrow image is a static x86-64 binary plus its [`spec::Spec`], packaged as an OCI
//! artifact whose main layer is a newc cpio the guest kernel unpacks as its initramfs
//! (`/app`, `/arrow/spec.json`). See `docs/image-format.md`.
//!
//! Typical use by a host component (arrowd, tests):
//! ```no_run
//! # fn main() -> Result<(), asdk::store::StoreError> {
//! let store = asdk::Store::open_default()?;          // or Store::open(dir)
//! let image = store.image("hello:latest")?;           // reference, digest or short ID
//! let initrd = store.initrd_path(&image)?;            // verified; pass as --initrd
//! let base = store.base_path(&image)?;                // or: EROFS base, --pmem PATH,ro
//! let argv = image.spec.argv();                       // ["/app", args…]
//! let (vcpus, mem) = (image.spec.vcpus, image.spec.memory_mib);
//! # let _ = (initrd, argv, vcpus, mem); Ok(()) }
//! ```

pub mod base;
pub mod build;
pub mod cpio;
pub mod digest;
pub mod elf;
#[doc(hidden)]
pub mod fuzz;
pub mod image;
pub mod oci;
pub mod reference;
pub mod registry;
pub mod spec;
pub mod store;

pub use digest::Digest;
pub use image::{BuiltImage, Manifest};
pub use reference::Reference;
pub use spec::{Readiness, Spec};
pub use store::{Image, Store};
