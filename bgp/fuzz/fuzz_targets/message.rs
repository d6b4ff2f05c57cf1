#![no_main]
//! cargo-fuzz target: see `reef_bgp_fuzz::message`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| reef_bgp_fuzz::message(data));
