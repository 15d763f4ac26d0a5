//! Renders the loopback benchmark's results (`bench/results.json`, written
//! by `bench/run.sh`) as `bench/sweep.png`: p99 latency and loss against
//! the publish rate for both servers, and idle memory per connection.
//!
//! ```text
//! cargo run --release --example bench_chart -- [RESULTS.json [OUT.png]]
//! ```
//!
//! Text needs a TrueType font: `$BENCH_FONT`, else DejaVu Sans (Debian's
//! `fonts-dejavu-core`, which `bench/run.sh` installs when missing).

fn main() -> std::process::ExitCode {
    match chart::main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("bench_chart: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

mod chart {
    use std::error::Error;

    use plotters::prelude::*;
    use plotters::style::{register_font, FontStyle};
    use serde_json::Value;

    const FONTS: &[&str] = &[
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/TTF/DejaVuSans.ttf",
        "/usr/share/fonts/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    ];

    const SERVERS: [(&str, &str, RGBColor); 2] = [
        ("crate", "tower-sse", RGBColor(0x1f, 0x77, 0xb4)),
        (
            "baseline",
            "broadcast + axum Sse",
            RGBColor(0xd6, 0x27, 0x28),
        ),
    ];

    /// One point of a rate sweep.
    struct Point {
        rate: f64,
        p99_ms: Option<f64>,
        loss_pct: f64,
        /// Every connection got every event and p99 < 100 ms.
        ok: bool,
    }

    pub(super) fn main() -> Result<(), Box<dyn Error>> {
        let mut args = std::env::args().skip(1);
        let input = args
            .next()
            .unwrap_or_else(|| "bench/results.json".to_owned());
        let output = args.next().unwrap_or_else(|| "bench/sweep.png".to_owned());
        load_font()?;
        let results: Value = serde_json::from_str(
            &std::fs::read_to_string(&input).map_err(|e| format!("{input}: {e}"))?,
        )
        .map_err(|e| format!("{input}: {e}"))?;
        draw(&results, &output)?;
        println!("wrote {output}");
        Ok(())
    }

    fn load_font() -> Result<(), Box<dyn Error>> {
        let candidates: Vec<String> = std::env::var("BENCH_FONT")
            .into_iter()
            .chain(FONTS.iter().map(|s| (*s).to_owned()))
            .collect();
        for path in &candidates {
            if let Ok(bytes) = std::fs::read(path) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                register_font("sans-serif", FontStyle::Normal, bytes)
                    .map_err(|_| format!("{path}: not a usable font"))?;
                return Ok(());
            }
        }
        Err(format!(
            "no TrueType font found (tried {candidates:?}): install fonts-dejavu-core or set BENCH_FONT"
        )
        .into())
    }

    fn sweep(results: &Value, server: &str) -> Vec<Point> {
        let Some(points) = results["servers"][server]["sweep"].as_array() else {
            return Vec::new();
        };
        points
            .iter()
            .filter(|p| !p["skipped"].as_bool().unwrap_or(false))
            .filter_map(|p| {
                let rate = p["rate"].as_f64()?;
                let expected = p["expected_events"].as_f64().unwrap_or(0.0);
                let missed = p["missed"].as_f64().unwrap_or(0.0);
                Some(Point {
                    rate,
                    p99_ms: p["p99_us"].as_f64().map(|us| us / 1000.0),
                    loss_pct: if expected > 0.0 {
                        100.0 * missed / expected
                    } else {
                        0.0
                    },
                    ok: p["ok"].as_bool().unwrap_or(false),
                })
            })
            .collect()
    }

    fn draw(results: &Value, output: &str) -> Result<(), Box<dyn Error>> {
        let root = BitMapBackend::new(output, (1500, 560)).into_drawing_area();
        root.fill(&WHITE)?;
        let title = format!(
            "tower-sse vs broadcast + axum Sse, loopback, {} connections{}",
            results["config"]["sweep_conns"].as_u64().unwrap_or(0),
            if results["config"]["quick"].as_bool().unwrap_or(false) {
                " (quick run)"
            } else {
                ""
            }
        );
        let root = root.titled(&title, ("sans-serif", 24))?;
        let panels = root.split_evenly((1, 3));

        let sweeps: Vec<(&str, RGBColor, Vec<Point>)> = SERVERS
            .iter()
            .map(|&(key, name, color)| (name, color, sweep(results, key)))
            .collect();
        // Rates on an even, categorical axis: point i is the i-th rate tried.
        let mut rates: Vec<f64> = sweeps
            .iter()
            .flat_map(|(_, _, points)| points.iter().map(|p| p.rate))
            .collect();
        rates.sort_by(f64::total_cmp);
        rates.dedup();
        let x_of = |rate: f64| rates.iter().position(|&r| r == rate).unwrap_or(0) as f64;
        let x_range = -0.3..(rates.len().max(1) as f64 - 0.7);
        let rate_label = |x: &f64| {
            let i = x.round();
            if (x - i).abs() > 0.01 || i < 0.0 {
                return String::new();
            }
            rates
                .get(i as usize)
                .map(|r| format!("{r:.0}"))
                .unwrap_or_default()
        };

        // p99 latency, log scale.
        {
            let p99s: Vec<f64> = sweeps
                .iter()
                .flat_map(|(_, _, points)| points.iter().filter_map(|p| p.p99_ms))
                .collect();
            let top = p99s.iter().copied().fold(200.0, f64::max) * 2.0;
            let bottom = p99s.iter().copied().fold(f64::INFINITY, f64::min).min(1.0) / 2.0;
            let bottom = bottom.max(0.001);
            let mut chart = ChartBuilder::on(&panels[0])
                .caption("p99 latency vs rate", ("sans-serif", 20))
                .margin(12)
                .x_label_area_size(45)
                .y_label_area_size(60)
                .build_cartesian_2d(x_range.clone(), (bottom..top).log_scale())?;
            chart
                .configure_mesh()
                .disable_x_mesh()
                .light_line_style(WHITE.mix(0.0))
                .x_labels(rates.len() * 4 + 1)
                .x_label_formatter(&rate_label)
                .y_label_formatter(&|ms| {
                    if *ms >= 1.0 {
                        format!("{ms:.0}")
                    } else {
                        format!("{ms}")
                    }
                })
                .x_desc("events/s to every connection")
                .y_desc("p99 latency, ms (log)")
                .label_style(("sans-serif", 14))
                .draw()?;
            chart.draw_series(LineSeries::new(
                [(x_range.start, 100.0), (x_range.end, 100.0)],
                BLACK.mix(0.5).stroke_width(1),
            ))?;
            chart.draw_series(std::iter::once(Text::new(
                "100 ms",
                (x_range.start + 0.05, 115.0),
                ("sans-serif", 13),
            )))?;
            for (name, color, points) in &sweeps {
                let line: Vec<(f64, f64)> = points
                    .iter()
                    .filter_map(|p| p.p99_ms.map(|ms| (x_of(p.rate), ms.max(bottom))))
                    .collect();
                chart
                    .draw_series(LineSeries::new(line.clone(), color.stroke_width(2)))?
                    .label(*name)
                    .legend(move |(x, y)| {
                        PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2))
                    });
                // Filled: every connection got every event and p99 < 100 ms;
                // hollow: not.
                chart.draw_series(points.iter().filter_map(|p| {
                    let ms = p.p99_ms?.max(bottom);
                    Some(Circle::new(
                        (x_of(p.rate), ms),
                        5,
                        if p.ok {
                            color.filled()
                        } else {
                            color.stroke_width(2)
                        },
                    ))
                }))?;
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK.mix(0.3))
                .label_font(("sans-serif", 14))
                .draw()?;
        }

        // Loss.
        {
            let worst = sweeps
                .iter()
                .flat_map(|(_, _, points)| points.iter().map(|p| p.loss_pct))
                .fold(0.0, f64::max);
            let top = if worst > 0.0 { worst * 1.2 } else { 1.0 };
            let mut chart = ChartBuilder::on(&panels[1])
                .caption("events lost vs rate", ("sans-serif", 20))
                .margin(12)
                .x_label_area_size(45)
                .y_label_area_size(60)
                .build_cartesian_2d(x_range.clone(), 0.0..top)?;
            chart
                .configure_mesh()
                .disable_x_mesh()
                .light_line_style(WHITE.mix(0.0))
                .x_labels(rates.len() * 4 + 1)
                .x_label_formatter(&rate_label)
                .x_desc("events/s to every connection")
                .y_desc("% of expected deliveries lost")
                .label_style(("sans-serif", 14))
                .draw()?;
            for (name, color, points) in &sweeps {
                let line: Vec<(f64, f64)> =
                    points.iter().map(|p| (x_of(p.rate), p.loss_pct)).collect();
                chart
                    .draw_series(LineSeries::new(line.clone(), color.stroke_width(2)))?
                    .label(*name)
                    .legend(move |(x, y)| {
                        PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2))
                    });
                chart.draw_series(
                    line.iter()
                        .map(|&(x, y)| Circle::new((x, y), 4, color.filled())),
                )?;
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK.mix(0.3))
                .label_font(("sans-serif", 14))
                .draw()?;
        }

        // Idle memory per connection.
        {
            let bars: Vec<(&str, RGBColor, f64)> = SERVERS
                .iter()
                .map(|&(key, name, color)| {
                    let kb = results["servers"][key]["idle"]["kb_per_conn"]
                        .as_f64()
                        .unwrap_or(0.0);
                    (name, color, kb)
                })
                .collect();
            let top = bars.iter().map(|b| b.2).fold(8.0, f64::max) * 1.25;
            let conns = results["config"]["idle_conns"].as_u64().unwrap_or(0);
            let mut chart = ChartBuilder::on(&panels[2])
                .caption(
                    format!("idle memory per connection (KB, {conns} conns)"),
                    ("sans-serif", 20),
                )
                .margin(12)
                .x_label_area_size(45)
                .y_label_area_size(60)
                .build_cartesian_2d(0.0..2.0, 0.0..top)?;
            chart
                .configure_mesh()
                .disable_x_mesh()
                .disable_x_axis()
                .light_line_style(WHITE.mix(0.0))
                .y_desc("KB of server RSS per connection")
                .label_style(("sans-serif", 14))
                .draw()?;
            chart.draw_series(LineSeries::new(
                [(0.0, 8.0), (2.0, 8.0)],
                BLACK.mix(0.4).stroke_width(1),
            ))?;
            for (i, (name, color, kb)) in bars.iter().enumerate() {
                let x = i as f64;
                chart.draw_series(std::iter::once(Rectangle::new(
                    [(x + 0.2, 0.0), (x + 0.8, *kb)],
                    color.filled(),
                )))?;
                chart.draw_series(std::iter::once(Text::new(
                    format!("{kb:.1} KB"),
                    (x + 0.3, kb + top * 0.03),
                    ("sans-serif", 16),
                )))?;
                chart.draw_series(std::iter::once(Text::new(
                    (*name).to_owned(),
                    (x + 0.15, top * 0.97),
                    ("sans-serif", 14),
                )))?;
            }
            // Between the bars, over the line.
            chart.draw_series(std::iter::once(Text::new(
                "target: 8 KB",
                (0.82, 8.0 + top * 0.045),
                ("sans-serif", 13),
            )))?;
        }
        root.present()?;
        Ok(())
    }
}
