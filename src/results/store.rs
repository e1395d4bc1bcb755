//! Reading and writing a run directory. Rows are appended and flushed as they arrive; a torn
//! last line (the process was killed mid-write) is cut off on read and before appending.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::meta::{STATE_INTERRUPTED, STATE_RUNNING};
use super::{ResultRow, RunMeta, SampleRow, Status};

/// Run directories whose run.json an interrupt has written last (see
/// [`RunDir::mark_interrupted`]); also what makes run.json writes of one process one at a time.
static SEALED: std::sync::Mutex<BTreeSet<PathBuf>> = std::sync::Mutex::new(BTreeSet::new());

/// The files of one run.
#[derive(Debug, Clone)]
pub struct RunDir {
    pub root: PathBuf,
}

impl RunDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        RunDir { root: root.into() }
    }

    /// Accepts a run directory or a `results.csv` inside one.
    pub fn from_arg(path: &Path) -> Self {
        if path.is_file() {
            RunDir::new(path.parent().unwrap_or(Path::new(".")))
        } else {
            RunDir::new(path)
        }
    }

    pub fn results_csv(&self) -> PathBuf {
        self.root.join("results.csv")
    }
    pub fn samples_csv(&self) -> PathBuf {
        self.root.join("samples.csv")
    }
    pub fn run_json(&self) -> PathBuf {
        self.root.join("run.json")
    }
    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }

    pub fn read_meta(&self) -> Result<RunMeta> {
        let path = self.run_json();
        let text =
            std::fs::read_to_string(&path).with_context(|| format!("failed to read {}", path.display()))?;
        if text.trim().is_empty() {
            anyhow::bail!(
                "failed to read {}: the file is empty (a run writes it when it starts: the run directory is damaged)",
                path.display()
            );
        }
        serde_json::from_str(&text).with_context(|| format!("failed to parse {}", path.display()))
    }

    /// Writes run.json atomically (write to a temporary file, then rename). After
    /// [`RunDir::mark_interrupted`] it writes nothing: the state an interrupt recorded stays.
    pub fn write_meta(&self, meta: &RunMeta) -> Result<()> {
        let sealed = SEALED.lock().unwrap_or_else(|e| e.into_inner());
        if sealed.contains(&self.root) {
            return Ok(());
        }
        self.write_meta_unsealed(meta)
    }

    /// Records in run.json that the run was interrupted (state `interrupted`, its end time) if it
    /// is `running`, and seals run.json: this process writes it no more (the run's own thread
    /// may still be going while the process exits). Returns whether the state changed.
    pub fn mark_interrupted(&self) -> Result<bool> {
        let mut sealed = SEALED.lock().unwrap_or_else(|e| e.into_inner());
        if sealed.contains(&self.root) {
            return Ok(false);
        }
        let mut meta = self.read_meta()?;
        sealed.insert(self.root.clone());
        if meta.state != STATE_RUNNING {
            return Ok(false);
        }
        meta.state = STATE_INTERRUPTED.into();
        meta.finished_at = Some(chrono::Local::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
        self.write_meta_unsealed(&meta)?;
        Ok(true)
    }

    fn write_meta_unsealed(&self, meta: &RunMeta) -> Result<()> {
        let path = self.run_json();
        let tmp = self.root.join(".run.json.tmp");
        let text = serde_json::to_string_pretty(meta)?;
        std::fs::write(&tmp, text).with_context(|| format!("failed to write {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("failed to write {}", path.display()))?;
        Ok(())
    }
}

/// Appends rows to results.csv and samples.csv, flushing after every batch.
pub struct RunWriter {
    results: CsvAppender,
    samples: CsvAppender,
}

impl RunWriter {
    /// Opens (creating or continuing) the CSV files of a run directory.
    pub fn open(dir: &RunDir) -> Result<Self> {
        std::fs::create_dir_all(dir.logs())
            .with_context(|| format!("failed to create {}", dir.logs().display()))?;
        Ok(RunWriter {
            results: CsvAppender::open::<ResultRow>(&dir.results_csv())?,
            samples: CsvAppender::open::<SampleRow>(&dir.samples_csv())?,
        })
    }

    /// Writes the rows of one finished case: samples first, so that a result row never exists
    /// without its samples.
    pub fn write_case(&mut self, rows: &[ResultRow], samples: &[SampleRow]) -> Result<()> {
        self.samples.append(samples)?;
        self.results.append(rows)
    }
}

struct CsvAppender {
    path: PathBuf,
    file: File,
}

impl CsvAppender {
    fn open<T: Serialize + Default + HeaderOf>(path: &Path) -> Result<Self> {
        let exists = path.exists() && std::fs::metadata(path)?.len() > 0;
        if exists {
            cut_torn_tail(path)?;
            upgrade_header(path, &T::header())?;
        }
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("failed to open {}", path.display()))?;
        if !exists {
            writeln!(file, "{}", T::header().join(","))?;
            file.flush()?;
        }
        Ok(CsvAppender {
            path: path.to_owned(),
            file,
        })
    }

    fn append<T: Serialize>(&mut self, rows: &[T]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        // Serialise the whole batch first and write it with one call, so that a kill leaves at
        // most one torn line.
        let mut w = csv::WriterBuilder::new()
            .has_headers(false)
            .from_writer(Vec::new());
        for r in rows {
            w.serialize(r)?;
        }
        let buf = w.into_inner().map_err(|e| anyhow::anyhow!("{e}"))?;
        self.file
            .write_all(&buf)
            .and_then(|_| self.file.flush())
            .and_then(|_| self.file.sync_data())
            .with_context(|| format!("failed to write {}", self.path.display()))
    }
}

/// Column names of a CSV row type.
pub trait HeaderOf {
    fn header() -> Vec<String>;
}

impl<T: Serialize + Default> HeaderOf for T {
    fn header() -> Vec<String> {
        // Serialising a default row with headers gives the column names serde derives.
        let mut w = csv::WriterBuilder::new()
            .has_headers(true)
            .from_writer(Vec::new());
        w.serialize(T::default()).expect("serialising a default row");
        let buf = w.into_inner().expect("in-memory writer");
        let text = String::from_utf8(buf).expect("utf-8 header");
        text.lines()
            .next()
            .unwrap_or_default()
            .split(',')
            .map(str::to_owned)
            .collect()
    }
}

/// Brings a CSV written by an older tagbench (fewer columns: the schema only appends them) to
/// the current header, empty cells in the new columns, so that rows appended by `--resume` line
/// up with it. Rewritten through a temporary file and a rename: a kill leaves either version.
fn upgrade_header(path: &Path, header: &[String]) -> Result<()> {
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_path(path)
        .with_context(|| format!("failed to read {}", path.display()))?;
    let old: Vec<String> = rdr.headers()?.iter().map(str::to_owned).collect();
    if old == header {
        return Ok(());
    }
    if old.len() > header.len() || header[..old.len()] != old[..] {
        anyhow::bail!(
            "{} has columns that this tagbench does not write (`{}`): written by a newer version?",
            path.display(),
            old.join(",")
        );
    }
    let tmp = path.with_extension("csv.upgrade");
    let mut w = csv::Writer::from_path(&tmp).with_context(|| format!("failed to write {}", tmp.display()))?;
    w.write_record(header)?;
    for (i, rec) in rdr.records().enumerate() {
        let rec = rec.with_context(|| format!("failed to parse {}: line {}", path.display(), i + 2))?;
        let mut cells: Vec<&str> = rec.iter().collect();
        cells.resize(header.len(), "");
        w.write_record(&cells)?;
    }
    w.flush()?;
    drop(w);
    File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("failed to write {}", path.display()))
}

/// Truncates a file after its last newline (drops a line torn by a kill).
fn cut_torn_tail(path: &Path) -> Result<bool> {
    let data = std::fs::read(path).with_context(|| format!("failed to read {}", path.display()))?;
    if data.is_empty() || data.ends_with(b"\n") {
        return Ok(false);
    }
    let keep = data.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let f = OpenOptions::new().write(true).open(path)?;
    f.set_len(keep as u64)?;
    Ok(true)
}

/// Reads a CSV of `T`, each row with the line it starts on. A last line without its newline was
/// torn by a kill and is ignored (with a warning on stderr); any other bad line is an error
/// naming the file and line.
fn read_csv<T: DeserializeOwned>(path: &Path) -> Result<Vec<(u64, T)>> {
    let data = std::fs::read_to_string(path).with_context(|| format!("failed to read {}", path.display()))?;
    let body = match data.rfind('\n') {
        Some(i) if i + 1 < data.len() => {
            crate::errln!(
                "warning: {}: ignoring a torn last line (the run was interrupted)",
                path.display()
            );
            &data[..=i]
        }
        None if !data.is_empty() => "",
        _ => &data[..],
    };
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(body.as_bytes());
    let headers = rdr.headers()?.clone();
    let mut out = Vec::new();
    let mut record = csv::StringRecord::new();
    let mut line = 2;
    loop {
        let read = rdr
            .read_record(&mut record)
            .with_context(|| format!("failed to parse {}: line {line}", path.display()))?;
        if !read {
            break;
        }
        // The line the record starts on (a quoted cell may span lines).
        line = record.position().map_or(line, |p| p.line());
        let row = record
            .deserialize::<T>(Some(&headers))
            .with_context(|| format!("failed to parse {}: line {line}", path.display()))?;
        out.push((line, row));
        line += 1;
    }
    Ok(out)
}

/// (target, workload, case, metric, gpu index) → round → round median, for the ok metric rows
/// of `rows` that carry a round.
pub fn round_medians(rows: &[ResultRow]) -> BTreeMap<RoundKey, BTreeMap<usize, f64>> {
    let mut out: BTreeMap<RoundKey, BTreeMap<usize, f64>> = BTreeMap::new();
    for r in rows {
        if let (Status::Ok, false, Some(round), Some(m)) = (r.status, r.metric.is_empty(), r.round, r.median)
        {
            out.entry((
                r.target.clone(),
                r.workload.clone(),
                r.case.clone(),
                r.metric.clone(),
                r.gpu_index,
            ))
            .or_default()
            .insert(round, m);
        }
    }
    out
}

/// What one measurement is across rounds: (target, workload, case, metric, gpu index).
pub type RoundKey = (String, String, String, String, Option<usize>);

/// The outlier rounds of every measurement (by `stats::outlier_rounds`), as (key, round).
pub fn outlier_rounds_of(rows: &[ResultRow]) -> BTreeSet<(RoundKey, usize)> {
    let mut out = BTreeSet::new();
    for (key, by_round) in round_medians(rows) {
        let (rounds, medians): (Vec<usize>, Vec<f64>) = by_round.into_iter().unzip();
        for (round, flagged) in rounds.into_iter().zip(crate::stats::outlier_rounds(&medians)) {
            if flagged {
                out.insert((key.clone(), round));
            }
        }
    }
    out
}

/// Marks the rows of outlier rounds in results.csv (`outlier_round` = true) once a run's rounds
/// are all measured, and returns how many rows it marked. Other rows keep the column empty, and
/// without an outlier the file is not touched. Otherwise it is rewritten whole to a temporary
/// file and renamed over the old one, so a kill leaves either version; call it only after the
/// run's `RunWriter` is dropped.
pub fn mark_outlier_rounds(dir: &RunDir) -> Result<usize> {
    let mut rows = read_results(dir)?;
    let flagged = outlier_rounds_of(&rows);
    if flagged.is_empty() {
        return Ok(0);
    }
    for r in rows.iter_mut() {
        if let (Status::Ok, false, Some(round)) = (r.status, r.metric.is_empty(), r.round) {
            let key = (
                r.target.clone(),
                r.workload.clone(),
                r.case.clone(),
                r.metric.clone(),
                r.gpu_index,
            );
            if flagged.contains(&(key, round)) {
                r.outlier_round = Some(true);
            }
        }
    }
    let path = dir.results_csv();
    let tmp = path.with_extension("csv.tmp");
    let mut w = csv::Writer::from_path(&tmp).with_context(|| format!("failed to write {}", tmp.display()))?;
    for r in &rows {
        w.serialize(r)?;
    }
    w.flush()?;
    drop(w);
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, &path).with_context(|| format!("failed to write {}", path.display()))?;
    Ok(flagged.len())
}

/// Reads results.csv. A summary value that no measurement can have (NaN, infinite, or a negative
/// time, rate, size or count) is an error naming the file and line: such a row would otherwise
/// be judged as if it had been measured.
pub fn read_results(dir: &RunDir) -> Result<Vec<ResultRow>> {
    let path = dir.results_csv();
    let rows = read_csv::<ResultRow>(&path)?;
    for (line, r) in &rows {
        let values = [
            ("median", r.median),
            ("mean", r.mean),
            ("min", r.min),
            ("max", r.max),
            ("p05", r.p05),
            ("p95", r.p95),
            ("ci_low", r.ci_low),
            ("ci_high", r.ci_high),
            ("stddev", r.stddev),
        ];
        for (name, v) in values {
            if let Some(why) = v.and_then(|v| super::unit::bad_value(name, v, &r.unit)) {
                anyhow::bail!(
                    "failed to read {}: line {line}: {}/{} {}: {why}",
                    path.display(),
                    r.workload,
                    r.case,
                    r.metric
                );
            }
        }
    }
    Ok(rows.into_iter().map(|(_, r)| r).collect())
}

/// Drops the samples of every (target, workload, case, round) that has no row in results.csv:
/// a case cut short between its samples and its row (a kill, a full disk) is measured again by
/// `--resume`, and its first samples must not sit beside the new ones. Rewritten through a
/// temporary file and a rename (a kill leaves either version); returns how many were dropped.
/// Call it before the run's `RunWriter` opens.
pub fn drop_orphan_samples(dir: &RunDir) -> Result<usize> {
    let path = dir.samples_csv();
    if !path.exists() || std::fs::metadata(&path)?.len() == 0 {
        return Ok(0);
    }
    // A torn last line cut, an older header brought up to date.
    drop(CsvAppender::open::<SampleRow>(&path)?);
    let with_rows: BTreeSet<(String, String, String, usize)> = if dir.results_csv().exists() {
        read_results(dir)?
            .into_iter()
            .map(|r| (r.target, r.workload, r.case, r.round.unwrap_or(0)))
            .collect()
    } else {
        BTreeSet::new()
    };
    let samples = read_csv::<SampleRow>(&path)?;
    let total = samples.len();
    let kept: Vec<SampleRow> = samples
        .into_iter()
        .map(|(_, s)| s)
        .filter(|s| {
            with_rows.contains(&(
                s.target.clone(),
                s.workload.clone(),
                s.case.clone(),
                s.round.unwrap_or(0),
            ))
        })
        .collect();
    let dropped = total - kept.len();
    if dropped == 0 {
        return Ok(0);
    }
    let tmp = path.with_extension("csv.tmp");
    let mut w = csv::Writer::from_path(&tmp).with_context(|| format!("failed to write {}", tmp.display()))?;
    if kept.is_empty() {
        w.write_record(SampleRow::header())?;
    }
    for s in &kept {
        w.serialize(s)?;
    }
    w.flush()?;
    drop(w);
    File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, &path).with_context(|| format!("failed to write {}", path.display()))?;
    Ok(dropped)
}

pub fn read_samples(dir: &RunDir) -> Result<Vec<SampleRow>> {
    let path = dir.samples_csv();
    if !path.exists() {
        return Ok(Vec::new());
    }
    Ok(read_csv(&path)?.into_iter().map(|(_, r)| r).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::{Status, STATE_COMPLETE};

    fn row(case: &str) -> ResultRow {
        ResultRow {
            schema: 1,
            run_id: "r".into(),
            workload: "gemm".into(),
            case: case.into(),
            metric: "latency".into(),
            median: Some(1.5),
            status: Status::Ok,
            reason: "has, a comma and \"quotes\"".into(),
            ..Default::default()
        }
    }

    #[test]
    fn append_read_and_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        {
            let mut w = RunWriter::open(&run).unwrap();
            w.write_case(&[row("a"), row("b")], &[]).unwrap();
        }
        // Simulate a kill mid-write: half a line at the end.
        let mut f = OpenOptions::new().append(true).open(run.results_csv()).unwrap();
        f.write_all(b"1,r,,gemm,c,na").unwrap();
        drop(f);
        let rows = read_results(&run).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0], row("a"));
        // Reopening cuts the torn tail before appending.
        {
            let mut w = RunWriter::open(&run).unwrap();
            w.write_case(&[row("c")], &[]).unwrap();
        }
        let rows = read_results(&run).unwrap();
        assert_eq!(
            rows.iter().map(|r| r.case.as_str()).collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
    }

    #[test]
    fn resuming_a_run_of_an_older_schema_appends_under_the_new_header() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        {
            let mut w = RunWriter::open(&run).unwrap();
            w.write_case(&[row("a")], &[]).unwrap();
        }
        // Drop the last two columns, as an older tagbench wrote the file.
        let text = std::fs::read_to_string(run.results_csv()).unwrap();
        let old: String = text
            .lines()
            .map(|l| {
                let cells: Vec<&str> = l.split(',').collect();
                format!("{}\n", cells[..cells.len() - 2].join(","))
            })
            .collect();
        std::fs::write(run.results_csv(), old).unwrap();
        {
            let mut w = RunWriter::open(&run).unwrap();
            w.write_case(&[row("b")], &[]).unwrap();
        }
        let rows = read_results(&run).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1], row("b"));
        assert_eq!(rows[0].case, "a");
        let header = std::fs::read_to_string(run.results_csv()).unwrap();
        assert_eq!(header.lines().next().unwrap(), ResultRow::header().join(","));
    }

    #[test]
    fn header_matches_schema() {
        let h = ResultRow::header();
        assert_eq!(h[0], "schema");
        assert_eq!(h[12], "metric");
        assert!(h.contains(&"started_at".to_string()));
    }

    #[test]
    fn bad_middle_line_names_line() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        {
            let mut w = RunWriter::open(&run).unwrap();
            w.write_case(&[row("a")], &[]).unwrap();
        }
        let mut f = OpenOptions::new().append(true).open(run.results_csv()).unwrap();
        f.write_all(b"garbage\n").unwrap();
        let err = format!("{:#}", read_results(&run).unwrap_err());
        assert!(err.contains("line 3"), "{err}");
    }

    fn sample(case: &str, round: usize, i: usize) -> SampleRow {
        SampleRow {
            run_id: "r".into(),
            workload: "gemm".into(),
            case: case.into(),
            metric: "latency".into(),
            sample: i,
            value: 1.0 + i as f64,
            target: "local".into(),
            round: Some(round),
            ..Default::default()
        }
    }

    #[test]
    fn samples_of_a_case_without_its_row_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        let with_row = |case: &str, round: usize| ResultRow {
            target: "local".into(),
            round: Some(round),
            ..row(case)
        };
        {
            let mut w = RunWriter::open(&run).unwrap();
            w.write_case(&[with_row("a", 0)], &[sample("a", 0, 0), sample("a", 0, 1)])
                .unwrap();
            w.write_case(&[with_row("a", 1)], &[sample("a", 1, 0)]).unwrap();
            // Killed between the samples of b and its row: samples only.
            w.write_case(&[], &[sample("b", 0, 0), sample("b", 0, 1), sample("b", 0, 2)])
                .unwrap();
            // A round of a without its row, and a torn sample line.
            w.write_case(&[], &[sample("a", 2, 0)]).unwrap();
        }
        let mut f = OpenOptions::new().append(true).open(run.samples_csv()).unwrap();
        f.write_all(b"r,,,,gemm,b,lat").unwrap();
        drop(f);
        assert_eq!(drop_orphan_samples(&run).unwrap(), 4);
        let left = read_samples(&run).unwrap();
        assert_eq!(
            left,
            vec![sample("a", 0, 0), sample("a", 0, 1), sample("a", 1, 0)]
        );
        // Nothing more to drop: the file is left alone.
        assert_eq!(drop_orphan_samples(&run).unwrap(), 0);
        // A run killed before its first row keeps a header and no sample.
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        std::fs::write(run.samples_csv(), format!("{}\n", SampleRow::header().join(","))).unwrap();
        {
            let mut w = CsvAppender::open::<SampleRow>(&run.samples_csv()).unwrap();
            w.append(&[sample("a", 0, 0)]).unwrap();
        }
        assert_eq!(drop_orphan_samples(&run).unwrap(), 1);
        assert!(read_samples(&run).unwrap().is_empty());
        let text = std::fs::read_to_string(run.samples_csv()).unwrap();
        assert_eq!(text, format!("{}\n", SampleRow::header().join(",")));
    }

    #[test]
    fn an_interrupt_marks_a_running_run_and_has_the_last_word() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        let mut meta = RunMeta {
            run_id: "r".into(),
            state: STATE_RUNNING.into(),
            ..Default::default()
        };
        run.write_meta(&meta).unwrap();
        assert!(run.mark_interrupted().unwrap());
        let read = run.read_meta().unwrap();
        assert_eq!(read.state, "interrupted");
        assert!(read.finished_at.is_some());
        // The run's own thread, still going while the process exits, cannot undo it.
        meta.state = STATE_RUNNING.into();
        run.write_meta(&meta).unwrap();
        assert_eq!(run.read_meta().unwrap().state, "interrupted");
        assert!(!run.mark_interrupted().unwrap());
        // A complete run stays complete.
        let dir = tempfile::tempdir().unwrap();
        let done = RunDir::new(dir.path());
        meta.state = STATE_COMPLETE.into();
        done.write_meta(&meta).unwrap();
        assert!(!done.mark_interrupted().unwrap());
        assert_eq!(done.read_meta().unwrap().state, "complete");
    }
}
