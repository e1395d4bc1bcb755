//! The search: which swapped set of components gives B back A's speed. Groups first (all
//! environment variables, all Python distributions, all libraries), then the half of the group
//! that recovers, until one component remains or neither half recovers alone (the set moves
//! together: torch with the nvidia-* wheels it was built for). Generic over how a round of
//! trials is measured, so that the logic is tested without images.

use anyhow::Result;
use serde::Serialize;

use crate::compare::changes::Group;

/// One round of measurement swaps these sets of components (indices into the component list)
/// into B, each its own target.
pub type Trials = Vec<Vec<usize>>;

/// What swapping a set into B did.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum TrialOutcome {
    /// Every regressed metric is `same` as A (or better): the set explains the regression.
    Recovers,
    /// Some regressed metric is still worse than A, or cannot be told apart.
    Still,
    /// The swapped B did not run (an ImportError, a missing symbol): no verdict.
    CannotRun { reason: String },
}

/// One swap measured: the components it swapped, its outcome and what compare said.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Trial {
    /// 1-based round of measurement.
    pub step: usize,
    pub components: Vec<usize>,
    #[serde(flatten)]
    pub outcome: TrialOutcome,
    /// B-with-the-swap / A of the first regressed metric.
    pub ratio: Option<f64>,
    pub ci: Option<(f64, f64)>,
    /// The verdict of the first regressed metric against A (`same`, `regression`, ...).
    pub verdict: String,
}

/// Where the search ended.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Found {
    /// The smallest set that recovers A's speed; empty when no swap did.
    pub components: Vec<usize>,
    /// Its trial (the measurement that showed it).
    pub trial: Option<Trial>,
    /// True when neither half of `components` recovers alone: they move together.
    pub together: bool,
}

/// Runs the search. `groups[i]` is the group of component i; `measure` swaps each set of a round
/// into B and reports one trial per set, in order.
pub fn search(
    groups: &[Group],
    mut measure: impl FnMut(usize, &Trials) -> Result<Vec<Trial>>,
    trials: &mut Vec<Trial>,
) -> Result<Found> {
    let mut by_group: Vec<(Group, Vec<usize>)> = Vec::new();
    for (i, g) in groups.iter().enumerate() {
        match by_group.iter_mut().find(|(h, _)| h == g) {
            Some((_, v)) => v.push(i),
            None => by_group.push((*g, vec![i])),
        }
    }
    by_group.sort_by_key(|(g, _)| *g);
    let mut round: Trials = by_group.iter().map(|(_, v)| v.clone()).collect();
    if round.len() > 1 {
        // Everything at once too: when no group recovers alone, it says whether the whole
        // difference is in what can be swapped at all.
        round.push((0..groups.len()).collect());
    }
    if round.is_empty() {
        return Ok(Found {
            components: Vec::new(),
            trial: None,
            together: false,
        });
    }
    let mut step = 1;
    let measured = measure(step, &round)?;
    trials.extend(measured.iter().cloned());
    // The smallest set that recovers (a group before everything at once).
    let Some(mut best) = measured
        .iter()
        .filter(|t| t.outcome == TrialOutcome::Recovers)
        .min_by_key(|t| t.components.len())
        .cloned()
    else {
        return Ok(Found {
            components: Vec::new(),
            trial: None,
            together: false,
        });
    };
    while best.components.len() > 1 {
        let half = best.components.len() / 2;
        let round: Trials = vec![best.components[..half].to_vec(), best.components[half..].to_vec()];
        step += 1;
        let measured = measure(step, &round)?;
        trials.extend(measured.iter().cloned());
        match measured.iter().find(|t| t.outcome == TrialOutcome::Recovers) {
            Some(t) => best = t.clone(),
            None => {
                return Ok(Found {
                    components: best.components.clone(),
                    trial: Some(best),
                    together: true,
                })
            }
        }
    }
    Ok(Found {
        components: best.components.clone(),
        trial: Some(best),
        together: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake measurement: a set recovers when it holds every culprit; a set holding a
    /// component in `broken` cannot run.
    fn oracle<'a>(
        culprits: &'a [usize],
        broken: &'a [usize],
    ) -> impl FnMut(usize, &Trials) -> Result<Vec<Trial>> + 'a {
        move |step, round| {
            Ok(round
                .iter()
                .map(|set| {
                    let outcome = if let Some(b) = set.iter().find(|c| broken.contains(c)) {
                        TrialOutcome::CannotRun {
                            reason: format!("ImportError: component {b}"),
                        }
                    } else if culprits.iter().all(|c| set.contains(c)) {
                        TrialOutcome::Recovers
                    } else {
                        TrialOutcome::Still
                    };
                    Trial {
                        step,
                        components: set.clone(),
                        outcome,
                        ratio: None,
                        ci: None,
                        verdict: String::new(),
                    }
                })
                .collect())
        }
    }

    fn groups(env: usize, py: usize, lib: usize) -> Vec<Group> {
        let mut g = vec![Group::Environment; env];
        g.extend(vec![Group::Python; py]);
        g.extend(vec![Group::Libraries; lib]);
        g
    }

    #[test]
    fn one_culprit_among_many_is_found_by_halving() {
        let g = groups(3, 9, 4);
        let mut trials = Vec::new();
        let found = search(&g, oracle(&[7], &[]), &mut trials).unwrap();
        assert_eq!(found.components, [7]);
        assert!(!found.together);
        // 4 trials (3 groups + all), then the 9 python components halved: 9 -> 5 -> 2 -> 1,
        // three rounds of 2.
        assert_eq!(trials.len(), 4 + 2 * 3, "{trials:#?}");
        assert_eq!(trials.last().unwrap().step, 4);
    }

    #[test]
    fn a_single_environment_variable_needs_one_round() {
        let mut trials = Vec::new();
        let found = search(&groups(1, 0, 0), oracle(&[0], &[]), &mut trials).unwrap();
        assert_eq!((found.components, trials.len()), (vec![0], 1));
    }

    #[test]
    fn components_that_only_work_together_are_named_together() {
        // torch (3) and its nvidia wheel (4) only import together: each half alone cannot run.
        let g = groups(0, 6, 0);
        let mut trials = Vec::new();
        let found = search(&g, oracle(&[3, 4], &[]), &mut trials).unwrap();
        assert!(found.together, "{found:?}");
        assert!(
            found.components.contains(&3) && found.components.contains(&4),
            "{found:?}"
        );
    }

    #[test]
    fn a_swap_that_cannot_run_is_reported_and_the_search_goes_on() {
        // The library group cannot run (a missing symbol); the python group holds the culprit.
        let g = groups(0, 2, 2);
        let mut trials = Vec::new();
        let found = search(&g, oracle(&[1], &[2]), &mut trials).unwrap();
        assert_eq!(found.components, [1]);
        assert!(trials.iter().any(|t| matches!(
            &t.outcome,
            TrialOutcome::CannotRun { reason } if reason.contains("ImportError")
        )));
    }

    #[test]
    fn nothing_recovers_nothing_is_named() {
        let mut trials = Vec::new();
        let found = search(&groups(2, 2, 0), oracle(&[9], &[]), &mut trials).unwrap();
        assert!(found.components.is_empty() && found.trial.is_none());
        assert_eq!(trials.len(), 3);
    }
}
