//! End-to-end tests of `tagbench report`: the files, the escaping, and the page in headless
//! Chromium (no console message, plots drawn).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{samples, tagbench, write_run, write_run_with_targets, Case};
use tagbench::results::{Status, TargetMeta};

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

/// Takes a screenshot of `page` at `size` ("W,H") into `shot`; returns width, height, channels
/// and the pixels.
fn screenshot(browser: &str, page: &Path, size: &str, shot: &Path) -> (u32, u32, usize, Vec<u8>) {
    let s = headless(
        browser,
        &[
            &format!("--screenshot={}", shot.display()),
            &format!("--window-size={size}"),
        ],
        page,
    );
    assert!(
        shot.is_file(),
        "no screenshot: {}",
        String::from_utf8_lossy(&s.stderr)
    );
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(shot).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    buf.truncate(info.buffer_size());
    (info.width, info.height, info.color_type.samples(), buf)
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
    let (_, _, channels, buf) = screenshot(&browser, &page, "1200,2400", &shot);
    let px = &buf[..];
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

const BASE: &str = "tb/pytorch:base";
const SLOW: &str = "tb/pytorch:slow";

/// The run.json target of one image as a torch-engine probe reports it.
fn torch_target(image: &str, id: &str, threads: &str, torch: &str, host: &str, os: &str) -> TargetMeta {
    let env = [
        ("torch_threads", threads),
        ("torch_version", torch),
        ("python_version", "3.11.2"),
        ("torch_cuda", "12.8"),
        ("os", os),
        ("hostname", host),
        (
            "docker.check_container_ms",
            if host == "h1" { "12" } else { "57" },
        ),
    ];
    TargetMeta {
        name: image.into(),
        executor: "docker".into(),
        engine: "torch".into(),
        device: "cpu".into(),
        image: image.into(),
        image_id: id.into(),
        image_created: "2026-11-24T15:29:05Z".into(),
        env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        ..Default::default()
    }
}

/// An A/B in one run whose candidate is twice as slow on gemm 256 and 1024 and the same on
/// 512, with a run.json in which threads, torch version and image ID differ (and noise keys
/// such as the host name, which must not count). A probe value carries markup.
fn ab_run(dir: &Path) -> PathBuf {
    write_run_with_targets(
        dir,
        "ab",
        "2026-01-01T00:00:00Z",
        &[
            Case::gemm(BASE, BASE, 256, samples(11, 10.0, 0.02, 40)),
            Case::gemm(BASE, BASE, 512, samples(12, 40.0, 0.02, 40)),
            Case::gemm(BASE, BASE, 1024, samples(13, 80.0, 0.02, 40)),
            Case::gemm(SLOW, SLOW, 256, samples(21, 20.0, 0.02, 40)),
            Case::gemm(SLOW, SLOW, 512, samples(22, 40.0, 0.02, 40)),
            Case::gemm(SLOW, SLOW, 1024, samples(23, 160.0, 0.02, 40)),
        ],
        vec![
            torch_target(
                BASE,
                "sha256:aaaa1111",
                "2",
                "2.9.1",
                "h1",
                "Debian GNU/Linux 12 (bookworm)",
            ),
            torch_target(
                SLOW,
                "sha256:bbbb2222",
                "1",
                "2.10.0",
                "h2",
                "Debian <script>alert(2)</script>",
            ),
        ],
    )
}

fn ab_report(dir: &Path) -> PathBuf {
    let run = ab_run(dir);
    let out = dir.join("ab-report");
    tagbench()
        .args(["report", "--along", "image", "--baseline", BASE, "--out"])
        .arg(&out)
        .arg(&run)
        .assert()
        .code(1);
    out
}

/// The text of `<section id="ID">` .. `</section>`.
fn section<'a>(html: &'a str, id: &str) -> &'a str {
    let start = html
        .find(&format!("<section id=\"{id}\""))
        .unwrap_or_else(|| panic!("no section {id}"));
    let end = html[start..].find("</section>").expect("unclosed section") + start;
    &html[start..end]
}

#[test]
fn a_slower_candidate_is_the_first_thing_the_report_says() {
    let t = tempfile::tempdir().unwrap();
    let out = ab_report(t.path());
    let html = std::fs::read_to_string(out.join("index.html")).unwrap();
    let verdict_at = html.find("id=\"verdict\"").expect("no verdict section");
    let table_at = html.find("<table").expect("no table");
    assert!(verdict_at < table_at, "the verdict must come before any table");
    let v = section(&html, "verdict");
    assert!(v.contains("Regressions found"), "{v}");
    assert!(v.contains("Exit code <b>1</b>"), "{v}");
    // Each regression named with its change, CI and a link to its plot; the same case is not.
    for case in ["size=256,dtype=fp32", "size=1024,dtype=fp32"] {
        assert!(
            v.contains(&format!("gemm {case} latency")),
            "{case} not named: {v}"
        );
    }
    assert!(!v.contains("size=512"), "a same case listed as a finding: {v}");
    assert!(
        v.contains("+100.") || v.contains("+99.") || v.contains("+101."),
        "no +100% change: {v}"
    );
    assert!(v.contains("href=\"#plot-ratios\"") && html.contains("id=\"plot-ratios\""));
    let c = section(&html, "changes");
    assert!(html.find("id=\"changes\"").unwrap() > verdict_at);
    for (group, key, old, new) in [
        ("driver, device and versions", "torch_threads", "2", "1"),
        ("driver, device and versions", "torch_version", "2.9.1", "2.10.0"),
        ("image", "image_id", "sha256:aaaa1111", "sha256:bbbb2222"),
    ] {
        let row = format!(
            "<tr><td>{group}</td><td>{key}</td><td class=\"old\">{old}</td><td class=\"new\">{new}</td></tr>"
        );
        assert!(c.contains(&row), "{key} {old} -> {new} missing: {c}");
    }
    for same_or_noise in ["python_version", "torch_cuda", "hostname", "check_container_ms"] {
        assert!(
            !c.contains(same_or_noise),
            "{same_or_noise} listed as a difference: {c}"
        );
    }
    // The hostile probe value is text, everywhere.
    assert!(c.contains("Debian &lt;script&gt;alert(2)&lt;/script&gt;"));
    assert!(!html.to_lowercase().contains("<script"));
    // Same rows folded, per workload; the environment one key per row.
    assert!(
        html.contains("<details><summary>1 same, 0 too noisy to tell</summary>")
            || html.contains("<details><summary>2 same"),
        "same rows not folded"
    );
    let env = section(&html, "environment");
    assert!(
        env.contains("<tr class=\"differs\"><td>torch_threads</td><td>2</td><td>1</td></tr>"),
        "{env}"
    );

    let md = std::fs::read_to_string(out.join("summary.md")).unwrap();
    let (verdict, changes, table) = (
        md.find("Regressions found").expect("verdict"),
        md.find("## What differs").expect("changes"),
        md.find("| workload |").expect("table"),
    );
    assert!(verdict < changes && changes < table, "{md}");
    assert!(md.contains("| torch\\_threads | 2 | 1 |"), "{md}");
    assert!(md.chars().count() <= 65_000);
}

#[test]
fn compare_prints_what_differs_before_its_table() {
    let t = tempfile::tempdir().unwrap();
    let run = ab_run(t.path());
    let out = tagbench()
        .args(["compare", "--along", "image", "--baseline", BASE])
        .arg(&run)
        .assert()
        .code(1)
        .get_output()
        .stdout
        .clone();
    let text = String::from_utf8(out).unwrap();
    let changes = text
        .find(&format!("changes {BASE} -> {SLOW}:"))
        .unwrap_or_else(|| panic!("{text}"));
    let table = text.find("baseline: ").unwrap();
    assert!(changes < table, "{text}");
    let block = &text[changes..table];
    assert!(
        block
            .lines()
            .any(|l| l.trim_start().starts_with("torch_threads") && l.ends_with("2 -> 1")),
        "{block}"
    );
    assert!(
        block.contains("torch_version") && block.contains("2.9.1 -> 2.10.0"),
        "{block}"
    );
    assert!(
        !block.contains("hostname") && !block.contains("python_version"),
        "{block}"
    );
}

/// Measures the laid-out page: a copy of it with a script that writes the numbers into the DOM
/// (the report itself allows no script), read back with --dump-dom at the given window size.
fn layout_probe(browser: &str, page: &Path, size: &str) -> serde_json::Value {
    let html = std::fs::read_to_string(page).unwrap();
    let csp_start = html.find("<meta http-equiv=\"Content-Security-Policy\"").unwrap();
    let csp_end = html[csp_start..].find('>').unwrap() + csp_start + 1;
    let probe = "<script>(function(){var d=document.documentElement,v=document.getElementById('verdict').getBoundingClientRect();\
var o=document.createElement('pre');o.id='probe';o.textContent='PROBE'+JSON.stringify({scroll_width:d.scrollWidth,client_width:d.clientWidth,\
verdict_top:v.top,verdict_bottom:v.bottom,inner_height:window.innerHeight})+'EBORP';document.body.appendChild(o);})();</script>";
    let measured =
        format!("{}{}", &html[..csp_start], &html[csp_end..]).replace("</body>", &format!("{probe}</body>"));
    let copy = page.with_file_name("probe.html");
    std::fs::write(&copy, measured).unwrap();
    let dom = headless(browser, &[&format!("--window-size={size}"), "--dump-dom"], &copy);
    let text = String::from_utf8_lossy(&dom.stdout);
    let a = text
        .find("<pre id=\"probe\">PROBE")
        .unwrap_or_else(|| panic!("no probe output: {}", String::from_utf8_lossy(&dom.stderr)));
    let b = text[a..].find("EBORP").unwrap() + a;
    serde_json::from_str(&text[a + "<pre id=\"probe\">PROBE".len()..b].replace("&quot;", "\"")).unwrap()
}

#[test]
fn the_verdict_is_the_first_screen_at_1280_by_800() {
    let Some(browser) = chromium() else { return };
    let t = tempfile::tempdir().unwrap();
    let out = ab_report(t.path());
    let page = out.join("index.html");

    let dom = headless(&browser, &["--window-size=1280,800", "--dump-dom"], &page);
    let log = String::from_utf8_lossy(&dom.stderr);
    let console: Vec<&str> = log.lines().filter(|l| l.contains(":CONSOLE")).collect();
    assert!(console.is_empty(), "console messages: {console:?}");

    let m = layout_probe(&browser, &page, "1280,800");
    eprintln!("layout at 1280x800: {m}");
    let num = |k: &str| m[k].as_f64().unwrap_or_else(|| panic!("{k} in {m}"));
    assert!(
        num("scroll_width") <= num("client_width"),
        "horizontal scroll at 1280 px: {m}"
    );
    assert!(num("verdict_top") < 800.0, "verdict below the first screen: {m}");
    assert!(
        num("verdict_bottom") <= 800.0,
        "verdict does not fit the first screen: {m}"
    );

    // The first screen as a user sees it: the verdict's red bar is on it.
    let shot = t.path().join("first-screen.png");
    let (w, h, channels, buf) = screenshot(&browser, &page, "1280,800", &shot);
    eprintln!("screenshot: {}", shot.display());
    assert_eq!((w, h), (1280, 800));
    let red = buf
        .chunks(channels)
        .filter(|p| p[0] > 190 && p[1] < 80 && p[2] < 80)
        .count();
    assert!(
        red > 300,
        "no red verdict bar on the first screen ({red} red pixels)"
    );
    if let Ok(dir) = std::env::var("TAGBENCH_KEEP_SCREENSHOT") {
        std::fs::copy(&shot, Path::new(&dir).join("first-screen.png")).unwrap();
    }
}
