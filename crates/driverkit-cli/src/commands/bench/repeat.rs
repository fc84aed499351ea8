//! `driverkit bench --repeat N`: every figure measured N times, reported
//! as the median of the runs' first numbers (p50, median or value) with
//! their spread, the baseline's the same way, and the target judged on the
//! two medians. This machine's figures move between runs (shared, 2
//! cores): one run's luck neither meets a target nor misses it.

use super::harness::{Figure, Stat, Target};

/// One figure over every run.
struct Summary {
    bench: &'static str,
    unit: &'static str,
    stat: Stat,
    target: Option<Target>,
    /// The runs' first numbers, in run order.
    ours: Vec<f64>,
    /// The baseline's name and its runs' first numbers.
    baseline: Option<(&'static str, Vec<f64>)>,
}

impl Summary {
    fn ratios(&self) -> Vec<f64> {
        match &self.baseline {
            Some((_, base)) => self
                .ours
                .iter()
                .zip(base)
                .filter(|(_, b)| **b > 0.0)
                .map(|(o, b)| o / b)
                .collect(),
            None => Vec::new(),
        }
    }

    fn met(&self) -> Option<bool> {
        let base = self.baseline.as_ref().map(|(_, b)| median(b));
        self.target.and_then(|t| t.met(median(&self.ours), base))
    }
}

/// The figures of every run, in the order they first came. A benchmark
/// may give several figures of one name (one per baseline or condition):
/// the k-th of a name in one run goes with the k-th in the others.
fn summarize(runs: &[Vec<Figure>]) -> Vec<Summary> {
    let mut out: Vec<Summary> = Vec::new();
    // (name, k) of each summary in `out`, same order.
    let mut keys: Vec<(&'static str, usize)> = Vec::new();
    for run in runs {
        let mut seen: Vec<&'static str> = Vec::new();
        for figure in run {
            let key = (
                figure.bench,
                seen.iter().filter(|n| **n == figure.bench).count(),
            );
            seen.push(figure.bench);
            let at = keys.iter().position(|k| *k == key).unwrap_or_else(|| {
                keys.push(key);
                out.push(Summary {
                    bench: figure.bench,
                    unit: figure.unit,
                    stat: figure.stat,
                    target: figure.target,
                    ours: Vec::new(),
                    baseline: figure.baseline.map(|(name, _, _)| (name, Vec::new())),
                });
                out.len() - 1
            });
            let s = &mut out[at];
            s.ours.push(figure.p50);
            if let (Some((_, runs)), Some((_, b, _))) = (&mut s.baseline, figure.baseline) {
                runs.push(b);
            }
        }
    }
    out
}

/// The middle value (the mean of the two middle ones for an even count);
/// NaN for none.
fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

fn spread(values: &[f64]) -> (f64, f64) {
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (lo, hi)
}

/// Prints the summary of `runs`: a table, or one JSON object per figure.
pub(super) fn print(runs: &[Vec<Figure>], json: bool) {
    let summaries = summarize(runs);
    if !json {
        println!(
            "{:<28} {:<30} {:>12} {:>25} {:<9} {:<26} {:>12} {:>8} {:>16} {:<18} MET",
            "BENCH",
            "STAT",
            "MEDIAN",
            "SPREAD",
            "UNIT",
            "BASELINE",
            "BASE MEDIAN",
            "RATIO",
            "RATIOS",
            "TARGET"
        );
    }
    for s in &summaries {
        let first = s.stat.labels().0;
        let ours = median(&s.ours);
        let (lo, hi) = spread(&s.ours);
        let ratios = s.ratios();
        let base = s.baseline.as_ref().map(|(name, b)| (*name, median(b)));
        let ratio = base.map(|(_, b)| ours / b).filter(|r| r.is_finite());
        let met = s.met();
        if json {
            let mut o = serde_json::json!({
                "bench": s.bench,
                "unit": s.unit,
                "runs": s.ours.len(),
                "of": first,
                "median": ours,
                "min": lo,
                "max": hi,
            });
            if let Some((name, b)) = base {
                o["baseline"] = name.into();
                o["baseline_median"] = b.into();
                o["ratios"] = ratios.clone().into();
            }
            if let Some(t) = s.target {
                o["target"] = t.describe(s.unit).into();
            }
            if let Some(m) = met {
                o["met"] = m.into();
            }
            println!("{o}");
            continue;
        }
        let (rlo, rhi) = spread(&ratios);
        println!(
            "{:<28} {:<30} {:>12.1} {:>25} {:<9} {:<26} {:>12} {:>8} {:>16} {:<18} {}",
            s.bench,
            format!("median of {} runs' {first}", s.ours.len()),
            ours,
            format!("{lo:.1} - {hi:.1}"),
            s.unit,
            base.map_or("-", |(name, _)| name),
            base.map_or_else(|| "-".into(), |(_, b)| format!("{b:.1}")),
            ratio.map_or_else(|| "-".into(), |r| format!("{r:.2}x")),
            if ratios.is_empty() {
                "-".into()
            } else {
                format!("{rlo:.2}x - {rhi:.2}x")
            },
            s.target
                .map(|t| t.describe(s.unit))
                .unwrap_or_else(|| "-".into()),
            match met {
                Some(true) => "yes",
                Some(false) => "NO",
                None => "-",
            }
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figure(p50: f64, base: f64) -> Figure {
        Figure {
            bench: "serial_throughput",
            unit: "MB/s",
            p50,
            p99: 0.0,
            baseline: Some(("raw_pty_echo", base, 0.0)),
            stat: Stat::MedianLowest { runs: 3 },
            target: Some(Target::AtLeastRatio(0.8)),
        }
    }

    #[test]
    fn the_target_is_judged_on_the_medians_of_the_runs() {
        // One lucky run (0.9x) and two that miss: the median misses.
        let runs = vec![
            vec![figure(90.0, 100.0)],
            vec![figure(70.0, 100.0)],
            vec![figure(75.0, 100.0)],
        ];
        let s = summarize(&runs);
        assert_eq!(s.len(), 1);
        assert_eq!(median(&s[0].ours), 75.0);
        assert_eq!(spread(&s[0].ours), (70.0, 90.0));
        assert_eq!(s[0].met(), Some(false));
        // Two figures of one name (two baselines) stay two.
        let mut two = figure(50.0, 100.0);
        two.baseline = Some(("raw_spin_shm", 10.0, 0.0));
        let runs = vec![
            vec![figure(90.0, 100.0), two.clone()],
            vec![figure(80.0, 100.0), two],
        ];
        let s = summarize(&runs);
        assert_eq!(s.len(), 2);
        assert_eq!(
            (s[0].ours.clone(), s[1].ours.clone()),
            (vec![90.0, 80.0], vec![50.0, 50.0])
        );
        // One unlucky run among three that meet it: met.
        let runs = vec![
            vec![figure(60.0, 100.0)],
            vec![figure(85.0, 100.0)],
            vec![figure(88.0, 100.0)],
        ];
        assert_eq!(summarize(&runs)[0].met(), Some(true));
        assert_eq!(median(&[1.0, 3.0, 2.0, 4.0]), 2.5);
        assert!(median(&[]).is_nan());
    }
}
