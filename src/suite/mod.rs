//! Suites: TOML files of defaults, targets and workloads with sweep axes, expanded into cases.
//!
//! Parsing keeps every value's position, so an error names the file, line and key. The file is
//! checked on its own first; `--set` overrides are applied and checked after, and their errors
//! name the override.

pub mod slurm;
pub mod target;

use std::borrow::Cow;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use toml::de::{DeArray, DeTable, DeValue, ValueDeserializer};
use toml::Spanned;

use crate::case::{Case, MeasureSettings, WorkloadKind};
use crate::error::{line_of, SuiteError};
pub use slurm::{ContainerPlatform, ExecutorKind, SlurmSettings};
pub use target::{ByteSize, GpuNamed, GpuSelection, PullPolicy, TargetSpec};

/// The suite compiled into the binary and used when no suite file is given: `suites/smoke.toml`.
pub const EMBEDDED_SMOKE: &str = include_str!("../../suites/smoke.toml");

/// A parsed, validated, expanded suite.
#[derive(Debug, Clone)]
pub struct Suite {
    pub name: String,
    pub description: String,
    pub path: PathBuf,
    pub defaults: MeasureSettings,
    pub targets: Vec<TargetSpec>,
    pub workloads: Vec<Workload>,
    /// The `[slurm]` table: allocation settings for targets run with `--executor slurm`.
    pub slurm: SlurmSettings,
    /// `max_run_time` of `[defaults]`: past it, no more adaptive rounds are added (the
    /// `min_rounds` of every case still run).
    pub max_run_time_s: Option<f64>,
    /// `pairing` of `[defaults]`: how the targets of a round take turns.
    pub pairing: Pairing,
}

/// How two or more targets of one round are measured side by side (`pairing` in
/// `[defaults]`; docs/design.md, "Paired batches").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Pairing {
    /// One warm worker per target; the host alternates short sample batches of each case
    /// between them (A B B A …), and `compare` pairs batch i of each target.
    #[default]
    Batches,
    /// One case at a time: A's case, then B's, then the next case (for cases two warm workers
    /// cannot hold at once; also chosen per case by the memory plan).
    Case,
    /// Each target runs all its cases of the round in one go, then the next target (tagbench
    /// before 0.x; for comparison with older runs).
    Round,
}

impl Pairing {
    pub fn as_str(self) -> &'static str {
        match self {
            Pairing::Batches => "batches",
            Pairing::Case => "case",
            Pairing::Round => "round",
        }
    }

    fn parse(s: &str) -> Result<Pairing, String> {
        match s {
            "batches" => Ok(Pairing::Batches),
            "case" => Ok(Pairing::Case),
            "round" => Ok(Pairing::Round),
            other => Err(format!(
                "key `pairing`: `{other}` is not one of \"batches\", \"case\", \"round\""
            )),
        }
    }
}

/// One `[[workload]]` entry and the cases its sweep axes expand into.
#[derive(Debug, Clone)]
pub struct Workload {
    pub name: String,
    pub kind: WorkloadKind,
    pub cases: Vec<Case>,
}

impl Suite {
    pub fn cases(&self) -> impl Iterator<Item = &Case> {
        self.workloads.iter().flat_map(|w| w.cases.iter())
    }

    /// Reads a suite file.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Suite, SuiteError> {
        let text = std::fs::read_to_string(path).map_err(|e| SuiteError {
            path: path.to_owned(),
            line: 0,
            message: format!("cannot read the file: {e}"),
        })?;
        Suite::parse(&text, path, overrides)
    }

    /// Parses suite text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path, overrides: &[String]) -> Result<Suite, SuiteError> {
        let doc = DeTable::parse(text).map_err(|e| toml_error(path, text, &e, None))?;
        // The file alone first, so that its errors carry its own line numbers.
        let plain = compile(doc.get_ref(), text, path, None)?;
        if overrides.is_empty() {
            return Ok(plain);
        }
        let mut doc = doc.into_inner();
        for ov in overrides {
            apply_override(&mut doc, ov).map_err(|message| SuiteError {
                path: path.to_owned(),
                line: 0,
                message: format!("--set {ov}: {message}"),
            })?;
        }
        compile(&doc, text, path, Some(overrides))
    }
}

/// Top-level keys and what they hold.
const TOP_KEYS: [&str; 6] = ["name", "description", "defaults", "target", "workload", "slurm"];
/// Measurement keys that a workload may override.
const MEASURE_KEYS: [&str; 10] = [
    "warmup_s",
    "min_samples",
    "max_samples",
    "min_time_s",
    "max_time_s",
    "target_rel_ci",
    "timeout_s",
    "rounds",
    "min_rounds",
    "max_rounds",
];

fn compile(
    doc: &DeTable<'_>,
    text: &str,
    path: &Path,
    overrides: Option<&[String]>,
) -> Result<Suite, SuiteError> {
    let at = |span: Range<usize>, message: String| SuiteError {
        path: path.to_owned(),
        line: if overrides.is_some() && span.end > text.len() {
            0
        } else {
            line_of(text, span.start)
        },
        message: match overrides {
            Some(ov) => format!("{message} (with --set {})", ov.join(" --set ")),
            None => message,
        },
    };
    let terr = |e: toml::de::Error, key: Option<&str>| {
        let span = e.span().unwrap_or(0..0);
        let msg = e.message().trim().to_string();
        at(
            span,
            match key {
                Some(k) => format!("key `{k}`: {msg}"),
                None => msg,
            },
        )
    };

    for (k, v) in doc.iter() {
        if !TOP_KEYS.contains(&k.get_ref().as_ref()) {
            return Err(at(
                k.span(),
                format!(
                    "unknown key `{}` (expected one of {})",
                    k.get_ref(),
                    TOP_KEYS.join(", ")
                ),
            ));
        }
        let _ = v;
    }

    let name = match get(doc, "name") {
        Some(v) => String::deserialize(de(v)).map_err(|e| terr(e, Some("name")))?,
        None => path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
    };
    let description = match get(doc, "description") {
        Some(v) => String::deserialize(de(v)).map_err(|e| terr(e, Some("description")))?,
        None => String::new(),
    };
    let (defaults, max_run_time_s, pairing) = match get(doc, "defaults") {
        Some(v) => {
            let mut table = match v.get_ref() {
                DeValue::Table(t) => t.clone(),
                _ => return Err(at(v.span(), "`defaults` must be a table".into())),
            };
            let budget = match table.remove("max_run_time") {
                Some(b) => {
                    Some(parse_duration_s(&b).map_err(|m| at(b.span(), format!("key `max_run_time`: {m}")))?)
                }
                None => None,
            };
            let pairing = match table.remove("pairing") {
                Some(p) => match p.get_ref() {
                    DeValue::String(text) => Pairing::parse(text).map_err(|m| at(p.span(), m))?,
                    _ => return Err(at(p.span(), "key `pairing` must be a string".into())),
                },
                None => Pairing::default(),
            };
            let ov = MeasureOverrides::deserialize(de(&Spanned::new(v.span(), DeValue::Table(table))))
                .map_err(|e| terr(e, Some("defaults")))?;
            let mut settings = MeasureSettings::default();
            ov.apply(&mut settings)
                .map_err(|m| at(v.span(), format!("[defaults]: {m}")))?;
            (settings, budget, pairing)
        }
        None => (MeasureSettings::default(), None, Pairing::default()),
    };
    check_measure(&defaults).map_err(|m| {
        let span = get(doc, "defaults").map_or(0..0, |v| key_span(v, &m));
        at(span, m)
    })?;

    let slurm = match get(doc, "slurm") {
        Some(v) => {
            let s = SlurmSettings::deserialize(de(v)).map_err(|e| terr(e, Some("slurm")))?;
            s.check()
                .map_err(|m| at(key_span(v, &m), format!("[slurm]: {m}")))?;
            s
        }
        None => SlurmSettings::default(),
    };

    let mut targets = Vec::new();
    if let Some(v) = get(doc, "target") {
        for t in array_of_tables(v, "target").map_err(|m| at(v.span(), m))? {
            let spec = TargetSpec::deserialize(de(t)).map_err(|e| terr(e, None))?;
            spec.check()
                .map_err(|m| at(key_span(t, &m), format!("target: {m}")))?;
            targets.push(spec);
        }
    }

    let mut workloads: Vec<Workload> = Vec::new();
    if let Some(v) = get(doc, "workload") {
        for w in array_of_tables(v, "workload").map_err(|m| at(v.span(), m))? {
            let table = w.get_ref().as_table().expect("checked to be a table");
            let workload = compile_workload(table, w.span(), &defaults, &suite_dir(path))
                .map_err(|(span, m)| at(span, m))?;
            if let Some(prev) = workloads.iter().find(|p| p.name == workload.name) {
                return Err(at(
                    w.span(),
                    format!("workload name `{}` is used twice (give one a `name`)", prev.name),
                ));
            }
            workloads.push(workload);
        }
    }
    if workloads.is_empty() {
        return Err(at(0..0, "the suite has no [[workload]]".into()));
    }
    Ok(Suite {
        name,
        description,
        path: path.to_owned(),
        defaults,
        max_run_time_s,
        pairing,
        targets,
        workloads,
        slurm,
    })
}

/// `max_run_time`: seconds as a number, or a string with a unit (`"90s"`, `"30m"`, `"2h"`).
fn parse_duration_s(v: &Spanned<DeValue<'_>>) -> Result<f64, String> {
    let secs = match v.get_ref() {
        DeValue::Integer(i) => i.as_str().replace('_', "").parse::<f64>().ok(),
        DeValue::Float(f) => f.as_str().parse::<f64>().ok(),
        DeValue::String(s) => {
            let s = s.trim();
            let (num, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len()));
            let scale = match unit.trim() {
                "" | "s" => Some(1.0),
                "m" | "min" => Some(60.0),
                "h" => Some(3600.0),
                _ => None,
            };
            num.trim().parse::<f64>().ok().zip(scale).map(|(n, k)| n * k)
        }
        _ => None,
    };
    match secs {
        Some(s) if s > 0.0 && s.is_finite() => Ok(s),
        _ => {
            Err("expected a positive number of seconds, or a string such as \"90s\", \"30m\", \"2h\"".into())
        }
    }
}

type Located = (Range<usize>, String);

/// A parameter key and the values it sweeps over (one for a scalar).
type Axis<'i> = (Spanned<Cow<'i, str>>, Vec<Spanned<DeValue<'i>>>);

/// The directory a suite's relative paths (a command's `files`) are read from, absolute.
fn suite_dir(path: &Path) -> PathBuf {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    dir.canonicalize()
        .or_else(|_| std::path::absolute(dir))
        .unwrap_or_else(|_| dir.to_owned())
}

fn compile_workload(
    table: &DeTable<'_>,
    span: Range<usize>,
    defaults: &MeasureSettings,
    dir: &Path,
) -> Result<Workload, Located> {
    let kind_v = get(table, "kind").ok_or_else(|| (span.clone(), "workload has no `kind`".to_string()))?;
    let kind_s = kind_v
        .get_ref()
        .as_str()
        .ok_or_else(|| (kind_v.span(), "key `kind`: expected a string".to_string()))?;
    let kind = WorkloadKind::parse(kind_s).ok_or_else(|| {
        let known: Vec<_> = WorkloadKind::ALL.iter().map(|k| k.as_str()).collect();
        (
            kind_v.span(),
            format!(
                "unknown workload kind `{kind_s}` (expected one of {})",
                known.join(", ")
            ),
        )
    })?;
    let name = match get(table, "name") {
        Some(v) => v
            .get_ref()
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| (v.span(), "key `name`: expected a string".to_string()))?,
        None => kind.as_str().to_string(),
    };

    // Split the table: measurement overrides, and the parameters (each a sweep axis).
    let mut measure = DeTable::new();
    let mut axes: Vec<Axis<'_>> = Vec::new();
    for (k, v) in table.iter() {
        let key = k.get_ref().as_ref();
        if key == "kind" || key == "name" {
            continue;
        }
        if MEASURE_KEYS.contains(&key) {
            measure.insert(k.clone(), v.clone());
            continue;
        }
        let list_valued = crate::workload::list_valued_keys(kind).contains(&key);
        let values = match v.get_ref() {
            // A list-valued key's list is one value; a list of lists sweeps over them.
            DeValue::Array(items)
                if !list_valued || (!items.is_empty() && items.iter().all(|i| i.get_ref().is_array())) =>
            {
                if items.is_empty() {
                    return Err((
                        v.span(),
                        format!("key `{key}`: a sweep axis needs at least one value"),
                    ));
                }
                items.iter().cloned().collect()
            }
            _ => vec![v.clone()],
        };
        axes.push((k.clone(), values));
    }
    // Axes the workload sweeps unless the suite names them (every start-up metric).
    for (key, values) in crate::workload::default_axes(kind) {
        if axes.iter().any(|(k, _)| k.get_ref() == key) {
            continue;
        }
        axes.push((
            Spanned::new(span.clone(), Cow::Borrowed(key)),
            values
                .into_iter()
                .map(|v| Spanned::new(span.clone(), DeValue::String(Cow::Borrowed(v))))
                .collect(),
        ));
    }
    let mut settings = defaults.clone();
    if !measure.is_empty() {
        let ov = MeasureOverrides::deserialize(de(&Spanned::new(span.clone(), DeValue::Table(measure))))
            .map_err(|e| (e.span().unwrap_or(span.clone()), e.message().trim().to_string()))?;
        let whole = Spanned::new(span.clone(), DeValue::Table(table.clone()));
        ov.apply(&mut settings)
            .map_err(|m| (key_span(&whole, &m), format!("workload `{name}`: {m}")))?;
        check_measure(&settings).map_err(|m| (key_span(&whole, &m), format!("workload `{name}`: {m}")))?;
    }

    let total: usize = axes.iter().map(|(_, v)| v.len()).product();
    if total > 100_000 {
        return Err((
            span,
            format!("the sweep expands into {total} cases (more than 100000)"),
        ));
    }
    let mut cases = Vec::with_capacity(total);
    for combo in cartesian(&axes) {
        let mut t = DeTable::new();
        let mut id_parts = Vec::new();
        for (k, v) in &combo {
            let swept = axes
                .iter()
                .any(|(a, vs)| a.get_ref() == k.get_ref() && vs.len() > 1);
            if swept || !crate::workload::id_silent_keys(kind).contains(&k.get_ref().as_ref()) {
                id_parts.push(format!("{}={}", k.get_ref(), id_value(v.get_ref())));
            }
            t.insert((*k).clone(), (*v).clone());
        }
        let params = crate::workload::Params::parse(kind, de(&Spanned::new(span.clone(), DeValue::Table(t))))
            .map_err(|e: toml::de::Error| {
                let msg = e.message().trim().to_string();
                let sp = e.span().unwrap_or(span.clone());
                // An error on the whole table (a missing field, a cross-field check) is reported at
                // the workload; say which one.
                if sp == span {
                    let whole = Spanned::new(span.clone(), DeValue::Table(table.clone()));
                    (key_span(&whole, &msg), format!("workload `{name}`: {msg}"))
                } else {
                    (sp, msg)
                }
            })?;
        let params = match params {
            crate::workload::Params::Command(mut p) => {
                p.root = dir.display().to_string();
                for f in &p.files {
                    if !dir.join(f).exists() {
                        let at = get(table, "files").map_or(span.clone(), |v| v.span());
                        return Err((
                            at,
                            format!("key `files`: `{f}` does not exist (looked in {})", dir.display()),
                        ));
                    }
                }
                crate::workload::Params::Command(p)
            }
            other => other,
        };
        let id = if id_parts.is_empty() {
            "default".to_string()
        } else {
            id_parts.join(",")
        };
        cases.push(Case {
            workload: name.clone(),
            kind,
            id,
            params,
            measure: settings.clone(),
        });
    }
    Ok(Workload { name, kind, cases })
}

/// Optional per-workload measurement settings.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MeasureOverrides {
    warmup_s: Option<f64>,
    min_samples: Option<usize>,
    max_samples: Option<usize>,
    min_time_s: Option<f64>,
    max_time_s: Option<f64>,
    target_rel_ci: Option<f64>,
    timeout_s: Option<f64>,
    rounds: Option<usize>,
    min_rounds: Option<usize>,
    max_rounds: Option<usize>,
}

impl MeasureOverrides {
    /// Sets what was given; `rounds = N` is a fixed design (N rounds, never more), while
    /// `min_rounds`/`max_rounds` set the adaptive one. Giving both kinds is an error.
    fn apply(self, s: &mut MeasureSettings) -> Result<(), String> {
        if self.rounds.is_some() && (self.min_rounds.is_some() || self.max_rounds.is_some()) {
            return Err(
                "give either `rounds` (a fixed number) or `min_rounds`/`max_rounds` (adaptive), not both"
                    .into(),
            );
        }
        if let Some(v) = self.warmup_s {
            s.warmup_s = v;
        }
        if let Some(v) = self.min_samples {
            s.min_samples = v;
        }
        if let Some(v) = self.max_samples {
            s.max_samples = v;
        }
        if let Some(v) = self.min_time_s {
            s.min_time_s = v;
        }
        if let Some(v) = self.max_time_s {
            s.max_time_s = v;
        }
        if let Some(v) = self.target_rel_ci {
            s.target_rel_ci = v;
        }
        if let Some(v) = self.timeout_s {
            s.timeout_s = v;
        }
        if let Some(v) = self.rounds {
            s.rounds = v;
            s.max_rounds = v;
        }
        if let Some(v) = self.min_rounds {
            s.rounds = v;
            // A minimum above the inherited maximum raises it (a maximum given here is checked).
            if self.max_rounds.is_none() {
                s.max_rounds = s.max_rounds.max(v);
            }
        }
        if let Some(v) = self.max_rounds {
            s.max_rounds = v;
        }
        Ok(())
    }
}

fn check_measure(s: &MeasureSettings) -> Result<(), String> {
    if s.min_samples == 0 || s.max_samples < s.min_samples {
        return Err(format!(
            "need 1 <= min_samples ({}) <= max_samples ({})",
            s.min_samples, s.max_samples
        ));
    }
    for (k, v) in [
        ("warmup_s", s.warmup_s),
        ("min_time_s", s.min_time_s),
        ("max_time_s", s.max_time_s),
    ] {
        if !(v >= 0.0 && v.is_finite()) {
            return Err(format!("`{k}` must be a non-negative number of seconds"));
        }
    }
    if s.rounds == 0 || s.rounds > 100 {
        return Err("`rounds` (`min_rounds`) must be between 1 and 100".into());
    }
    if s.max_rounds < s.rounds || s.max_rounds > 100 {
        return Err(format!(
            "`max_rounds` ({}) must be between `min_rounds` ({}) and 100",
            s.max_rounds, s.rounds
        ));
    }
    if s.timeout_s.is_nan() || s.timeout_s <= 0.0 {
        return Err("`timeout_s` must be positive".into());
    }
    if !(s.target_rel_ci > 0.0 && s.target_rel_ci < 1.0) {
        return Err("`target_rel_ci` must be between 0 and 1 (0.01 = 1%)".into());
    }
    Ok(())
}

fn get<'a, 'i>(t: &'a DeTable<'i>, key: &str) -> Option<&'a Spanned<DeValue<'i>>> {
    t.get(key)
}

/// Where an error about a table is shown: at the key the message names (a word in backticks
/// first, else a bare word) when the table has it, else at the table itself (its header).
fn key_span(v: &Spanned<DeValue<'_>>, message: &str) -> Range<usize> {
    let Some(table) = v.get_ref().as_table() else {
        return v.span();
    };
    let find = |word: &str| {
        table
            .iter()
            .find(|(k, _)| k.get_ref().as_ref() == word)
            .map(|(k, _)| k.span())
    };
    let quoted = message.split('`').skip(1).step_by(2);
    let bare = message.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'));
    quoted
        .chain(bare)
        .filter(|w| !w.is_empty())
        .find_map(find)
        .unwrap_or_else(|| v.span())
}

fn de<'i>(v: &Spanned<DeValue<'i>>) -> ValueDeserializer<'i> {
    ValueDeserializer::from(v.clone())
}

fn array_of_tables<'a, 'i>(v: &'a Spanned<DeValue<'i>>, key: &str) -> Result<&'a DeArray<'i>, String> {
    match v.get_ref() {
        DeValue::Array(a) if a.iter().all(|e| e.get_ref().is_table()) => Ok(a),
        _ => Err(format!("`{key}` must be written as [[{key}]] tables")),
    }
}

/// Every combination of the axes' values, first axis slowest.
fn cartesian<K, V>(axes: &[(K, Vec<V>)]) -> Vec<Vec<(&K, &V)>> {
    let mut out: Vec<Vec<(&K, &V)>> = vec![Vec::new()];
    for (k, values) in axes {
        let mut next = Vec::with_capacity(out.len() * values.len());
        for prefix in &out {
            for v in values {
                let mut c = prefix.clone();
                c.push((k, v));
                next.push(c);
            }
        }
        out = next;
    }
    out
}

/// How a parameter value is written in a case id.
fn id_value(v: &DeValue<'_>) -> String {
    match v {
        DeValue::String(s) => s.to_string(),
        DeValue::Integer(i) => i.as_str().replace('_', ""),
        DeValue::Float(f) => f.as_str().to_string(),
        DeValue::Boolean(b) => b.to_string(),
        DeValue::Datetime(d) => d.to_string(),
        DeValue::Array(a) => format!(
            "[{}]",
            a.iter()
                .map(|e| id_value(e.get_ref()))
                .collect::<Vec<_>>()
                .join(";")
        ),
        DeValue::Table(_) => "{..}".to_string(),
    }
}

/// Applies `--set path=value`: `defaults.KEY`, a bare measurement key (into defaults), or
/// `WORKLOAD.KEY` where WORKLOAD is a workload's name (or kind).
fn apply_override<'i>(doc: &mut DeTable<'i>, ov: &'i str) -> Result<(), String> {
    let (path, value) = ov.split_once('=').ok_or("expected KEY=VALUE")?;
    let (path, raw) = (path.trim(), value.trim());
    // A bare word that is not TOML (`--set gemm.dtype=bf16`) is taken as a string.
    let value = match DeValue::parse(raw) {
        Ok(v) => v,
        Err(_) if !raw.is_empty() && !raw.starts_with(['[', '{', '"', '\'']) => {
            Spanned::new(usize::MAX..usize::MAX, DeValue::String(Cow::Borrowed(raw)))
        }
        Err(e) => return Err(format!("bad value `{raw}`: {}", e.message().trim())),
    };
    // Spans of override values do not point into the file: move them past its end.
    let value = Spanned::new(usize::MAX..usize::MAX, value.into_inner());
    let (scope, key) = match path.split_once('.') {
        Some((s, k)) => (s, k),
        None if MEASURE_KEYS.contains(&path) => ("defaults", path),
        None => {
            return Err(format!(
                "`{path}` is not a measurement key; write WORKLOAD.KEY or defaults.KEY"
            ))
        }
    };
    let key = Spanned::new(usize::MAX..usize::MAX, Cow::Owned(key.to_string()));
    if scope == "defaults" {
        let entry = doc
            .entry(Spanned::new(usize::MAX..usize::MAX, Cow::Borrowed("defaults")))
            .or_insert_with(|| Spanned::new(usize::MAX..usize::MAX, DeValue::Table(DeTable::new())));
        match entry.get_mut() {
            DeValue::Table(t) => {
                t.insert(key, value);
                return Ok(());
            }
            _ => return Err("`defaults` is not a table".into()),
        }
    }
    let Some(DeValue::Array(workloads)) = doc.get_mut("workload").map(|v| v.get_mut()) else {
        return Err("the suite has no workloads".into());
    };
    let mut hit = false;
    for w in workloads.iter_mut() {
        if let DeValue::Table(t) = w.get_mut() {
            let name = t
                .get("name")
                .or_else(|| t.get("kind"))
                .and_then(|v| v.get_ref().as_str().map(str::to_owned));
            if name.as_deref() == Some(scope) {
                t.insert(key.clone(), value.clone());
                hit = true;
            }
        }
    }
    if hit {
        Ok(())
    } else {
        Err(format!("no workload named `{scope}`"))
    }
}

fn toml_error(path: &Path, text: &str, e: &toml::de::Error, key: Option<&str>) -> SuiteError {
    SuiteError {
        path: path.to_owned(),
        line: e.span().map_or(0, |s| line_of(text, s.start)),
        message: match key {
            Some(k) => format!("key `{k}`: {}", e.message().trim()),
            None => e.message().trim().to_string(),
        },
    }
}

#[cfg(test)]
mod tests;
