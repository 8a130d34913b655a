#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| arrow_vmm::fuzz::app_spec(data));
