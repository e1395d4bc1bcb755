//! The `command` workload: a user's own program, run inside the target in every round and judged
//! like the built-in workloads. Its parameters, their checks and the `{param}` expansion live
//! here; running it is `engine/command.rs`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Better;

/// The environment variable naming the file a program appends its metric lines to (JSON, one
/// `{"metric": .., "value": .., "unit": .., "better": ..}` per line), so that its stdout stays
/// the user's.
pub const METRICS_VAR: &str = "TAGBENCH_METRICS";

/// The program's wall time: from its start to the end of its last rank, ms.
pub const WALL_TIME: &str = "wall_time";

/// A metric read from the program's output with a regular expression (for programs that cannot
/// be changed): each match is one sample, the first capture group (or the whole match) its value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegexMetric {
    pub name: String,
    pub regex: String,
    #[serde(default)]
    pub unit: String,
    #[serde(default = "default_better")]
    pub better: Better,
}

fn default_better() -> Better {
    Better::Lower
}

/// A `command` case's parameters. Keys other than these are `{name}` placeholders that argv,
/// args, env values and workdir use (`batch = [8, 32]` with `"--batch", "{batch}"` in argv): each
/// is a sweep axis like any workload parameter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandParams {
    /// The program and its arguments; no shell unless `shell` is set.
    pub argv: Vec<String>,
    /// Arguments appended to argv (a list of lists in a suite is a sweep axis).
    #[serde(default)]
    pub args: Vec<String>,
    /// Runs argv (joined with spaces) through `/bin/sh -c`.
    #[serde(default)]
    pub shell: bool,
    /// Paths relative to the suite file that the program needs: mounted read-only into the
    /// container (under the same relative paths), used in place on local runs.
    #[serde(default)]
    pub files: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The directory the program starts in, relative to the suite's directory (default: it).
    #[serde(default)]
    pub workdir: Option<String>,
    /// How many processes start the program, each with RANK, WORLD_SIZE, LOCAL_RANK,
    /// MASTER_ADDR, MASTER_PORT; rank 0's metrics are the case's.
    #[serde(default = "default_ranks")]
    pub ranks: usize,
    /// Metrics read from the program's output with regular expressions.
    #[serde(default)]
    pub metric: Vec<RegexMetric>,
    /// The suite's directory as the worker sees it: set when the suite is read, rewritten by an
    /// executor that mounts the files elsewhere. Not a suite key.
    #[serde(default, skip_serializing_if = "String::is_empty", rename = "_root")]
    pub root: String,
    /// The placeholder values (every other key of the workload).
    #[serde(flatten)]
    pub vars: BTreeMap<String, serde_json::Value>,
}

fn default_ranks() -> usize {
    1
}

/// Keys of a command workload that are one value even when written as a list: a list of lists
/// is then a sweep axis.
pub const LIST_KEYS: [&str; 4] = ["argv", "args", "files", "metric"];

/// Keys that describe the program rather than a point of a sweep: left out of the case id unless
/// they are swept, so that an id reads `batch=8`, not the whole command line.
pub const SILENT_KEYS: [&str; 6] = ["argv", "shell", "files", "env", "workdir", "metric"];

impl CommandParams {
    /// Checks the parameters and expands the `{name}` placeholders in argv, args, env values and
    /// workdir. Every placeholder value must be used, so that a misspelt key is an error.
    pub fn check(&mut self) -> Result<(), String> {
        if self.argv.is_empty() || self.argv[0].trim().is_empty() {
            return Err("`argv` must name a program (a non-empty list of strings)".into());
        }
        if self.ranks == 0 || self.ranks > 1024 {
            return Err("`ranks` must be between 1 and 1024".into());
        }
        for f in &self.files {
            check_relative(f, "files")?;
        }
        if let Some(w) = &self.workdir {
            if w.trim().is_empty() {
                return Err("`workdir` must not be empty".into());
            }
        }
        for k in self.env.keys() {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                return Err(format!("`env` key `{k}` is not a variable name"));
            }
        }
        let mut names = std::collections::BTreeSet::new();
        for m in &self.metric {
            if m.name.trim().is_empty() {
                return Err("a `metric` needs a `name`".into());
            }
            if m.name == WALL_TIME {
                return Err(format!(
                    "metric `{WALL_TIME}` is measured by tagbench; name yours differently"
                ));
            }
            if !names.insert(m.name.as_str()) {
                return Err(format!("metric `{}` is given twice", m.name));
            }
            regex::Regex::new(&m.regex)
                .map_err(|e| format!("metric `{}`: bad regex `{}`: {e}", m.name, m.regex))?;
        }
        let vars: Vec<(String, String)> = self
            .vars
            .iter()
            .map(|(k, v)| {
                let text = match v {
                    serde_json::Value::String(s) => s.clone(),
                    serde_json::Value::Number(_) | serde_json::Value::Bool(_) => v.to_string(),
                    _ => return Err(format!("placeholder `{k}` must be a string, number or boolean")),
                };
                Ok((k.clone(), text))
            })
            .collect::<Result<_, String>>()?;
        let mut used = std::collections::BTreeSet::new();
        let mut expand = |s: &mut String| {
            for (k, v) in &vars {
                let p = format!("{{{k}}}");
                if s.contains(&p) {
                    *s = s.replace(&p, v);
                    used.insert(k.clone());
                }
            }
        };
        self.argv.iter_mut().for_each(&mut expand);
        self.args.iter_mut().for_each(&mut expand);
        self.env.values_mut().for_each(&mut expand);
        if let Some(w) = self.workdir.as_mut() {
            expand(w);
        }
        if let Some((k, _)) = vars.iter().find(|(k, _)| !used.contains(k)) {
            return Err(format!(
                "unknown key `{k}` (a command workload's own keys are argv, args, shell, files, env, \
                 workdir, ranks, metric; any other key is a `{{{k}}}` placeholder and must appear in \
                 argv, args, env or workdir)"
            ));
        }
        Ok(())
    }

    /// The full command line: argv then args, or `/bin/sh -c "argv args"` with `shell`.
    pub fn command_line(&self) -> Vec<String> {
        let mut words: Vec<String> = self.argv.iter().chain(&self.args).cloned().collect();
        if self.shell {
            words = vec!["/bin/sh".into(), "-c".into(), words.join(" ")];
        }
        words
    }

    /// The program's name in messages (argv[0], or the shell line).
    pub fn program(&self) -> String {
        if self.shell {
            format!("`{}`", self.argv.join(" "))
        } else {
            self.argv[0].clone()
        }
    }
}

/// A path that stays inside the suite's directory.
fn check_relative(path: &str, key: &str) -> Result<(), String> {
    let p = std::path::Path::new(path);
    if path.trim().is_empty()
        || p.is_absolute()
        || p.components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(format!(
            "`{key}` entry `{path}` must be a path relative to the suite file, inside its directory"
        ));
    }
    Ok(())
}

/// One metric line a program wrote to [`METRICS_VAR`]'s file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricLine {
    pub metric: String,
    pub value: f64,
    #[serde(default)]
    pub unit: String,
    #[serde(default = "default_better")]
    pub better: Better,
}

impl MetricLine {
    /// Parses one line of the metrics file; blank lines are `None`.
    pub fn parse(line: &str) -> Option<Result<MetricLine, String>> {
        let line = line.trim();
        if line.is_empty() {
            return None;
        }
        Some(
            serde_json::from_str::<MetricLine>(line)
                .map_err(|e| e.to_string())
                .and_then(|m| {
                    if m.metric.trim().is_empty() {
                        Err("`metric` is empty".into())
                    } else if m.metric == WALL_TIME {
                        Err(format!("`{WALL_TIME}` is measured by tagbench"))
                    } else if !m.value.is_finite() {
                        Err("`value` is not finite".into())
                    } else {
                        Ok(m)
                    }
                }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(toml_text: &str) -> Result<CommandParams, String> {
        let mut p: CommandParams = toml::from_str(toml_text).map_err(|e| e.to_string())?;
        p.check()?;
        Ok(p)
    }

    #[test]
    fn placeholders_expand_and_must_be_used() {
        let p = params(
            r#"argv = ["python3", "t.py", "--batch", "{batch}"]
               args = ["--dtype={dtype}"]
               env = { MODE = "m{batch}" }
               batch = 8
               dtype = "bf16""#,
        )
        .unwrap();
        assert_eq!(
            p.command_line(),
            ["python3", "t.py", "--batch", "8", "--dtype=bf16"]
        );
        assert_eq!(p.env["MODE"], "m8");
        let e = params(
            r#"argv = ["x"]
                          argvv = 3"#,
        )
        .unwrap_err();
        assert!(e.contains("unknown key `argvv`"), "{e}");
    }

    #[test]
    fn bad_values_name_their_key() {
        assert!(params("argv = []").unwrap_err().contains("`argv`"));
        assert!(params(
            r#"argv = ["x"]
                          ranks = 0"#
        )
        .unwrap_err()
        .contains("`ranks`"));
        let e = params(
            r#"argv = ["x"]
                          files = ["../secret"]"#,
        )
        .unwrap_err();
        assert!(e.contains("`files` entry `../secret`"), "{e}");
        let e = params(
            r#"argv = ["x"]
               [[metric]]
               name = "bw"
               regex = "(unclosed""#,
        )
        .unwrap_err();
        assert!(e.contains("metric `bw`: bad regex `(unclosed`"), "{e}");
        let e = params(
            r#"argv = ["x"]
               [[metric]]
               name = "wall_time"
               regex = "x""#,
        )
        .unwrap_err();
        assert!(e.contains("measured by tagbench"), "{e}");
    }

    #[test]
    fn shell_joins_the_line() {
        let p = params(
            r#"argv = ["echo", "a", "|", "cat"]
                          shell = true"#,
        )
        .unwrap();
        assert_eq!(p.command_line(), ["/bin/sh", "-c", "echo a | cat"]);
        assert_eq!(p.program(), "`echo a | cat`");
    }

    #[test]
    fn metric_lines() {
        let m = MetricLine::parse(r#"{"metric":"step_time","value":12.5,"unit":"ms","better":"lower"}"#)
            .unwrap()
            .unwrap();
        assert_eq!(
            (m.metric.as_str(), m.value, m.better),
            ("step_time", 12.5, Better::Lower)
        );
        let m = MetricLine::parse(r#"{"metric":"tok","value":3}"#)
            .unwrap()
            .unwrap();
        assert_eq!((m.unit.as_str(), m.better), ("", Better::Lower));
        assert!(MetricLine::parse("  ").is_none());
        assert!(MetricLine::parse("step 3").unwrap().is_err());
        assert!(MetricLine::parse(r#"{"metric":"x","value":1,"better":"up"}"#)
            .unwrap()
            .is_err());
        assert!(MetricLine::parse(r#"{"metric":"wall_time","value":1}"#)
            .unwrap()
            .is_err());
    }

    #[test]
    fn job_json_round_trips() {
        let p = params(
            r#"argv = ["x", "{n}"]
                          n = 3"#,
        )
        .unwrap();
        let json = serde_json::to_string(&p).unwrap();
        let back: CommandParams = serde_json::from_str(&json).unwrap();
        assert_eq!(back, p);
    }
}
