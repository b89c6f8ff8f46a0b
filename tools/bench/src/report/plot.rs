//! The report's plots, as SVG drawn with plotters: host RSS through the timeline's
//! workload (a panel per VMM), the share of freed memory back over time, and the total
//! host RSS of the density scenario's four guests.
//!
//! Every finished run is drawn as a thin line; the run whose figure is the median one is
//! drawn bold, and its phases mark the timeline.

use std::fs;
use std::path::{Path, PathBuf};

use plotters::prelude::*;

use super::stats::{median_index, summarize};
use super::RunData;
use crate::figures::key;
use crate::plan::{Scenario, DENSITY_GUESTS, FILL_MIB};
use crate::results::{StepRecord, RSS_FILE};
use crate::sampler::{self, Sample};

const WIDTH: u32 = 1000;
const FONT: &str = "sans-serif";

type DrawResult<T> = Result<T, String>;
/// A run's (seconds after the free, percent back) points.
type Curve = Vec<(f64, f64)>;

fn err<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

fn color(vmm: &str) -> RGBColor {
    match vmm {
        "vmm" => RGBColor(31, 119, 180),
        "qemu" => RGBColor(214, 39, 40),
        _ => RGBColor(44, 160, 44),
    }
}

/// A finished run's samples, read from its directory.
struct Series {
    record: StepRecord,
    samples: Vec<Sample>,
}

fn series(data: &RunData, scenario: Scenario, vmm: &str) -> Vec<Series> {
    data.ok_steps(scenario, vmm)
        .filter_map(|(record, dir): &(StepRecord, PathBuf)| {
            let text = fs::read_to_string(dir.join(RSS_FILE)).ok()?;
            let samples = sampler::from_csv(&text);
            (!samples.is_empty()).then(|| Series {
                record: record.clone(),
                samples,
            })
        })
        .collect()
}

/// Draws every plot the run has data for into `dir`; returns (file name, caption) of each.
pub fn draw_all(data: &RunData, dir: &Path) -> DrawResult<Vec<(String, String)>> {
    let mut drawn = Vec::new();
    if timeline(data, &dir.join("timeline.svg"))? {
        drawn.push((
            "timeline.svg".to_string(),
            "Host RSS of the VMM process through the timeline workload (2 GiB guest, 2 vCPUs); \
             bold: the run with the median length, with its phases marked"
                .to_string(),
        ));
    }
    if returned(data, &dir.join("returned.svg"))? {
        drawn.push((
            "returned.svg".to_string(),
            format!(
                "Share of the {FILL_MIB} MiB the guest freed that is back on the host, by seconds \
                 after the free; thin: each run, bold: the median at each moment"
            ),
        ));
    }
    if density(data, &dir.join("density.svg"))? {
        drawn.push((
            "density.svg".to_string(),
            format!(
                "Total host RSS of {DENSITY_GUESTS} VMM processes, each guest (1 GiB, 1 vCPU) \
                 filling {FILL_MIB} MiB and freeing it; bold: the run with the median peak"
            ),
        ));
    }
    Ok(drawn)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Each VMM's series of `scenario`, leaving out the VMMs without any.
fn runs_of(data: &RunData, scenario: Scenario) -> Vec<(String, Vec<Series>)> {
    data.vmms
        .iter()
        .map(|v| (v.clone(), series(data, scenario, v)))
        .filter(|(_, s)| !s.is_empty())
        .collect()
}

/// The last sample time (s) and the highest total (MiB) over all `runs`, at least 1 each.
fn extent(runs: &[(String, Vec<Series>)]) -> (f64, f64) {
    let all = || runs.iter().flat_map(|(_, s)| s);
    let x_max = all()
        .filter_map(|s| s.samples.last().map(|l| l.t_s))
        .fold(1.0, f64::max);
    let y_max = all()
        .flat_map(|s| &s.samples)
        .map(|s| mib(s.total_kib()))
        .fold(1.0, f64::max);
    (x_max, y_max)
}

fn timeline(data: &RunData, path: &Path) -> DrawResult<bool> {
    let runs = runs_of(data, Scenario::Timeline);
    if runs.is_empty() {
        return Ok(false);
    }
    let (x_max, y_top) = extent(&runs);
    let y_max = y_top * 1.15;
    let root = SVGBackend::new(path, (WIDTH, 380 * runs.len() as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    for (area, (vmm, runs)) in root.split_evenly((runs.len(), 1)).iter().zip(&runs) {
        let mut chart = ChartBuilder::on(area)
            .caption(format!("{vmm}: host RSS"), (FONT, 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..x_max, 0.0..y_max)
            .map_err(err)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_desc("seconds since the VMM was started")
            .y_desc("host RSS (MiB)")
            .draw()
            .map_err(err)?;
        let c = color(vmm);
        let durations: Vec<f64> = runs.iter().map(|s| s.record.duration_s).collect();
        let typical = median_index(&durations).unwrap_or(0);
        for (i, s) in runs.iter().enumerate() {
            let style = if i == typical {
                c.stroke_width(2)
            } else {
                c.mix(0.3).stroke_width(1)
            };
            let points = s.samples.iter().map(|p| (p.t_s, mib(p.total_kib())));
            chart
                .draw_series(LineSeries::new(points, style))
                .map_err(err)?;
        }
        let label_font = (FONT, 11)
            .into_font()
            .transform(FontTransform::Rotate90)
            .color(&BLACK.mix(0.7));
        for phase in &runs[typical].record.phases {
            let x = phase.start_s;
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![(x, 0.0), (x, y_max)],
                    BLACK.mix(0.25),
                )))
                .map_err(err)?;
            chart
                .draw_series(std::iter::once(Text::new(
                    phase.name.clone(),
                    (x, y_max * 0.99),
                    label_font.clone(),
                )))
                .map_err(err)?;
        }
    }
    root.present().map_err(err)?;
    Ok(true)
}

/// Seconds after the free at which the returned share is plotted.
fn returned_grid() -> impl Iterator<Item = f64> {
    (0..=40).map(|i| f64::from(i) * 0.25)
}

/// One run's returned share (percent) at each grid point.
fn returned_curve(s: &Series) -> Option<Curve> {
    let at = *s.record.figures.get(key::FREED_AT_S)?;
    let filled_kib = *s.record.figures.get(key::FILLED_RSS_MIB)? * 1024.0;
    let fill_kib = (FILL_MIB * 1024) as f64;
    Some(
        returned_grid()
            .filter_map(|x| {
                let now = sampler::total_kib_at(&s.samples, at + x)?;
                Some((x, 100.0 * (filled_kib - now) / fill_kib))
            })
            .collect(),
    )
}

fn returned(data: &RunData, path: &Path) -> DrawResult<bool> {
    let curves: Vec<(String, Vec<Curve>)> = data
        .vmms
        .iter()
        .map(|v| {
            let c: Vec<_> = series(data, Scenario::Timeline, v)
                .iter()
                .filter_map(returned_curve)
                .filter(|c| !c.is_empty())
                .collect();
            (v.clone(), c)
        })
        .filter(|(_, c)| !c.is_empty())
        .collect();
    if curves.is_empty() {
        return Ok(false);
    }
    let y_max = curves
        .iter()
        .flat_map(|(_, c)| c.iter().flatten())
        .map(|p| p.1)
        .fold(100.0, f64::max)
        + 10.0;
    let y_min = curves
        .iter()
        .flat_map(|(_, c)| c.iter().flatten())
        .map(|p| p.1)
        .fold(0.0, f64::min);
    let root = SVGBackend::new(path, (WIDTH, 450)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Freed memory back on the host", (FONT, 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..10.0, y_min..y_max)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("seconds after the guest freed the memory")
        .y_desc(format!("% of the {FILL_MIB} MiB freed"))
        .draw()
        .map_err(err)?;
    for (vmm, runs) in &curves {
        let c = color(vmm);
        for run in runs {
            chart
                .draw_series(LineSeries::new(
                    run.iter().copied(),
                    c.mix(0.3).stroke_width(1),
                ))
                .map_err(err)?;
        }
        let median: Vec<(f64, f64)> = returned_grid()
            .filter_map(|x| {
                let at_x: Vec<f64> = runs
                    .iter()
                    .filter_map(|r| r.iter().find(|p| p.0 == x).map(|p| p.1))
                    .collect();
                Some((x, summarize(&at_x)?.median))
            })
            .collect();
        chart
            .draw_series(LineSeries::new(median, c.stroke_width(2)))
            .map_err(err)?
            .label(vmm.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    chart
        .draw_series(std::iter::once(PathElement::new(
            vec![(0.0, 95.0), (10.0, 95.0)],
            BLACK.mix(0.4),
        )))
        .map_err(err)?
        .label("goal: 95 % within 5 s")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.mix(0.4)));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK.mix(0.3))
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(true)
}

fn density(data: &RunData, path: &Path) -> DrawResult<bool> {
    let runs = runs_of(data, Scenario::Density);
    if runs.is_empty() {
        return Ok(false);
    }
    let (x_max, y_top) = extent(&runs);
    let y_max = y_top * 1.1;
    let root = SVGBackend::new(path, (WIDTH, 450)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("{DENSITY_GUESTS} guests at once: total host RSS"),
            (FONT, 18),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("seconds since the first VMM was started")
        .y_desc("total host RSS (MiB)")
        .draw()
        .map_err(err)?;
    for (vmm, runs) in &runs {
        let c = color(vmm);
        let peaks: Vec<f64> = runs
            .iter()
            .map(|s| {
                s.record
                    .figures
                    .get(key::TOTAL_RSS_PEAK_MIB)
                    .copied()
                    .unwrap_or(f64::NAN)
            })
            .collect();
        let typical = median_index(&peaks).unwrap_or(0);
        for (i, s) in runs.iter().enumerate() {
            let points = s.samples.iter().map(|p| (p.t_s, mib(p.total_kib())));
            if i == typical {
                chart
                    .draw_series(LineSeries::new(points, c.stroke_width(2)))
                    .map_err(err)?
                    .label(vmm.as_str())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
                    });
            } else {
                chart
                    .draw_series(LineSeries::new(points, c.mix(0.3).stroke_width(1)))
                    .map_err(err)?;
            }
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK.mix(0.3))
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(true)
}
