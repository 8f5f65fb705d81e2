//! `[aws]` and `[imds]`: where the agent finds the EC2/Auto Scaling APIs and the instance
//! metadata service (both overridden only by emulators and tests).

use std::time::Duration;

use serde::Deserialize;

use super::error::Problems;

/// The link-local IMDS address every EC2 instance answers on (IPv6: `http://[fd00:ec2::254]`).
pub const DEFAULT_IMDS_ENDPOINT: &str = "http://169.254.169.254";
/// IMDS answers in milliseconds on a healthy instance; 2 s leaves room for a few retries while
/// staying well inside systemd's start timeout.
pub const DEFAULT_IMDS_TIMEOUT_MS: u64 = 2000;
/// Upper bound for `imds.timeout_ms`: beyond a minute a stuck call only hides a broken IMDS.
pub const MAX_IMDS_TIMEOUT_MS: u64 = 60_000;
/// The share of each of the account's EC2 and Auto Scaling token buckets (AWS's documented
/// sizes, [`crate::cloud::budget`]) one gateway of this group keeps for itself: a quarter, so a
/// few groups and the account's other tools fit beside it. Takeover writes may borrow past it
/// up to the documented bucket; renewals and drift reads stay well inside it.
pub const DEFAULT_API_SHARE: f64 = 0.25;

/// `aws.api_share`: a fraction greater than 0 and at most 1.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(transparent)]
pub struct ApiShare(pub f64);

// `validate()` refuses NaN, so equality is an equivalence on every accepted value.
impl Eq for ApiShare {}

impl Default for ApiShare {
    fn default() -> Self {
        Self(DEFAULT_API_SHARE)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Aws {
    pub endpoint: Option<String>,
    /// Accept a plain `http://` endpoint that is not on loopback (a lab's emulator on another
    /// host). Off: the API's answers steer routes, and on plain HTTP anyone on the path could
    /// write them.
    pub insecure_endpoint: bool,
    /// The share of each documented EC2/Auto Scaling token bucket this gateway spends.
    pub api_share: ApiShare,
}

impl Aws {
    pub(super) fn validate(&self, problems: &mut Problems) {
        let share = self.api_share.0;
        if !(share > 0.0 && share <= 1.0) {
            problems.fail(
                "aws.api_share",
                format!(
                    "{share} is not a share of a bucket; give a fraction greater than 0 and at most 1, e.g. {DEFAULT_API_SHARE} (the default)"
                ),
            );
        }
        if let Some(endpoint) = &self.endpoint {
            let url = reqwest::Url::parse(endpoint)
                .ok()
                .filter(|url| matches!(url.scheme(), "http" | "https") && url.host().is_some());
            let loopback = |url: &reqwest::Url| {
                let host = url.host_str().unwrap_or_default();
                host.eq_ignore_ascii_case("localhost")
                    || host
                        .trim_matches(['[', ']'])
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback())
            };
            if let Some(url) = &url
                && url.scheme() == "http"
                && !loopback(url)
                && !self.insecure_endpoint
            {
                problems.fail(
                    "aws.endpoint",
                    format!(
                        "{endpoint:?} is plain http:// off this host: the API's answers would steer routes over a path anyone on it could change; use https://, or (a lab's emulator only) set aws.insecure_endpoint = true"
                    ),
                );
            }
            if url.is_none() {
                problems.fail(
                    "aws.endpoint",
                    format!(
                        "{endpoint:?} is not an http(s):// URL; remove the key to use AWS's regional endpoints, or give e.g. \"https://ec2.us-east-1.amazonaws.com\""
                    ),
                );
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Imds {
    pub endpoint: String,
    pub timeout_ms: u64,
}

impl Default for Imds {
    fn default() -> Self {
        Self {
            endpoint: DEFAULT_IMDS_ENDPOINT.to_owned(),
            timeout_ms: DEFAULT_IMDS_TIMEOUT_MS,
        }
    }
}

impl Imds {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    pub(super) fn validate(&self, problems: &mut Problems) {
        // IMDS speaks plain HTTP on a link-local address; anything else is a typo.
        let endpoint_ok = reqwest::Url::parse(&self.endpoint)
            .is_ok_and(|url| url.scheme() == "http" && url.host().is_some());
        if !endpoint_ok {
            problems.fail(
                "imds.endpoint",
                format!(
                    "{:?} is not an http:// URL; remove the key to use {DEFAULT_IMDS_ENDPOINT}, \
                     or give an emulator's address such as \"http://127.0.0.1:8080\"",
                    self.endpoint
                ),
            );
        }
        if !(1..=MAX_IMDS_TIMEOUT_MS).contains(&self.timeout_ms) {
            problems.fail(
                "imds.timeout_ms",
                format!(
                    "{} is out of range; use 1 to {MAX_IMDS_TIMEOUT_MS}, or remove the key for \
                     the default {DEFAULT_IMDS_TIMEOUT_MS}",
                    self.timeout_ms
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{each_names_key_and_fix, valid};

    #[test]
    fn endpoint_rules_name_key_and_fix() {
        each_names_key_and_fix(&[
            (
                "[aws]\nendpoint = \"ec2.amazonaws.com\"",
                "aws.endpoint",
                "not an http(s):// URL",
            ),
            (
                "[aws]\nendpoint = \"ftp://ec2.amazonaws.com\"",
                "aws.endpoint",
                "not an http(s):// URL",
            ),
            (
                "[aws]\nendpoint = \"http://198.51.100.2\"",
                "aws.endpoint",
                "plain http:// off this host",
            ),
            (
                "[aws]\nendpoint = \"http://ec2.us-east-1.amazonaws.com\"",
                "aws.endpoint",
                "use https://",
            ),
            (
                "[imds]\nendpoint = \"https://169.254.169.254\"",
                "imds.endpoint",
                "not an http:// URL",
            ),
            (
                "[imds]\nendpoint = \"\"",
                "imds.endpoint",
                "not an http:// URL",
            ),
            ("[aws]\napi_share = 0", "aws.api_share", "greater than 0"),
            ("[aws]\napi_share = 1.5", "aws.api_share", "at most 1"),
            ("[aws]\napi_share = -0.1", "aws.api_share", "e.g. 0.25"),
            ("[aws]\napi_share = nan", "aws.api_share", "not a share"),
            ("[imds]\ntimeout_ms = 0", "imds.timeout_ms", "out of range"),
            (
                "[imds]\ntimeout_ms = 60001",
                "imds.timeout_ms",
                "use 1 to 60000",
            ),
        ]);
    }

    #[test]
    fn endpoints_accept_the_edges() {
        valid("[aws]\nendpoint = \"https://ec2.us-east-1.amazonaws.com\"");
        valid("[aws]\nendpoint = \"http://127.0.0.1:5000\"");
        valid("[aws]\nendpoint = \"http://localhost:5000\"");
        valid("[aws]\nendpoint = \"http://[::1]:5000\"");
        valid("[aws]\nendpoint = \"http://198.51.100.2\"\ninsecure_endpoint = true");
        valid("[imds]\nendpoint = \"http://[fd00:ec2::254]\"\ntimeout_ms = 1");
        valid("[imds]\ntimeout_ms = 60000");
        valid("[aws]\napi_share = 1");
        valid("[aws]\napi_share = 0.001");
    }

    #[test]
    fn api_share_defaults_to_a_quarter() {
        assert_eq!(super::Aws::default().api_share.0, super::DEFAULT_API_SHARE);
        assert_eq!(super::DEFAULT_API_SHARE, 0.25);
    }
}
