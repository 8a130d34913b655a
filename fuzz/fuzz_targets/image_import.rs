#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| asdk::fuzz::image_import(data));
