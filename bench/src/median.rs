//! Several runs of a scenario against one target folded into one result:
//! each summary figure is the median over the runs (with the range it
//! spanned), each step (the n-th step of every run: the same offered rate
//! in a sweep) and memory reading the median observation of it — one that
//! was really measured, not a blend.

use crate::report::{MemoryPoint, Metric, Step, TargetResult};

/// The runs' median result; `None` if there were no runs.
pub fn combine(mut runs: Vec<TargetResult>) -> Option<TargetResult> {
    if runs.len() <= 1 {
        return runs.pop();
    }
    let count = runs.len();
    let summary = runs[0]
        .summary
        .iter()
        .enumerate()
        .map(|(row, metric)| {
            let values: Vec<f64> = runs
                .iter()
                .filter_map(|run| run.summary.get(row))
                .map(|m| m.value)
                .filter(|value| value.is_finite())
                .collect();
            Metric {
                name: metric.name.clone(),
                unit: metric.unit,
                value: median(&values),
                range: range(&values),
            }
        })
        .collect();
    let problems = runs
        .iter()
        .enumerate()
        .flat_map(|(i, run)| {
            run.problems
                .iter()
                .map(move |p| format!("run {} of {count}: {p}", i + 1))
        })
        .collect();
    let (target, layout) = (runs[0].target, runs[0].layout.clone());
    // Every run takes the same steps and readings in the same order (a
    // sweep may stop sooner): the n-th of each run go together.
    let mut steps: Vec<Vec<Step>> = Vec::new();
    let mut memory: Vec<Vec<MemoryPoint>> = Vec::new();
    for run in runs {
        gather(&mut steps, run.steps);
        gather(&mut memory, run.memory);
    }
    Some(TargetResult {
        target,
        layout,
        runs: count,
        summary,
        steps: steps
            .into_iter()
            .filter_map(|same| median_by(same, |step| step.latency.p99_ms))
            .collect(),
        memory: memory
            .into_iter()
            .filter_map(|same| median_by(same, |point| point.memory.pss_kib as f64))
            .collect(),
        problems,
    })
}

/// Adds each item to the group of its position.
fn gather<T>(groups: &mut Vec<Vec<T>>, items: Vec<T>) {
    for (position, item) in items.into_iter().enumerate() {
        match groups.get_mut(position) {
            Some(group) => group.push(item),
            None => groups.push(vec![item]),
        }
    }
}

/// The middle value (the lower of the two middle ones for an even count);
/// NaN for none.
fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted
        .get(sorted.len().saturating_sub(1) / 2)
        .copied()
        .unwrap_or(f64::NAN)
}

fn range(values: &[f64]) -> Option<(f64, f64)> {
    let low = values.iter().copied().reduce(f64::min)?;
    let high = values.iter().copied().reduce(f64::max)?;
    Some((low, high))
}

/// The item whose key is the median (NaN keys sort last).
fn median_by<T>(mut items: Vec<T>, key: impl Fn(&T) -> f64) -> Option<T> {
    items.sort_by(|a, b| key(a).total_cmp(&key(b)));
    let middle = items.len().checked_sub(1)? / 2;
    Some(items.swap_remove(middle))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_skip_what_was_not_measured() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.0);
        assert!(median(&[]).is_nan());
        assert_eq!(range(&[3.0, 1.0, 2.0]), Some((1.0, 3.0)));
        assert_eq!(range(&[]), None);
    }

    #[test]
    fn items_group_by_position_even_when_alike() {
        let mut groups = Vec::new();
        gather(&mut groups, vec![20.0, 20.0]);
        gather(&mut groups, vec![20.0]);
        assert_eq!(groups, vec![vec![20.0, 20.0], vec![20.0]]);
    }

    #[test]
    fn the_median_item_is_one_that_was_observed() {
        let picked = median_by(
            vec![(1, 30.0), (2, f64::NAN), (3, 10.0), (4, 20.0)],
            |item| item.1,
        );
        assert_eq!(picked.map(|item| item.0), Some(4));
        assert_eq!(median_by(Vec::<(u8, f64)>::new(), |item| item.1), None);
    }
}
