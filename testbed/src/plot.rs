//! Charts as SVG text (drawn by `plotters`), for the reports of the experiments and of the load
//! test's comparison: lines over time with fault markers, bars, and latency distributions. Each
//! function returns one `<svg>` element, ready to inline in an HTML page; text stays text (no
//! font is needed to draw it), so a report is one self-contained file.

use plotters::coord::Shift;
use plotters::prelude::*;

/// Width and height of every chart, in pixels.
pub const SIZE: (u32, u32) = (760, 300);

/// Colours of the series, in order (colour-blind safe: Okabe and Ito's palette).
const PALETTE: [RGBColor; 7] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(230, 159, 0),
    RGBColor(86, 180, 233),
    RGBColor(0, 0, 0),
];

/// Colours of the fault markers, one per kind of fault.
const MARKERS: [RGBColor; 4] = [
    RGBColor(200, 30, 30),
    RGBColor(150, 90, 200),
    RGBColor(120, 120, 120),
    RGBColor(30, 140, 140),
];

/// The colour of series `i`.
pub fn colour(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

/// One line: its name (the legend) and its points.
#[derive(Clone, Debug, Default)]
pub struct Series {
    /// The legend.
    pub name: String,
    /// `(x, y)` points, in x order.
    pub points: Vec<(f64, f64)>,
    /// Drawn dashed (a second statistic of the same run, such as p50 beside p99).
    pub dashed: bool,
    /// Its colour's index in the palette.
    pub colour: usize,
}

/// A vertical line at `at` on the x axis: a fault.
#[derive(Clone, Debug)]
pub struct Marker {
    /// Where.
    pub at: f64,
    /// What (the legend shows each label once).
    pub label: String,
}

/// A line chart.
#[derive(Clone, Debug, Default)]
pub struct Lines<'a> {
    /// Above the chart.
    pub title: &'a str,
    /// Under the x axis.
    pub x_label: &'a str,
    /// Beside the y axis.
    pub y_label: &'a str,
    /// The lines.
    pub series: &'a [Series],
    /// Fault markers.
    pub markers: &'a [Marker],
    /// A logarithmic y axis (latencies).
    pub log_y: bool,
    /// The y axis starts here instead of at the data's lowest value or 0.
    pub y_min: Option<f64>,
    /// The y axis ends here instead of at the data's highest value.
    pub y_max: Option<f64>,
    /// A logarithmic x axis (a latency distribution).
    pub log_x: bool,
}

fn bounds(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    values
        .filter(|v| v.is_finite())
        .fold(None, |acc, v| match acc {
            None => Some((v, v)),
            Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
        })
}

/// A dashed version of a line (plotters draws solid paths only).
fn dashes(points: &[(f64, f64)], every: usize) -> Vec<Vec<(f64, f64)>> {
    points
        .chunks(every.max(2))
        .enumerate()
        .filter(|(i, _)| i % 2 == 0)
        .map(|(_, c)| c.to_vec())
        .collect()
}

fn svg(draw: impl FnOnce(&DrawingArea<SVGBackend, Shift>) -> Result<(), String>) -> String {
    let mut out = String::new();
    let result = {
        let root = SVGBackend::with_string(&mut out, SIZE).into_drawing_area();
        root.fill(&WHITE)
            .map_err(|e| e.to_string())
            .and_then(|()| draw(&root))
            .and_then(|()| root.present().map_err(|e| e.to_string()))
    };
    match result {
        Ok(()) => out,
        // A chart that cannot be drawn says why, in place of the chart.
        Err(err) => format!(
            "<svg xmlns='http://www.w3.org/2000/svg' width='{}' height='40'><text x='4' y='20'>\
             chart not drawn: {}</text></svg>",
            SIZE.0,
            html_escape(&err)
        ),
    }
}

/// Escapes text for HTML and SVG.
pub fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&#39;")
        .replace('"', "&quot;")
}

/// An axis label: whole numbers without decimals, small ones with what they need.
fn number(v: f64) -> String {
    if v == v.round() {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{}", (v * 1000.0).round() / 1000.0)
    }
}

/// A Markdown table (`| a | b |` lines, the `|---|` line skipped) as an HTML `<table>`, the
/// first line as its header; cells escaped.
pub fn markdown_table(markdown: &str) -> String {
    let rows: String = markdown
        .lines()
        .filter(|l| l.starts_with('|') && !l.starts_with("|---"))
        .enumerate()
        .map(|(i, line)| {
            let cell = if i == 0 { "th" } else { "td" };
            let cells: String = line
                .trim_matches('|')
                .split('|')
                .map(|c| format!("<{cell}>{}</{cell}>", html_escape(c.trim())))
                .collect();
            format!("<tr>{cells}</tr>")
        })
        .collect();
    format!("<table>{rows}</table>")
}

fn e(err: impl std::fmt::Display) -> String {
    err.to_string()
}

/// Draws `chart` as one `<svg>`.
pub fn lines(chart: &Lines) -> String {
    let xs = bounds(
        chart
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.0)),
    )
    .unwrap_or((0.0, 1.0));
    let (x_lo, mut x_hi) =
        bounds(chart.markers.iter().map(|m| m.at).chain([xs.0, xs.1])).unwrap_or((0.0, 1.0));
    if x_hi <= x_lo {
        x_hi = x_lo + 1.0;
    }
    let ys = bounds(
        chart
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.1)),
    )
    .unwrap_or((0.0, 1.0));
    let mut y_lo = chart
        .y_min
        .unwrap_or(if chart.log_y { ys.0 } else { ys.0.min(0.0) });
    let mut y_hi = chart.y_max.unwrap_or(ys.1);
    if chart.log_y {
        y_lo = y_lo.max(1e-3);
        y_hi = y_hi.max(y_lo * 10.0);
    } else if y_hi <= y_lo {
        y_hi = y_lo + 1.0;
    } else if chart.y_max.is_none() {
        y_hi += (y_hi - y_lo) * 0.05;
    }
    let x_lo = if chart.log_x { x_lo.max(1e-3) } else { x_lo };
    let x_hi = if chart.log_x {
        x_hi.max(x_lo * 10.0)
    } else {
        x_hi
    };
    svg(|root| {
        let mut builder = ChartBuilder::on(root);
        builder
            .caption(chart.title, ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(36)
            .y_label_area_size(56);
        // Four coordinate kinds are four chart types: one generic body draws them all.
        macro_rules! body {
            ($ctx:expr) => {{
                let mut ctx = $ctx;
                ctx.configure_mesh()
                    .x_desc(chart.x_label)
                    .y_desc(chart.y_label)
                    .x_label_formatter(&|v| number(*v))
                    .y_label_formatter(&|v| number(*v))
                    .light_line_style(RGBColor(235, 235, 235))
                    .draw()
                    .map_err(e)?;
                // One colour per kind of fault; the legend names each kind once.
                let mut kinds: Vec<&str> = Vec::new();
                for marker in chart.markers {
                    let first = !kinds.contains(&marker.label.as_str());
                    if first {
                        kinds.push(&marker.label);
                    }
                    let kind = kinds.iter().position(|k| *k == marker.label).unwrap_or(0);
                    let colour = MARKERS[kind % MARKERS.len()];
                    let drawn = ctx
                        .draw_series(std::iter::once(PathElement::new(
                            vec![(marker.at, y_lo), (marker.at, y_hi)],
                            colour.mix(0.8).stroke_width(1),
                        )))
                        .map_err(e)?;
                    if first {
                        drawn.label(marker.label.clone()).legend(move |(x, y)| {
                            PathElement::new(
                                vec![(x + 9, y - 6), (x + 9, y + 6)],
                                colour.stroke_width(2),
                            )
                        });
                    }
                }
                for series in chart.series {
                    let colour = colour(series.colour);
                    let points: Vec<(f64, f64)> = series
                        .points
                        .iter()
                        .copied()
                        .filter(|p| p.0.is_finite() && p.1.is_finite())
                        .map(|(x, y)| (x, y.clamp(y_lo, y_hi)))
                        .collect();
                    let drawn = if series.dashed {
                        ctx.draw_series(
                            dashes(&points, 3)
                                .into_iter()
                                .map(|d| PathElement::new(d, colour.stroke_width(1))),
                        )
                        .map_err(e)?
                    } else {
                        ctx.draw_series(LineSeries::new(points, colour.stroke_width(2)))
                            .map_err(e)?
                    };
                    drawn.label(series.name.clone()).legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(2))
                    });
                }
                if !chart.series.is_empty() || !chart.markers.is_empty() {
                    ctx.configure_series_labels()
                        .background_style(WHITE.mix(0.85))
                        .border_style(RGBColor(200, 200, 200))
                        .position(SeriesLabelPosition::UpperRight)
                        .draw()
                        .map_err(e)?;
                }
                Ok(())
            }};
        }
        match (chart.log_x, chart.log_y) {
            (false, false) => body!(
                builder
                    .build_cartesian_2d(x_lo..x_hi, y_lo..y_hi)
                    .map_err(e)?
            ),
            (false, true) => body!(
                builder
                    .build_cartesian_2d(x_lo..x_hi, (y_lo..y_hi).log_scale())
                    .map_err(e)?
            ),
            (true, false) => body!(
                builder
                    .build_cartesian_2d((x_lo..x_hi).log_scale(), y_lo..y_hi)
                    .map_err(e)?
            ),
            (true, true) => body!(
                builder
                    .build_cartesian_2d((x_lo..x_hi).log_scale(), (y_lo..y_hi).log_scale())
                    .map_err(e)?
            ),
        }
    })
}

/// One group of bars: a label under it and one bar per series.
#[derive(Clone, Debug)]
pub struct BarGroup {
    /// Under the group.
    pub label: String,
    /// One value per series (`None`: no bar).
    pub values: Vec<Option<f64>>,
}

/// Grouped bars: `groups` along x, one bar per series name in each.
pub fn bars(title: &str, y_label: &str, series: &[String], groups: &[BarGroup]) -> String {
    let y_hi = bounds(
        groups
            .iter()
            .flat_map(|g| g.values.iter().flatten().copied()),
    )
    .map_or(1.0, |(_, hi)| if hi > 0.0 { hi * 1.1 } else { 1.0 });
    let n = groups.len().max(1);
    let width = series.len().max(1) as f64;
    svg(|root| {
        let mut ctx = ChartBuilder::on(root)
            .caption(title, ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(0.0..n as f64, 0.0..y_hi)
            .map_err(e)?;
        let labels: Vec<String> = groups.iter().map(|g| g.label.clone()).collect();
        ctx.configure_mesh()
            .disable_x_mesh()
            .x_labels(n.min(30))
            .x_label_formatter(&|x| {
                let i = x.floor() as usize;
                if (x - x.floor() - 0.5).abs() < 0.26 || n <= 30 {
                    labels.get(i).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .y_desc(y_label)
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .map_err(e)?;
        for (s, name) in series.iter().enumerate() {
            let colour = colour(s);
            let rects = groups.iter().enumerate().filter_map(|(g, group)| {
                let value = (*group.values.get(s)?)?;
                let left = g as f64 + 0.1 + 0.8 * s as f64 / width;
                let right = left + 0.8 / width;
                Some(Rectangle::new(
                    [(left, 0.0), (right, value)],
                    colour.filled(),
                ))
            });
            ctx.draw_series(rects)
                .map_err(e)?
                .label(name.clone())
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 12, y + 5)], colour.filled())
                });
        }
        ctx.configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(200, 200, 200))
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(e)?;
        Ok(())
    })
}

/// The share of `latencies_ms` at or below each latency: `(latency, fraction)` points of a
/// cumulative distribution, at most `points` of them (the largest value is always one).
pub fn cdf(latencies_ms: &[f64], points: usize) -> Vec<(f64, f64)> {
    let mut sorted: Vec<f64> = latencies_ms
        .iter()
        .copied()
        .filter(|v| v.is_finite())
        .collect();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    if n == 0 {
        return Vec::new();
    }
    let step = n.div_ceil(points.max(1)).max(1);
    let mut out: Vec<(f64, f64)> = (step - 1..n)
        .step_by(step)
        .map(|i| (sorted[i], (i + 1) as f64 / n as f64))
        .collect();
    if out.last().map(|p| p.1) != Some(1.0) {
        out.push((sorted[n - 1], 1.0));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(svg: &str, what: &str) -> usize {
        svg.matches(what).count()
    }

    #[test]
    fn a_line_chart_has_its_lines_markers_and_legend() {
        let series = [
            Series {
                name: "leader".into(),
                points: (0..50).map(|i| (f64::from(i), f64::from(i % 7))).collect(),
                ..Series::default()
            },
            Series {
                name: "leaderless p50".into(),
                points: (0..50).map(|i| (f64::from(i), 1.0)).collect(),
                dashed: true,
                colour: 1,
            },
        ];
        let markers = [
            Marker {
                at: 10.0,
                label: "kill".into(),
            },
            Marker {
                at: 30.0,
                label: "kill".into(),
            },
        ];
        let svg = lines(&Lines {
            title: "ok requests per second",
            x_label: "seconds",
            y_label: "ok/s",
            series: &series,
            markers: &markers,
            ..Lines::default()
        });
        assert!(svg.starts_with("<svg"), "{svg}");
        assert!(svg.contains("ok requests per second") && svg.contains("leaderless p50"));
        // The solid line is one polyline; the markers two; the legend one per series.
        assert!(count(&svg, "<polyline") >= 1 + 2 + 2, "{svg}");
        assert!(!svg.contains("chart not drawn"), "{svg}");
    }

    #[test]
    fn log_axes_empty_series_and_bars_draw() {
        let svg = lines(&Lines {
            title: "latency",
            series: &[Series {
                name: "p99".into(),
                points: vec![(0.0, 0.5), (1.0, 2000.0)],
                ..Series::default()
            }],
            log_y: true,
            ..Lines::default()
        });
        assert!(!svg.contains("chart not drawn"), "{svg}");
        let empty = lines(&Lines {
            title: "nothing",
            ..Lines::default()
        });
        assert!(empty.starts_with("<svg") && !empty.contains("chart not drawn"));
        let cdf_svg = lines(&Lines {
            title: "distribution",
            series: &[Series {
                name: "leader".into(),
                points: cdf(&[1.0, 2.0, 3.0, 500.0], 100),
                ..Series::default()
            }],
            log_x: true,
            y_min: Some(0.0),
            y_max: Some(1.0),
            ..Lines::default()
        });
        assert!(!cdf_svg.contains("chart not drawn"), "{cdf_svg}");
        let bars = bars(
            "outage per fault",
            "ms",
            &["leader".into(), "leaderless".into()],
            &[
                BarGroup {
                    label: "kill 1".into(),
                    values: vec![Some(1500.0), Some(20.0)],
                },
                BarGroup {
                    label: "kill 2".into(),
                    values: vec![None, Some(10.0)],
                },
            ],
        );
        // Bars and legend swatches, by colour: one bar of the first series, two of the second.
        assert_eq!(count(&bars, "fill=\"#0072B2\""), 1 + 1, "{bars}");
        assert_eq!(count(&bars, "fill=\"#D55E00\""), 2 + 1, "{bars}");
    }

    #[test]
    fn a_markdown_table_becomes_an_escaped_html_table() {
        let html = markdown_table("| mode | p99 |\n|---|---|\n| leader | <1 & 2> |\nnot a row\n");
        assert_eq!(
            html,
            "<table><tr><th>mode</th><th>p99</th></tr>\
             <tr><td>leader</td><td>&lt;1 &amp; 2&gt;</td></tr></table>"
        );
    }

    #[test]
    fn a_distribution_ends_at_one_and_is_thinned() {
        let values: Vec<f64> = (1..=1000).map(f64::from).collect();
        let points = cdf(&values, 100);
        assert_eq!(points.len(), 100);
        assert_eq!(points[0], (10.0, 0.01));
        assert_eq!(*points.last().unwrap(), (1000.0, 1.0));
        assert_eq!(cdf(&[], 10), Vec::new());
        assert_eq!(cdf(&[5.0], 10), vec![(5.0, 1.0)]);
    }
}
