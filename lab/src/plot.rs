//! Pictures of what a client felt: packets delivered per second around a gateway's death, one
//! line per mover (gateway-agent, nat_monitor.sh), with the moments the routes moved marked.
//! SVG only (plotters' SVG backend: no fonts or bitmaps to build; the viewer renders the text).

use plotters::prelude::*;

/// One client stream around one gateway death.
#[derive(Debug, Clone, Default)]
pub struct Trace {
    /// The legend's name of the line, e.g. `gateway-agent (median of 10 runs)`.
    pub label: String,
    /// Each delivered packet's arrival, in seconds since the death (negative: before it).
    pub arrivals: Vec<f64>,
    /// When the stream stopped, in seconds since the death: the line ends there.
    pub end: f64,
    /// Route moves to mark, in seconds since the death, with what moved (e.g. `client's route`).
    pub moves: Vec<(f64, String)>,
}

/// A chart of [`Trace`]s that share the death at t = 0.
#[derive(Debug, Clone)]
pub struct OutageFigure {
    pub title: String,
    /// Under the x axis's description: the lab profile, topology and rate.
    pub note: String,
    /// Where the chart starts, in seconds since the death (negative).
    pub from: f64,
    /// Width of a bin in seconds (packets delivered per bin, shown per second).
    pub bin: f64,
    /// The stream's rate: the y axis reaches a little above it.
    pub rate: f64,
    pub traces: Vec<Trace>,
}

/// Packets delivered per second in bins of `bin` seconds from `from` up to `end` (a last
/// partial bin is dropped): (bin start, packets/s).
pub fn bins(arrivals: &[f64], from: f64, end: f64, bin: f64) -> Vec<(f64, f64)> {
    if bin <= 0.0 || end <= from {
        return Vec::new();
    }
    let n = ((end - from) / bin).floor() as usize;
    let mut counts = vec![0u32; n];
    for &t in arrivals {
        if t < from {
            continue;
        }
        let i = ((t - from) / bin).floor() as usize;
        if let Some(c) = counts.get_mut(i) {
            *c += 1;
        }
    }
    counts
        .iter()
        .enumerate()
        .map(|(i, &c)| (from + i as f64 * bin, f64::from(c) / bin))
        .collect()
}

/// The step line of [`bins`]: each bin's value held across its width.
fn steps(bins: &[(f64, f64)], bin: f64) -> Vec<(f64, f64)> {
    bins.iter()
        .flat_map(|&(x, y)| [(x, y), (x + bin, y)])
        .collect()
}

/// Blue for the agent, orange for the baseline, then others (colour-blind safe: Okabe-Ito).
const COLOURS: [RGBColor; 4] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
];

/// Writes `fig` as an SVG to `path`.
pub fn write_svg(fig: &OutageFigure, path: &std::path::Path) -> Result<(), String> {
    let err = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let to = fig
        .traces
        .iter()
        .map(|t| t.end)
        .fold(fig.from + fig.bin, f64::max);
    // Room above the rate for bursts (a late packet lands in the next bin with its successor).
    let top = (fig.rate * 1.4).max(1.0);
    let root = SVGBackend::new(path, (960, 460)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(&fig.title, ("sans-serif", 20))
        .margin(14)
        .x_label_area_size(54)
        .y_label_area_size(60)
        .build_cartesian_2d(fig.from..to, 0f64..top)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc(format!(
            "seconds since the gateway was terminated ({})",
            fig.note
        ))
        .y_desc(format!(
            "packets delivered per second ({} ms bins)",
            (fig.bin * 1e3).round()
        ))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()
        .map_err(|e| err(&e))?;
    // The death.
    chart
        .draw_series(LineSeries::new(
            [(0.0, 0.0), (0.0, top)],
            BLACK.stroke_width(2),
        ))
        .map_err(|e| err(&e))?
        .label("gateway terminated (t = 0)")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLACK.stroke_width(2)));
    for (i, t) in fig.traces.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let line = steps(&bins(&t.arrivals, fig.from, t.end, fig.bin), fig.bin);
        chart
            .draw_series(LineSeries::new(line, colour.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(&t.label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], colour.stroke_width(2)));
        // The first move dashed (the client's own route), later ones dotted.
        for (n, (at, what)) in t.moves.iter().enumerate() {
            let (dash, gap) = if n == 0 { (6, 4) } else { (2, 3) };
            chart
                .draw_series(DashedLineSeries::new(
                    [(*at, 0.0), (*at, top)],
                    dash,
                    gap,
                    colour.stroke_width(1),
                ))
                .map_err(|e| err(&e))?
                .label(format!("{what} moved at +{at:.2} s"))
                .legend(move |(x, y)| {
                    // Three dashes of the line's own pattern.
                    let (d, g) = (dash, gap);
                    let seg =
                        |i: i32| PathElement::new([(i * (d + g), 0), (i * (d + g) + d, 0)], colour);
                    EmptyElement::at((x, y)) + seg(0) + seg(1) + seg(2)
                });
        }
    }
    chart
        .configure_series_labels()
        // Between the lines: above the outages' floor, below the delivered rate.
        .position(SeriesLabelPosition::MiddleMiddle)
        .background_style(WHITE.mix(0.9))
        .border_style(RGBColor(160, 160, 160))
        .label_font(("sans-serif", 13))
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bins_count_per_second_and_drop_the_partial_last_bin() {
        // 100 packets/s for 1 s before the death, nothing for 0.5 s, then 100/s again.
        let mut arrivals: Vec<f64> = (0..100).map(|i| -1.0 + f64::from(i) * 0.01).collect();
        arrivals.extend((0..50).map(|i| 0.5 + f64::from(i) * 0.01));
        let b = bins(&arrivals, -1.0, 1.05, 0.1);
        assert_eq!(b.len(), 20);
        assert!((b[0].0 + 1.0).abs() < 1e-9);
        assert!(
            b[..10].iter().all(|&(_, v)| (v - 100.0).abs() < 10.5),
            "{b:?}"
        );
        assert!(b[10..15].iter().all(|&(_, v)| v == 0.0), "{b:?}");
        assert!(b[15..].iter().all(|&(_, v)| v > 50.0), "{b:?}");
        assert!(bins(&arrivals, 1.0, 0.5, 0.1).is_empty());
    }

    #[test]
    fn an_svg_with_both_lines_and_their_marks() {
        let dir = std::env::temp_dir().join(format!("gwlab-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("outage.svg");
        let stream = |gap: (f64, f64), end: f64| -> Vec<f64> {
            (0..((end + 1.0) * 100.0) as i32)
                .map(|i| -1.0 + f64::from(i) * 0.01)
                .filter(|t| *t < gap.0 || *t >= gap.1)
                .collect()
        };
        let fig = OutageFigure {
            title: "a client's packets".into(),
            note: "fast profile".into(),
            from: -1.0,
            bin: 0.1,
            rate: 100.0,
            traces: vec![
                Trace {
                    label: "gateway-agent".into(),
                    arrivals: stream((0.0, 0.8), 10.0),
                    end: 10.0,
                    moves: vec![(0.78, "client's route".into())],
                },
                Trace {
                    label: "nat_monitor.sh".into(),
                    arrivals: stream((0.0, 7.5), 10.0),
                    end: 10.0,
                    moves: vec![(7.4, "client's route".into())],
                },
            ],
        };
        write_svg(&fig, &path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..100]);
        for text in [
            "a client&apos;s packets",
            "gateway-agent",
            "nat_monitor.sh",
            "moved at +0.78 s",
            "moved at +7.40 s",
            "fast profile",
        ] {
            assert!(svg.contains(text), "no {text:?} in the SVG");
        }
        // Two step lines and the death line at least.
        assert!(svg.matches("<polyline").count() >= 3);
    }
}
