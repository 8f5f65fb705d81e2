//! Value syntaxes more than one section checks: CIDRs and AWS resource IDs.

use std::net::{IpAddr, Ipv4Addr};

/// A CIDR as AWS writes it, checked: `Err` explains what is wrong and gives the canonical form
/// when only host bits are set.
pub fn parse_cidr(text: &str) -> Result<(IpAddr, u8), String> {
    let Some((addr, len)) = text.split_once('/') else {
        return Err("is not a CIDR (address/prefix length), e.g. \"0.0.0.0/0\"".to_owned());
    };
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| format!("{addr:?} is not an IP address"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len: u8 = len
        .parse()
        .ok()
        .filter(|l| *l <= max)
        .ok_or_else(|| format!("prefix length {len:?} is not 0 to {max}"))?;
    let network = match addr {
        IpAddr::V4(a) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
        }
        IpAddr::V6(a) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            IpAddr::V6(std::net::Ipv6Addr::from(u128::from(a) & mask))
        }
    };
    if network != addr {
        return Err(format!(
            "has host bits set; AWS wants the network address: \"{network}/{len}\""
        ));
    }
    Ok((addr, len))
}

/// `eni-0123abcd` / `rtb-...`: the prefix, a dash, then 8 or 17 hex digits as AWS issues them
/// (moto and older resources use 8 or 17; anything hex from 8 to 17 is accepted).
pub(super) fn is_aws_id(id: &str, prefix: &str) -> bool {
    id.strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('-'))
        .is_some_and(|hex| {
            (8..=17).contains(&hex.len()) && hex.chars().all(|c| c.is_ascii_hexdigit())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (text, the network it parses to, or a fragment of the reason it does not).
    #[test]
    fn cidrs_parse_as_aws_writes_them() {
        let cases: &[(&str, Result<&str, &str>)] = &[
            ("0.0.0.0/0", Ok("0.0.0.0/0")),
            ("10.50.0.0/16", Ok("10.50.0.0/16")),
            ("10.0.0.1/32", Ok("10.0.0.1/32")),
            ("::/0", Ok("::/0")),
            ("fd00:1::/64", Ok("fd00:1::/64")),
            ("10.0.0.0", Err("is not a CIDR")),
            ("/8", Err("\"\" is not an IP address")),
            ("10/8", Err("\"10\" is not an IP address")),
            (" 10.0.0.0/8", Err("is not an IP address")),
            ("10.0.0.0/", Err("prefix length \"\" is not 0 to 32")),
            ("10.0.0.0/33", Err("is not 0 to 32")),
            ("10.0.0.0/-1", Err("is not 0 to 32")),
            ("::/129", Err("is not 0 to 128")),
            ("10.1.2.3/16", Err("\"10.1.0.0/16\"")),
            ("fe80::1/10", Err("\"fe80::/10\"")),
        ];
        for (text, want) in cases {
            match (parse_cidr(text), want) {
                (Ok((addr, len)), Ok(net)) => assert_eq!(format!("{addr}/{len}"), *net, "{text}"),
                (Err(why), Err(fragment)) => assert!(why.contains(fragment), "{text}: {why}"),
                (got, _) => panic!("{text}: {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn aws_ids_are_prefix_dash_and_8_to_17_hex_digits() {
        let cases = [
            ("eni-0123abcd", true),
            ("eni-0123456789abcdef0", true),
            ("eni-0123ABCD", true),
            ("eni-0123abc", false),
            ("eni-0123456789abcdef01", false),
            ("eni-0123abcg", false),
            ("eni0123abcd", false),
            ("rtb-0123abcd", false),
            ("", false),
        ];
        for (id, ok) in cases {
            assert_eq!(is_aws_id(id, "eni"), ok, "{id}");
        }
    }
}
