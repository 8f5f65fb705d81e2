//! What the fault matrix and the benches print their figures with: tables, percentiles, and
//! the fields of an agent's log lines.

use crate::percentile;

/// How a column's cells stand in their width.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// A table of text cells, printed as Markdown or as plain columns. A column is as wide as its
/// widest cell, its head and its least width; a left-aligned last column is not padded.
pub struct Table {
    columns: Vec<(String, Align, usize)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// The columns: head, alignment, least width.
    pub fn new(columns: &[(&str, Align, usize)]) -> Table {
        Table {
            columns: columns
                .iter()
                .map(|(head, align, least)| ((*head).to_owned(), *align, *least))
                .collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    fn widths(&self) -> Vec<usize> {
        let last = self.columns.len().saturating_sub(1);
        self.columns
            .iter()
            .enumerate()
            .map(|(i, (head, align, least))| {
                if i == last && *align == Align::Left {
                    return 0;
                }
                self.rows
                    .iter()
                    .filter_map(|r| r.get(i))
                    .map(|c| c.chars().count())
                    .chain([head.chars().count(), *least])
                    .max()
                    .unwrap_or(0)
            })
            .collect()
    }

    fn cells(&self, cells: &[String], widths: &[usize]) -> Vec<String> {
        self.columns
            .iter()
            .zip(widths)
            .enumerate()
            .map(|(i, ((_, align, _), w))| {
                let c = cells.get(i).map_or("", String::as_str);
                match align {
                    Align::Left => format!("{c:<w$}"),
                    Align::Right => format!("{c:>w$}"),
                }
            })
            .collect()
    }

    fn heads(&self) -> Vec<String> {
        self.columns.iter().map(|(h, ..)| h.clone()).collect()
    }

    /// `| a | b |` lines under a rule that aligns right-aligned columns right.
    pub fn markdown(&self) -> String {
        let widths = self.widths();
        let line = |cells: Vec<String>| format!("| {} |", cells.join(" | "));
        let rule: Vec<String> = self
            .columns
            .iter()
            .zip(&widths)
            .map(|((_, align, _), w)| match align {
                Align::Left => "-".repeat((w + 2).max(3)),
                Align::Right => format!("{}:", "-".repeat(w + 1)),
            })
            .collect();
        let mut out = vec![
            line(self.cells(&self.heads(), &widths)),
            format!("|{}|", rule.join("|")),
        ];
        out.extend(self.rows.iter().map(|r| line(self.cells(r, &widths))));
        out.join("\n")
    }

    /// Columns one space apart, the heads first.
    pub fn plain(&self) -> String {
        let widths = self.widths();
        std::iter::once(self.heads())
            .chain(self.rows.iter().cloned())
            .map(|r| self.cells(&r, &widths).join(" "))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// `412 ms`, or `n/a`.
pub fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".into(), |v| format!("{v:.0} ms"))
}

/// `p50/max` of a sample (ms, whole), or `n/a` for an empty one.
pub fn p50_max(samples: &[f64]) -> String {
    if samples.is_empty() {
        return "n/a".into();
    }
    format!(
        "{:.0}/{:.0}",
        percentile(samples, 50.0),
        percentile(samples, 100.0)
    )
}

/// One figure's line: p50, p99 and max of `samples` (ms), and how many of `of` runs gave one.
pub fn spread_line(name: &str, samples: &[f64], of: usize) -> String {
    if samples.is_empty() {
        return format!("  {name:<34} n/a");
    }
    format!(
        "  {name:<34} p50 {:>7.0} ms  p99 {:>7.0} ms  max {:>7.0} ms  ({} of {of} runs)",
        percentile(samples, 50.0),
        percentile(samples, 99.0),
        percentile(samples, 100.0),
        samples.len()
    )
}

/// Remove ANSI escape sequences (tracing colours its field names when it thinks it may).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            out.push(c);
            continue;
        }
        if chars.peek() == Some(&'[') {
            chars.next();
            // CSI: parameters and intermediates up to a final byte in @..~
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        }
    }
    out
}

/// The value of `key=value` in a log line, unquoted; `key` must start a word.
pub fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let pat = format!("{key}=");
    let mut from = 0;
    while let Some(i) = line[from..].find(&pat) {
        let at = from + i;
        let starts_word = line[..at]
            .chars()
            .next_back()
            .is_none_or(|c| !(c.is_alphanumeric() || c == '_' || c == '.'));
        if starts_word {
            let rest = &line[at + pat.len()..];
            let value = match rest.strip_prefix('"') {
                Some(quoted) => quoted.split('"').next().unwrap_or(""),
                None => rest.split_whitespace().next().unwrap_or(""),
            };
            return Some(value.trim_matches(|c| c == '"' || c == '\'' || c == ','));
        }
        from = at + pat.len();
    }
    None
}

/// A duration in ms; a negative one is the agent saying it does not know.
pub fn number(v: &str) -> Option<f64> {
    v.trim_end_matches("ms")
        .parse()
        .ok()
        .filter(|n: &f64| *n >= 0.0)
}

/// The `key` figure (ms) of the first line of `log` that contains `what`, colours stripped.
pub fn log_figure(log: &str, what: &str, key: &str) -> Option<f64> {
    log.lines()
        .map(strip_ansi)
        .find(|l| l.contains(what))
        .and_then(|l| field(&l, key).and_then(number))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_pads_to_the_widest_and_leaves_a_left_last_column_alone() {
        let mut t = Table::new(&[
            ("case", Align::Left, 0),
            ("writes", Align::Right, 0),
            ("result", Align::Left, 0),
        ]);
        t.row(vec!["peer stopped".into(), "1".into(), "pass".into()]);
        t.row(vec!["x".into(), "1234567".into(), "FAIL: why".into()]);
        assert_eq!(
            t.markdown(),
            "| case         |  writes | result |\n\
             |--------------|--------:|---|\n\
             | peer stopped |       1 | pass |\n\
             | x            | 1234567 | FAIL: why |"
        );
    }

    #[test]
    fn plain_keeps_least_widths() {
        let mut t = Table::new(&[("event", Align::Left, 8), ("runs", Align::Right, 5)]);
        t.row(vec!["spot".into(), "3".into()]);
        assert_eq!(t.plain(), "event     runs\nspot         3");
    }

    #[test]
    fn fields_plain_quoted_and_coloured() {
        assert_eq!(field("a xroutes=5 routes=7", "routes"), Some("7"));
        assert_eq!(field("span.routes=5", "routes"), None);
        assert_eq!(field("zone=\"us-east-1b\" x=1", "zone"), Some("us-east-1b"));
        let coloured = "\u{1b}[32m INFO\u{1b}[0m drain complete \
                        \u{1b}[3mdrain_ms\u{1b}[0m\u{1b}[2m=\u{1b}[0m87";
        assert_eq!(
            log_figure(coloured, "drain complete", "drain_ms"),
            Some(87.0)
        );
        assert_eq!(log_figure("x detection_ms=-1.0", "x", "detection_ms"), None);
    }
}
