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

# Benchmarks (tables + JSON under target/bench-results/).
bench:
	cargo bench -p arrow-vmm --bench vmm_start
