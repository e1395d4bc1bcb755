//! What a command concluded, and the one place where that becomes the process exit code. Every
//! command returns an [`Outcome`]; `main` exits with [`Outcome::code`]; reports print the same
//! value through [`Outcome::code`] and [`Outcome::meaning`].
//!
//! | code | outcome |
//! | --- | --- |
//! | 0 | [`Outcome::Complete`]: everything asked for was measured (and compared) and nothing got worse |
//! | 1 | [`Outcome::Regression`], [`Outcome::Failed`], [`Outcome::Missing`]: the gate closes on the candidate |
//! | 2 | [`Outcome::Incomplete`], [`Outcome::Error`]: the input cannot answer the question |
//! | 130 | [`Outcome::Interrupted`]: interrupted by the user (SIGINT, SIGTERM) |

/// What a command concluded. Declared from the best to the worst, so that `max` of two
/// outcomes is the one that decides the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Every case measured (and every compared metric judged) with no regression and no failed
    /// case. Metrics too noisy to judge do not close the gate: they are shown as `noisy`.
    Complete,
    /// The candidate lacks a (workload, case, metric, gpu) that the baseline measured (skipped,
    /// not run, or lost when the run was cut short). `--allow-missing` accepts it.
    Missing,
    /// A case failed: in the candidate of a comparison, or in a run without comparison.
    Failed,
    /// A compared metric got worse beyond the noise threshold (or `history`'s newest segment).
    Regression,
    /// Bad input, nothing to compare (nothing matched; every case of a run failed), or any
    /// other error.
    Error,
    /// A compared run is interrupted or partial (run.json `state` is not `complete`), or a run
    /// measured nothing: resume it first. `--allow-partial` compares what it has. Declared after
    /// `Error` (the same code) so that a partial run, the cause, is what the verdict names.
    Incomplete,
    /// Interrupted by the user (SIGINT or SIGTERM); the run directory stays resumable.
    Interrupted,
}

impl Outcome {
    /// Every outcome, best first.
    pub const ALL: [Outcome; 7] = [
        Outcome::Complete,
        Outcome::Missing,
        Outcome::Failed,
        Outcome::Regression,
        Outcome::Error,
        Outcome::Incomplete,
        Outcome::Interrupted,
    ];

    /// The process exit code: the one mapping from outcomes to codes.
    pub fn code(self) -> i32 {
        match self {
            Outcome::Complete => 0,
            Outcome::Missing | Outcome::Failed | Outcome::Regression => 1,
            Outcome::Error | Outcome::Incomplete => 2,
            Outcome::Interrupted => 130,
        }
    }

    /// What the exit code means, in a few words (reports print it beside the code).
    pub fn meaning(self) -> &'static str {
        match self {
            Outcome::Complete => "complete, no regression",
            Outcome::Missing => "the candidate lacks metrics the baseline measured",
            Outcome::Failed => "a case failed",
            Outcome::Regression => "regression found",
            Outcome::Incomplete => "incomplete: an interrupted or partial run, or nothing measured",
            Outcome::Error => "error: nothing to judge",
            Outcome::Interrupted => "interrupted by the user",
        }
    }

    /// The worse of two outcomes.
    pub fn worst(self, other: Outcome) -> Outcome {
        self.max(other)
    }
}

/// The exit code of a command that ended in an error: bad input, a file that cannot be read,
/// nothing matched, or any other failure.
pub fn exit_code_of(_err: &anyhow::Error) -> i32 {
    Outcome::Error.code()
}

/// The exit codes and what they mean, as `--help` and the README print them.
pub const EXIT_CODES_HELP: &str = "Exit codes: 0 = complete, no regression; \
1 = a regression, a failed case, or a metric the baseline measured that the candidate lacks; \
2 = an error, nothing to judge, or an interrupted or partial run (resume it first); \
130 = interrupted by the user (Ctrl-C, SIGTERM).";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_code_per_outcome_and_the_worst_wins() {
        let codes: Vec<i32> = Outcome::ALL.iter().map(|o| o.code()).collect();
        assert_eq!(codes, [0, 1, 1, 1, 2, 2, 130]);
        // Codes never decrease along the declared order, so `worst` never lowers a code.
        assert!(codes.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(
            Outcome::Regression.worst(Outcome::Incomplete),
            Outcome::Incomplete
        );
        assert_eq!(Outcome::Complete.worst(Outcome::Missing), Outcome::Missing);
        assert_eq!(Outcome::Interrupted.worst(Outcome::Error), Outcome::Interrupted);
        assert_eq!(Outcome::Error.worst(Outcome::Incomplete), Outcome::Incomplete);
    }
}
