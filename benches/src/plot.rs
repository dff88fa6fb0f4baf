//! The chart `docs/BENCHMARKS.md` shows: packet loss against offered load, one line per recorder
//! (callrec xdp, callrec af-packet, tcpdump), drawn as SVG with plotters from the live bench's JSON.

use std::path::Path;

use anyhow::{Result, anyhow};
use plotters::prelude::*;
use serde_json::Value;

pub fn loss_chart(live: &Value, out: &Path) -> Result<()> {
    let runs = live["runs"].as_array().ok_or_else(|| anyhow!("no runs in the live bench result"))?;
    let mut modes: Vec<String> = Vec::new();
    for r in runs {
        let m = r["mode"].as_str().unwrap_or("?").to_string();
        if !modes.contains(&m) {
            modes.push(m);
        }
    }
    let x_max = runs.iter().filter_map(|r| r["offered_pps"].as_f64()).fold(1.0, f64::max) / 1000.0 * 1.05;
    let y_max = runs.iter().filter_map(|r| r["loss_ratio"].as_f64()).fold(0.0, f64::max).max(0.001) * 100.0 * 1.15;
    let root = SVGBackend::new(out, (800, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Packet loss against offered load (2-core veth rig)", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc("offered load: packets/s the generator achieved, thousands")
        .y_desc("packets lost, % of sent")
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    let colours = [RED, BLUE, GREEN, MAGENTA, CYAN];
    for (i, m) in modes.iter().enumerate() {
        let pts: Vec<(f64, f64)> = runs
            .iter()
            .filter(|r| r["mode"].as_str() == Some(m))
            .filter_map(|r| Some((r["offered_pps"].as_f64()? / 1000.0, r["loss_ratio"].as_f64()? * 100.0)))
            .collect();
        let c = colours[i % colours.len()];
        let label = if m == "tcpdump" { "tcpdump -w".to_string() } else { format!("callrec --mode {m}") };
        chart
            .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))
            .map_err(|e| anyhow!("{e}"))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        chart.draw_series(pts.iter().map(|&p| Circle::new(p, 4, c.filled()))).map_err(|e| anyhow!("{e}"))?;
    }
    chart.configure_series_labels().border_style(BLACK).background_style(WHITE).draw().map_err(|e| anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(())
}
