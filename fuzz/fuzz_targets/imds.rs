//! Whatever IMDS answers for the planned-exit notices, and whatever a lease tag holds: parsed
//! or refused, never a panic; dates that parse round-trip.
#![no_main]

use gateway_agent::decide::lease::Lease;
use gateway_agent::events;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = events::lifecycle(text);
    // A notice read in full is one the watcher trusts even while other paths answer garbage.
    if events::spot(text).is_some_and(|e| e.at_unix.is_some()) {
        assert!(events::well_formed(text));
    }
    let _ = events::rebalance(text);
    let _ = events::maintenance(text, 1_795_600_800, 600);
    if let Some(secs) = events::rfc3339(text) {
        assert_eq!(events::rfc3339(&events::rfc3339_text(secs)), Some(secs));
    }
    let _ = events::imds_date(text);
    if let Some(lease) = Lease::parse(text) {
        assert_eq!(Lease::parse(&lease.to_string()), Some(lease));
    }
});
