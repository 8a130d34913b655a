# Arrow top-level make targets. Cargo builds the Rust crates; make drives the
# pieces that are not Rust.

.PHONY: kernel
# Build the guest kernel (cached; prints the path of vmlinux last).
kernel:
	bash guest-kernel/build.sh

.PHONY: test demo bench
# The test suite: unit tests, KVM tests with the freestanding test guests, and
# end-to-end tests with the real guest kernel (built and cached on first use).
test:
	cargo test --workspace

# Set everything up and run the main job: a static microservice in a microVM.
demo:
	bash scripts/demo.sh

# arrow-vmm as a static-pie binary: no ld.so / libc.so mappings, so about
# 1 MiB less RSS per instance and less CPU before the first KVM_RUN
# (docs/benchmarks.md). The explicit --target keeps +crt-static off the
# proc-macro crates, which cannot be built with it.
STATIC_TARGET := x86_64-unknown-linux-gnu
STATIC_VMM := $(CURDIR)/target/$(STATIC_TARGET)/release/arrow-vmm
.PHONY: vmm-static
vmm-static:
	CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-feature=+crt-static" \
		cargo build --release --target $(STATIC_TARGET) -p arrow-vmm

# Benchmarks (tables + JSON under target/bench-results/), of the static
# arrow-vmm that `make demo` runs (ARROW_VMM_BIN; plain `cargo bench`
# measures cargo's own dynamically linked build).
bench: vmm-static
	ARROW_VMM_BIN=$(STATIC_VMM) cargo bench -p arrow-vmm --bench vmm_start
