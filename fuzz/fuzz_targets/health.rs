//! A peer's `/health` answer and the control socket's `status` JSON: anything a peer (or a
//! broken agent) sends is parsed or refused, and rendering never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<gateway_agent::health::Report>(data);
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = gateway_agent::status::render(&v);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = gateway_agent::control::Command::parse(text);
    }
});
