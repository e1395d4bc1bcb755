//! End-to-end tests of `tagbench report`: the files, the escaping, and the page in headless
//! Chromium (no console message, plots drawn).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{samples, tagbench, write_run, Case};
use tagbench::results::Status;

const EVIL: &str = "evil/<script>alert(1)</script>:tag";

/// A run with two images (one named with markup), a skipped case with markup in its reason.
fn evil_run(dir: &Path) -> PathBuf {
    write_run(
        dir,
        "r1",
        "2026-01-01T00:00:00Z",
        &[
            Case::gemm("good:tag", "good:tag", 256, samples(1, 10.0, 0.02, 40)),
            Case::gemm("good:tag", "good:tag", 1024, samples(2, 80.0, 0.02, 40)),
            Case::gemm(EVIL, EVIL, 256, samples(3, 12.0, 0.02, 40)),
            Case::gemm(EVIL, EVIL, 1024, samples(4, 80.0, 0.02, 40)),
            Case::status(
                EVIL,
                "allreduce",
                "min_bytes=1024",
                Status::Skipped,
                "needs <b>NCCL</b> & \"CUDA\"",
            ),
        ],
    )
}

fn report(dir: &Path) -> PathBuf {
    let run = evil_run(dir);
    let out = dir.join("rep");
    tagbench()
        .args(["report", "--along", "image", "--baseline", "good:tag", "--out"])
        .arg(&out)
        .arg(&run)
        .assert()
        .code(1); // the evil image is 20% slower at size 256
    out
}

#[test]
fn files_exist_and_everything_is_escaped() {
    let t = tempfile::tempdir().unwrap();
    let out = report(t.path());
    for f in [
        "index.html",
        "summary.md",
        "gemm_throughput.svg",
        "gemm_throughput.png",
        "ratios.svg",
        "ratios.png",
    ] {
        let p = out.join(f);
        assert!(
            p.is_file() && std::fs::metadata(&p).unwrap().len() > 100,
            "{f} missing"
        );
    }
    let png = std::fs::read(out.join("ratios.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let html = std::fs::read_to_string(out.join("index.html")).unwrap();
    assert!(
        !html.to_lowercase().contains("<script"),
        "raw script tag in the page"
    );
    assert!(!html.contains("<b>NCCL"));
    assert!(html.contains("evil/&lt;script&gt;alert(1)&lt;/script&gt;:tag"));
    assert!(html.contains("needs &lt;b&gt;NCCL&lt;/b&gt; &amp; &quot;CUDA&quot;"));
    assert!(
        !html.contains("src=\"http") && !html.contains("href=\"http"),
        "network reference"
    );
    assert_eq!(html.matches("<svg").count(), 2, "inline plots");
    assert!(html.contains("class=\"regression\""));
    let md = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(
        md.contains("evil/&lt;script&gt;") && !md.contains("<script"),
        "{md}"
    );
    assert!(md.contains("regression"));
}

#[test]
fn run_writes_a_report_by_default() {
    let t = tempfile::tempdir().unwrap();
    tagbench()
        .args([
            "run",
            "--no-progress",
            "--filter",
            "gemm/size=256,dtype=fp32",
            "--run-id",
            "r",
        ])
        .arg("--results-dir")
        .arg(t.path().join("results"))
        .arg("--report-dir")
        .arg(t.path().join("reports"))
        .assert()
        .code(0);
    let rep = t.path().join("reports/r");
    assert!(rep.join("index.html").is_file() && rep.join("summary.md").is_file());
    assert!(rep.join("gemm_throughput.png").is_file());
    tagbench()
        .args([
            "run",
            "--no-progress",
            "--no-report",
            "--filter",
            "gemm/size=256,dtype=fp32",
            "--run-id",
            "s",
        ])
        .arg("--results-dir")
        .arg(t.path().join("results"))
        .arg("--report-dir")
        .arg(t.path().join("reports"))
        .assert()
        .code(0);
    assert!(!t.path().join("reports/s").exists());
}

/// The Chromium binary, or None when the test may be skipped (TAGBENCH_SKIP_BROWSER=1).
fn chromium() -> Option<String> {
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        if Command::new(name)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return Some(name.to_string());
        }
    }
    if std::env::var("TAGBENCH_SKIP_BROWSER").is_ok_and(|v| v == "1") {
        eprintln!("skipped: no chromium and TAGBENCH_SKIP_BROWSER=1");
        return None;
    }
    panic!("headless Chromium is needed for this test: `apt-get install chromium` (or set TAGBENCH_SKIP_BROWSER=1 to skip)");
}

fn headless(browser: &str, args: &[&str], page: &Path) -> std::process::Output {
    let profile = tempfile::tempdir().unwrap();
    Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--enable-logging=stderr",
            "--v=0",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap()
}

#[test]
fn page_renders_in_headless_chromium() {
    let Some(browser) = chromium() else { return };
    let t = tempfile::tempdir().unwrap();
    let out = report(t.path());
    let page = out.join("index.html");

    // DOM after parsing: the tag is text, no script element exists, the plots are SVG with
    // drawn shapes; and the page logs nothing to the console (a blocked script would).
    let dom = headless(&browser, &["--dump-dom"], &page);
    let html = String::from_utf8_lossy(&dom.stdout);
    let log = String::from_utf8_lossy(&dom.stderr);
    let console: Vec<&str> = log.lines().filter(|l| l.contains(":CONSOLE")).collect();
    assert!(console.is_empty(), "console messages: {console:?}");
    assert!(
        html.contains("evil/&lt;script&gt;alert(1)&lt;/script&gt;:tag"),
        "tag not shown as text"
    );
    assert!(!html.to_lowercase().contains("<script"));
    assert_eq!(html.matches("<svg").count(), 2);
    assert!(
        html.contains("<polyline") || html.contains("<path"),
        "no line drawn"
    );
    assert!(html.matches("<rect").count() > 4, "no bars drawn");

    // Screenshot: the plots put colour on the page, the regression bar in red.
    let shot = t.path().join("shot.png");
    let s = headless(
        &browser,
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1200,2400",
        ],
        &page,
    );
    assert!(
        shot.is_file(),
        "no screenshot: {}",
        String::from_utf8_lossy(&s.stderr)
    );
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&shot).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    let channels = info.color_type.samples();
    let px = &buf[..info.buffer_size()];
    let (mut coloured, mut red, mut total) = (0usize, 0usize, 0usize);
    for p in px.chunks(channels) {
        total += 1;
        let (r, g, b) = (p[0] as i32, p[1] as i32, p[2] as i32);
        if (r - g).abs() > 40 || (g - b).abs() > 40 || (r - b).abs() > 40 {
            coloured += 1;
        }
        if r > 180 && g < 90 && b < 90 {
            red += 1;
        }
    }
    // Thin lines and small markers: a few thousand coloured pixels; a blank plot has none.
    assert!(
        coloured > 2000,
        "only {coloured} of {total} pixels coloured: plots not drawn"
    );
    assert!(red > 50, "no red regression mark ({red} red pixels)");
}
