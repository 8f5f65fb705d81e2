//! Any text as the config file: a clear error or a valid config, never a panic; a config that
//! parses must validate clean (parse runs validate) and survive `check-config`'s path.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match gateway_agent::config::Config::parse(text, std::path::Path::new("fuzz.toml")) {
        Ok(config) => assert!(config.validate().is_empty()),
        Err(e) => {
            let message = e.to_string();
            assert!(message.starts_with("fuzz.toml"), "{message}");
        }
    }
});
