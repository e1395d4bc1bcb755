//! Turning numbers and rows into text: number formats ([`num`]), the one aligned text table
//! ([`table`]) and Markdown/XML escaping ([`escape`]). compare, history, report and the end of
//! a run all render through here, so a number reads the same everywhere.

pub mod escape;
pub mod num;
pub mod table;

/// Output formats of `compare` and `history`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns for a terminal.
    #[default]
    Table,
    /// A GitHub-flavoured Markdown table (CI job summaries, PR comments).
    Markdown,
    /// Every field, machine-readable.
    Json,
    /// JUnit XML: one test case per metric, regressions and failures as failures.
    Junit,
}
