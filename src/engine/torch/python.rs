//! A python3 child process running the embedded torch worker package (`worker/`), spoken to with
//! one JSON request and one JSON reply per line. Each reply starts with a token drawn for the
//! process ([`TOKEN_VAR`]), so that what a sitecustomize or a library prints on python's stdout
//! before the script takes it over is never read as a reply.

use std::ffi::{OsStr, OsString};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use serde_json::Value;

use crate::error::CaseError;

/// Each file of the worker package with its text, compiled in: `package!["a.py"]` is
/// `&[("a.py", include_str!("worker/a.py"))]`.
macro_rules! package {
    ($($path:literal),* $(,)?) => {
        &[$(($path, include_str!(concat!("worker/", $path)))),*]
    };
}

/// The worker package (`worker/`), compiled into tagbench: each file's path under the package
/// root and its text. `python3 -u ROOT` runs `__main__.py` with ROOT first on `sys.path`.
/// A test checks that this list is every `.py` file of the folder.
pub const FILES: &[(&str, &str)] = package![
    "__main__.py",
    "tagbench_worker/__init__.py",
    "tagbench_worker/allreduce.py",
    "tagbench_worker/attention.py",
    "tagbench_worker/compile.py",
    "tagbench_worker/conv.py",
    "tagbench_worker/components.py",
    "tagbench_worker/device.py",
    "tagbench_worker/gemm.py",
    "tagbench_worker/generate.py",
    "tagbench_worker/hf.py",
    "tagbench_worker/llama.py",
    "tagbench_worker/precision.py",
    "tagbench_worker/probe.py",
    "tagbench_worker/protocol.py",
    "tagbench_worker/ranks.py",
    "tagbench_worker/testhooks.py",
    "tagbench_worker/timing.py",
];

/// Runs the package from sources given as arguments, where no file can be written.
const BOOTSTRAP: &str = include_str!("worker/bootstrap.py");

/// The environment variable that hands the reply token to the script.
pub const TOKEN_VAR: &str = "TAGBENCH_REPLY_TOKEN";

/// The environment variable that names the worker's fresh torch.compile cache folder.
const COMPILE_CACHE_VAR: &str = "TAGBENCH_COMPILE_CACHE_DIR";

/// Which python runs the script: `TAGBENCH_PYTHON` if set, else `python3` on PATH.
pub fn python_command() -> OsString {
    std::env::var_os("TAGBENCH_PYTHON")
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "python3".into())
}

/// The module name of a package file (`tagbench_worker/gemm.py` → `tagbench_worker.gemm`,
/// `tagbench_worker/__init__.py` → `tagbench_worker`); `None` for `__main__.py`.
fn module_name(path: &str) -> Option<String> {
    let stem = path.strip_suffix(".py")?;
    let stem = stem.strip_suffix("/__init__").unwrap_or(stem);
    (stem != "__main__").then(|| stem.replace('/', "."))
}

/// The worker package on disk, removed when dropped. Where no temporary directory is writable
/// (a read-only container), python gets the package through `-c` instead ([`BOOTSTRAP`]).
pub struct ScriptFile {
    root: Option<PathBuf>,
}

impl ScriptFile {
    pub fn write() -> ScriptFile {
        // Unique per engine: one engine's clean-up must not remove another's package.
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let root = std::env::temp_dir().join(format!("tagbench-torch-{}-{n}", std::process::id()));
        let written = FILES.iter().try_for_each(|(path, text)| {
            let file = root.join(path);
            std::fs::create_dir_all(file.parent().unwrap_or(&root))?;
            std::fs::write(file, text)
        });
        if written.is_err() {
            let _ = std::fs::remove_dir_all(&root);
        }
        ScriptFile {
            root: written.is_ok().then_some(root),
        }
    }

    /// The package passed on the command line, as where nothing can be written.
    #[cfg(test)]
    fn inline() -> ScriptFile {
        ScriptFile { root: None }
    }

    /// A fresh folder for torch.compile's caches (Inductor, triton), this engine's alone and
    /// removed with the package: compilations never outlive the worker (`compile.py`).
    fn compile_cache(&self) -> Option<PathBuf> {
        self.root.as_ref().map(|r| r.join("compile-cache"))
    }

    /// Arguments that make python run the package; the worker's own arguments follow them.
    fn args(&self) -> Vec<OsString> {
        match &self.root {
            Some(root) => vec!["-u".into(), root.into()],
            None => {
                let mut args: Vec<OsString> = vec!["-u".into(), "-c".into(), BOOTSTRAP.into()];
                for (path, text) in FILES {
                    if let Some(module) = module_name(path) {
                        args.push(module.into());
                        args.push((*text).into());
                    }
                }
                args.push("--".into());
                args
            }
        }
    }
}

impl Drop for ScriptFile {
    fn drop(&mut self) {
        // The folder is this engine's alone (python may have added __pycache__ to it).
        if let Some(root) = &self.root {
            let _ = std::fs::remove_dir_all(root);
        }
    }
}

/// What a python child is for: the one-rank request/response session, rank 0 of a multi-rank
/// case (answering requests like the session), or another rank (taking its requests from rank 0,
/// writing a reply only when it cannot go on).
pub enum Role<'a> {
    Session,
    Leader {
        device: &'a str,
    },
    Follower {
        device: &'a str,
    },
    /// One reply, the Python distributions importable here (`--distributions`), then exit.
    Distributions,
}

/// A running python worker.
pub struct PyProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Option<BufReader<ChildStdout>>,
    python: OsString,
    /// Every reply line starts with this and a space.
    token: String,
}

impl PyProcess {
    /// Starts python on the script. A python that is not there is a skip, not a failure: the
    /// image simply has no python3.
    pub fn spawn(
        python: &OsStr,
        script: &ScriptFile,
        role: Role<'_>,
        env: &[(String, String)],
    ) -> Result<PyProcess, CaseError> {
        let token = crate::protocol::new_token();
        let mut cmd = Command::new(python);
        cmd.args(script.args())
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env(TOKEN_VAR, &token);
        if let Some(dir) = script.compile_cache() {
            cmd.env(COMPILE_CACHE_VAR, dir);
        }
        // Python's own buffering must not hold protocol replies back.
        cmd.env("PYTHONUNBUFFERED", "1").stderr(Stdio::inherit());
        match role {
            Role::Session => {
                cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
            }
            Role::Leader { device } => {
                cmd.args(["--rank", device])
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped());
            }
            Role::Follower { device } => {
                cmd.args(["--rank", device])
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped());
            }
            Role::Distributions => {
                cmd.arg("--distributions")
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped());
            }
        }
        crate::sys::die_with_parent(&mut cmd);
        let mut child = cmd.spawn().map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                CaseError::skipped(format!(
                    "no python3 in image: `{}` not found",
                    Path::new(python).display()
                ))
            } else {
                CaseError::Failed(anyhow::anyhow!(
                    "failed to start {}: {e}",
                    Path::new(python).display()
                ))
            }
        })?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().map(BufReader::new);
        Ok(PyProcess {
            child,
            stdin,
            stdout,
            python: python.to_owned(),
            token,
        })
    }

    /// Sends one request and waits for its reply. `{"ok": v}` gives `v`; `{"skip": r}` a skip;
    /// `{"error": r}` a failure. A python that died is a failure that says how it ended.
    pub fn request(&mut self, req: &Value) -> Result<Value, CaseError> {
        let (Some(stdin), Some(stdout)) = (self.stdin.as_mut(), self.stdout.as_mut()) else {
            return Err(CaseError::Failed(anyhow::anyhow!(
                "the python follower takes no requests"
            )));
        };
        let mut line = serde_json::to_string(req).map_err(|e| CaseError::Failed(e.into()))?;
        line.push('\n');
        if stdin
            .write_all(line.as_bytes())
            .and_then(|()| stdin.flush())
            .is_ok()
        {
            let mut reply = String::new();
            while matches!(stdout.read_line(&mut reply), Ok(n) if n > 0) {
                if let Some(r) = reply_of(&reply, &self.token) {
                    return parse_reply(r);
                }
                // Output from before the script took stdout over (a wrapper script, a
                // sitecustomize that prints, even JSON): not a reply; kept in the log.
                eprintln!("torch worker stdout (not a reply): {}", reply.trim_end());
                reply.clear();
            }
        }
        let how = self.exit_description();
        Err(CaseError::Failed(anyhow::anyhow!(
            "the torch worker ({}) {how}; its stderr is in the case log",
            Path::new(&self.python).display()
        )))
    }

    /// The process id (to signal a rank from another thread).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A follower's last reply line before it ended (`None` when it wrote none): read to the end
    /// of its stdout, so this returns when the process has closed it (exited).
    pub fn last_reply(&mut self) -> Option<Result<Value, CaseError>> {
        let stdout = self.stdout.as_mut()?;
        let mut last = None;
        let mut line = String::new();
        while matches!(stdout.read_line(&mut line), Ok(n) if n > 0) {
            if let Some(r) = reply_of(&line, &self.token) {
                last = Some(parse_reply(r));
            }
            line.clear();
        }
        last
    }

    /// How the process ended (waiting for it): whether with status 0, and in words
    /// (`exited with status 3`).
    pub fn ended(&mut self) -> (bool, String) {
        let how = self.exit_description();
        let ok = matches!(self.child.try_wait(), Ok(Some(s)) if s.success());
        (ok, how)
    }

    /// Closes stdin, so that an idle rank 0 broadcasts the end to its group and every rank exits.
    pub fn close_stdin(&mut self) {
        drop(self.stdin.take());
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits up to `limit` for the process to exit by itself; kills it past that.
    pub fn wait_or_kill(&mut self, limit: std::time::Duration) -> Option<std::process::ExitStatus> {
        let start = std::time::Instant::now();
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if start.elapsed() < limit => {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                _ => {
                    let _ = self.child.kill();
                    return self.child.wait().ok();
                }
            }
        }
    }

    fn exit_description(&mut self) -> String {
        match self.wait_or_kill(std::time::Duration::from_secs(2)) {
            Some(status) => match (status.code(), signal_of(&status)) {
                (Some(c), _) => format!("exited with status {c}"),
                (None, Some(s)) => format!("was killed by signal {s} ({})", crate::sys::signal_name(s)),
                _ => "ended".to_string(),
            },
            None => "stopped answering".to_string(),
        }
    }
}

impl Drop for PyProcess {
    fn drop(&mut self) {
        // Closing stdin lets an idle session end by itself; a busy one is killed.
        drop(self.stdin.take());
        if self.stdout.is_some() {
            self.wait_or_kill(std::time::Duration::from_millis(500));
        } else {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The reply in a line behind `token`; `None` for any other line.
fn reply_of<'a>(line: &'a str, token: &str) -> Option<&'a str> {
    line.strip_prefix(token)?.strip_prefix(' ')
}

fn parse_reply(line: &str) -> Result<Value, CaseError> {
    let v: Value = serde_json::from_str(line.trim()).map_err(|e| {
        let shown: String = line.chars().take(200).collect();
        CaseError::Failed(anyhow::anyhow!("bad reply from the torch worker: {e}: `{shown}`"))
    })?;
    if let Some(ok) = v.get("ok") {
        return Ok(ok.clone());
    }
    let text = |k: &str| {
        v.get(k)
            .map(|r| r.as_str().map_or_else(|| r.to_string(), str::to_string))
    };
    if let Some(reason) = text("skip") {
        return Err(CaseError::Skipped(reason));
    }
    if let Some(reason) = text("error") {
        return Err(CaseError::Failed(anyhow::anyhow!("torch: {reason}")));
    }
    Err(CaseError::Failed(anyhow::anyhow!(
        "reply from the torch worker has neither ok, skip nor error: {}",
        line.trim()
    )))
}

#[cfg(unix)]
fn signal_of(status: &std::process::ExitStatus) -> Option<i32> {
    use std::os::unix::process::ExitStatusExt;
    status.signal()
}

#[cfg(not(unix))]
fn signal_of(_: &std::process::ExitStatus) -> Option<i32> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_map_to_results() {
        assert_eq!(parse_reply(r#"{"ok":{"seconds":1.5}}"#).unwrap()["seconds"], 1.5);
        match parse_reply(r#"{"skip":"no GPU"}"#) {
            Err(CaseError::Skipped(r)) => assert_eq!(r, "no GPU"),
            other => panic!("{other:?}"),
        }
        match parse_reply(r#"{"error":"RuntimeError: boom"}"#) {
            Err(CaseError::Failed(e)) => assert!(e.to_string().contains("boom")),
            other => panic!("{other:?}"),
        }
        assert!(matches!(parse_reply("hello"), Err(CaseError::Failed(_))));
        assert!(matches!(parse_reply("{}"), Err(CaseError::Failed(_))));
    }

    #[test]
    fn only_lines_behind_the_token_are_replies() {
        assert_eq!(reply_of("t1 {\"ok\":1}\n", "t1"), Some("{\"ok\":1}\n"));
        assert_eq!(reply_of("{\"ok\":1}\n", "t1"), None);
        assert_eq!(reply_of("t2 {\"ok\":1}\n", "t1"), None);
    }

    #[test]
    fn every_file_of_the_package_is_compiled_in() {
        fn py_files(dir: &Path, root: &Path, out: &mut Vec<String>) {
            for e in std::fs::read_dir(dir).unwrap().flatten() {
                let p = e.path();
                if p.is_dir() {
                    py_files(&p, root, out);
                } else if p.extension().is_some_and(|x| x == "py") {
                    out.push(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
                }
            }
        }
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/engine/torch/worker");
        let mut found = Vec::new();
        py_files(&root, &root, &mut found);
        // The bootstrap is how the package runs without files, not part of it.
        found.retain(|f| f != "bootstrap.py");
        found.sort();
        let mut listed: Vec<String> = FILES.iter().map(|(p, _)| p.to_string()).collect();
        listed.sort();
        assert_eq!(
            found, listed,
            "python.rs FILES must list every .py file of worker/"
        );
    }

    #[test]
    fn module_names_of_package_files() {
        assert_eq!(
            module_name("tagbench_worker/gemm.py").as_deref(),
            Some("tagbench_worker.gemm")
        );
        assert_eq!(
            module_name("tagbench_worker/__init__.py").as_deref(),
            Some("tagbench_worker")
        );
        assert_eq!(module_name("__main__.py"), None);
    }

    /// Both ways of running the package answer `components` (which needs no torch), with the
    /// system python3 where there is one.
    #[test]
    fn the_package_runs_from_files_and_from_arguments() {
        let python = OsString::from("python3");
        if std::process::Command::new(&python).arg("-V").output().is_err() {
            eprintln!("skipped: no python3 on PATH");
            return;
        }
        for script in [ScriptFile::write(), ScriptFile::inline()] {
            assert_eq!(script.root.is_some(), script.args().len() == 2);
            let mut p = PyProcess::spawn(&python, &script, Role::Session, &[]).unwrap();
            let reply = p.request(&serde_json::json!({"op": "components"})).unwrap();
            assert!(
                reply["maps"].is_array() && reply["distributions"].is_array(),
                "{reply}"
            );
            // hello: the versions, or a skip where this python has no torch.
            let hello = p.request(&serde_json::json!({"op": "hello"}));
            assert!(
                hello.is_ok() || matches!(hello, Err(CaseError::Skipped(_))),
                "{hello:?}"
            );
        }
    }
}
