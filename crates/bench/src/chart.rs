//! `chart.png`: throughput relative to the no-op baseline, one group of bars per row, one bar
//! per client count. Drawn without text (no font dependency); the Markdown table carries the
//! labels and the report says how to read the chart.

use std::path::Path;

use plotters::prelude::*;

use super::calls::Workload;
use super::report::Report;

const WIDTH: u32 = 1000;
const HEIGHT: u32 = 500;
const MARGIN: i32 = 30;
const BROKER: [RGBColor; 2] = [RGBColor(120, 160, 220), RGBColor(30, 80, 170)];
const SPIRE: [RGBColor; 2] = [RGBColor(250, 190, 120), RGBColor(220, 110, 20)];
const BASELINE: RGBColor = RGBColor(140, 140, 140);
const AXIS: RGBColor = RGBColor(40, 40, 40);

/// Draws the chart to `path`.
///
/// # Errors
/// The PNG cannot be written.
pub fn draw(report: &Report, path: &Path) -> anyhow::Result<()> {
    let root = BitMapBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    let err = |e| anyhow::anyhow!("{e:?}");
    root.fill(&WHITE).map_err(err)?;

    let mut groups: Vec<Workload> = Vec::new();
    for r in &report.rows {
        if !groups.contains(&r.workload) {
            groups.push(r.workload);
        }
    }
    let clients = &report.settings.clients;
    let max_ratio = report
        .rows
        .iter()
        .filter_map(|r| report.ratio(r))
        .fold(1.0f64, f64::max)
        * 1.1;

    let (left, right) = (MARGIN, WIDTH as i32 - MARGIN);
    let (top, bottom) = (MARGIN, HEIGHT as i32 - MARGIN);
    let y_of = |ratio: f64| bottom - ((ratio / max_ratio) * f64::from(bottom - top)) as i32;
    let group_w = (right - left) / groups.len().max(1) as i32;
    let bar_w = (group_w * 3 / 4) / clients.len().max(1) as i32;

    for (g, w) in groups.iter().enumerate() {
        let palette = if *w == Workload::SpireJwtFreshAudience {
            SPIRE
        } else {
            BROKER
        };
        let x0 = left + g as i32 * group_w + group_w / 8;
        for (i, &c) in clients.iter().enumerate() {
            let Some(ratio) = report.row(*w, c).and_then(|r| report.ratio(r)) else {
                continue;
            };
            let color = palette[i.min(1)];
            let bx = x0 + i as i32 * bar_w;
            root.draw(&Rectangle::new(
                [(bx, y_of(ratio)), (bx + bar_w - 2, bottom)],
                color.filled(),
            ))
            .map_err(err)?;
        }
    }
    root.draw(&PathElement::new(
        vec![(left, y_of(1.0)), (right, y_of(1.0))],
        BASELINE.stroke_width(2),
    ))
    .map_err(err)?;
    root.draw(&PathElement::new(
        vec![(left, top), (left, bottom), (right, bottom)],
        AXIS.stroke_width(2),
    ))
    .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}
