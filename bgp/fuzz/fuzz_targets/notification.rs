#![no_main]
//! cargo-fuzz target: see `reef_bgp_fuzz::notification`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| reef_bgp_fuzz::notification(data));
