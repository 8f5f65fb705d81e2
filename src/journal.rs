//! Logging to journald (native protocol) so that each line reads on its own.
//!
//! `journalctl -u gateway-agent` shows only `MESSAGE`, and an operator reads that view first.
//! So `MESSAGE` is the event's text followed by its fields, `key=value` as the terminal
//! format writes them (`kernel changed change="add rule from 10.0.1.50 lookup 7700"
//! reason=boot`). Every field is also sent on its own as `F_<KEY>` (`F_ZONE`, `F_EVENT`, ...),
//! as tracing-journald did, so `journalctl F_EVENT=takeover` and `-o json` keep working for
//! machines.
//!
//! The agent opens no spans, so there are no span fields to carry.

use std::fmt;
use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::Path;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::Context;

const SOCKET: &str = "/run/systemd/journal/socket";
/// Structured fields go under this prefix, which keeps them clear of journald's own
/// (`MESSAGE`, `PRIORITY`, `_PID`, ...).
const FIELD_PREFIX: &str = "F_";
/// A value is cut to this many bytes only when a whole entry does not fit in one datagram,
/// which no log call of the agent comes near (they are a few hundred bytes).
const OVERSIZE_VALUE: usize = 2048;

/// A `tracing_subscriber` layer that writes every event to journald.
pub struct Layer {
    socket: UnixDatagram,
    identifier: String,
}

impl Layer {
    /// Fails when journald does not listen (no socket, nobody reading it).
    pub fn new() -> io::Result<Self> {
        let socket = UnixDatagram::unbound()?;
        // journald discards an empty datagram: a probe that it is there.
        socket.send_to(&[], SOCKET)?;
        let identifier = std::env::args_os()
            .next()
            .as_deref()
            .and_then(|p| Path::new(p).file_name())
            .map_or_else(
                || "gateway-agent".to_owned(),
                |n| n.to_string_lossy().into_owned(),
            );
        Ok(Self { socket, identifier })
    }

    fn send(&self, entry: &Entry<'_>) {
        let payload = entry.encode(&self.identifier, usize::MAX);
        match self.socket.send_to(&payload, SOCKET) {
            Err(e) if e.raw_os_error() == Some(nix::errno::Errno::EMSGSIZE as i32) => {
                // Nothing to report a failure to: logging is the reporter.
                let _ = self
                    .socket
                    .send_to(&entry.encode(&self.identifier, OVERSIZE_VALUE), SOCKET);
            }
            _ => {}
        }
    }
}

impl<S: Subscriber> tracing_subscriber::Layer<S> for Layer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let meta = event.metadata();
        self.send(&Entry {
            level: *meta.level(),
            target: meta.target(),
            file: meta.file(),
            line: meta.line(),
            fields,
        });
    }
}

/// An event's message and its other fields, in the order of the call site.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Fields {
    pub message: String,
    pub fields: Vec<(&'static str, String)>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, format!("{value:?}"));
    }
}

impl Fields {
    fn put(&mut self, field: &Field, value: String) {
        if field.name() == "message" {
            self.message = value;
        } else {
            self.fields.push((field.name(), value));
        }
    }

    /// The line `journalctl` shows: the message, then every field as `key=value`, a value
    /// quoted when it holds a space, a quote, an `=` or nothing (so a field ends where it
    /// seems to end).
    pub fn line(&self) -> String {
        let mut line = self.message.clone();
        for (name, value) in &self.fields {
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(name);
            line.push('=');
            if value.is_empty() || value.contains(|c: char| c.is_whitespace() || "\"=".contains(c))
            {
                line.push_str(&format!("{value:?}"));
            } else {
                line.push_str(value);
            }
        }
        line
    }
}

struct Entry<'a> {
    level: Level,
    target: &'a str,
    file: Option<&'a str>,
    line: Option<u32>,
    fields: Fields,
}

impl Entry<'_> {
    /// journald's native format: per field `NAME\n`, the value's length (u64 little-endian),
    /// the value, `\n` (safe for values with newlines). Values longer than `max` are cut.
    fn encode(&self, identifier: &str, max: usize) -> Vec<u8> {
        let mut buf = Vec::with_capacity(512);
        let mut put = |name: &str, value: &str| {
            let value = cut(value, max);
            buf.extend_from_slice(name.as_bytes());
            buf.push(b'\n');
            buf.extend_from_slice(&(value.len() as u64).to_le_bytes());
            buf.extend_from_slice(value.as_bytes());
            buf.push(b'\n');
        };
        put("MESSAGE", &self.fields.line());
        put("PRIORITY", priority(self.level));
        put("SYSLOG_IDENTIFIER", identifier);
        put("TARGET", self.target);
        if let Some(file) = self.file {
            put("CODE_FILE", file);
        }
        if let Some(line) = self.line {
            put("CODE_LINE", &line.to_string());
        }
        for (name, value) in &self.fields.fields {
            put(&field_name(name), value);
        }
        buf
    }
}

/// tracing-journald's mapping, kept so that `journalctl -p` filters read as they did.
fn priority(level: Level) -> &'static str {
    match level {
        Level::ERROR => "3",
        Level::WARN => "4",
        Level::INFO => "5",
        Level::DEBUG => "6",
        Level::TRACE => "7",
    }
}

/// `F_` and the name in journald's alphabet: upper case, digits and `_` (`drain.ms` →
/// `F_DRAIN_MS`).
pub fn field_name(name: &str) -> String {
    let mut out = String::from(FIELD_PREFIX);
    out.extend(name.chars().filter_map(|c| match c {
        'a'..='z' => Some(c.to_ascii_uppercase()),
        'A'..='Z' | '0'..='9' | '_' => Some(c),
        '.' | '-' => Some('_'),
        _ => None,
    }));
    out
}

fn cut(value: &str, max: usize) -> &str {
    if value.len() <= max {
        return value;
    }
    let mut end = max;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    &value[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(message: &str, fields: &[(&'static str, &str)]) -> Fields {
        Fields {
            message: message.to_owned(),
            fields: fields.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
        }
    }

    #[test]
    fn the_line_carries_what_happened_to_what_and_why() {
        let f = fields(
            "boot failed",
            &[(
                "error",
                "kernel config for eni-1: netlink: set link ens6 up: Operation not permitted",
            )],
        );
        assert_eq!(
            f.line(),
            "boot failed error=\"kernel config for eni-1: netlink: set link ens6 up: Operation not permitted\""
        );
        let f = fields(
            "claim",
            &[
                ("eni", "eni-1"),
                ("status", "available"),
                ("step", "attach"),
            ],
        );
        assert_eq!(f.line(), "claim eni=eni-1 status=available step=attach");
        let f = fields("x", &[("a", ""), ("b", "say \"hi\""), ("c", "k=v")]);
        assert_eq!(f.line(), r#"x a="" b="say \"hi\"" c="k=v""#);
        assert_eq!(fields("", &[("a", "1")]).line(), "a=1");
        assert_eq!(fields("just this", &[]).line(), "just this");
    }

    #[test]
    fn the_fields_stay_for_machines() {
        let entry = Entry {
            level: Level::INFO,
            target: "gateway_agent::event",
            file: Some("src/hook.rs"),
            line: Some(35),
            fields: fields("event", &[("event", "takeover"), ("zone", "us-east-1b")]),
        };
        let payload = entry.encode("gateway-agent", usize::MAX);
        let mut found = Vec::new();
        let mut rest = &payload[..];
        while !rest.is_empty() {
            let nl = rest.iter().position(|b| *b == b'\n').unwrap();
            let name = std::str::from_utf8(&rest[..nl]).unwrap().to_owned();
            let len = u64::from_le_bytes(rest[nl + 1..nl + 9].try_into().unwrap()) as usize;
            let value = std::str::from_utf8(&rest[nl + 9..nl + 9 + len])
                .unwrap()
                .to_owned();
            assert_eq!(rest[nl + 9 + len], b'\n');
            rest = &rest[nl + 10 + len..];
            found.push((name, value));
        }
        let get = |n: &str| found.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
        assert_eq!(get("MESSAGE"), Some("event event=takeover zone=us-east-1b"));
        assert_eq!(get("F_EVENT"), Some("takeover"));
        assert_eq!(get("F_ZONE"), Some("us-east-1b"));
        assert_eq!(get("PRIORITY"), Some("5"));
        assert_eq!(get("CODE_LINE"), Some("35"));
        assert_eq!(get("SYSLOG_IDENTIFIER"), Some("gateway-agent"));
    }

    #[test]
    fn names_and_cuts_are_journald_safe() {
        assert_eq!(field_name("drain_ms"), "F_DRAIN_MS");
        assert_eq!(field_name("a.b-c"), "F_A_B_C");
        assert_eq!(cut("héllo", 2), "h");
        assert_eq!(cut("hello", 10), "hello");
    }
}
