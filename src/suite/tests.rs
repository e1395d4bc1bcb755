use super::*;

fn parse(text: &str) -> Result<Suite, SuiteError> {
    Suite::parse(text, Path::new("suites/t.toml"), &[])
}

const OK: &str = r#"
name = "t"
[defaults]
max_time_s = 0.5

[[workload]]
kind = "gemm"
m = [64, 128]
n = 32
k = 16
dtype = ["fp32", "bf16"]

[[workload]]
kind = "allreduce"
name = "ar"
max_bytes = 4096
"#;

#[test]
fn expands_cartesian_product_in_order() {
    let s = parse(OK).unwrap();
    let ids: Vec<_> = s.workloads[0].cases.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "m=64,n=32,k=16,dtype=fp32",
            "m=64,n=32,k=16,dtype=bf16",
            "m=128,n=32,k=16,dtype=fp32",
            "m=128,n=32,k=16,dtype=bf16"
        ]
    );
    assert_eq!(s.workloads[0].cases[0].measure.max_time_s, 0.5);
    match &s.workloads[0].cases[0].params {
        crate::workload::Params::Gemm(g) => assert_eq!(g.layout, crate::workload::gemm::Layout::Nn),
        other => panic!("{other:?}"),
    }
    assert_eq!(s.workloads[1].name, "ar");
    assert_eq!(s.cases().count(), 5);
}

#[test]
fn typo_key_names_line_and_key() {
    let text = "[[workload]]\nkind = \"gemm\"\nsize = 64\ndtyp = \"fp32\"\n";
    let e = parse(text).unwrap_err();
    assert_eq!(e.line, 4, "{e}");
    assert!(e.to_string().contains("dtyp"), "{e}");
    assert!(e.to_string().contains("suites/t.toml"), "{e}");
}

#[test]
fn wrong_type_names_line() {
    let text = "[[workload]]\nkind = \"gemm\"\nsize = [64,\n  \"big\"]\n";
    let e = parse(text).unwrap_err();
    assert_eq!(e.line, 4, "{e}");
    assert!(e.message.contains("invalid type"), "{e}");
}

#[test]
fn bad_enum_value_names_line() {
    let text = "[[workload]]\nkind = \"gemm\"\nsize = 64\ndtype = \"fp64\"\n";
    let e = parse(text).unwrap_err();
    assert_eq!(e.line, 4, "{e}");
    assert!(e.message.contains("fp64"), "{e}");
}

#[test]
fn unknown_workload_kind() {
    let text = "name = \"x\"\n\n[[workload]]\nkind = \"gemmm\"\n";
    let e = parse(text).unwrap_err();
    assert_eq!(e.line, 4, "{e}");
    assert!(e.message.contains("unknown workload kind `gemmm`"), "{e}");
}

#[test]
fn unknown_top_level_and_defaults_keys() {
    let e = parse("nme = 1\n[[workload]]\nkind = \"probe\"\n").unwrap_err();
    assert_eq!(e.line, 1);
    let e = parse("[defaults]\nwarmup = 1\n[[workload]]\nkind = \"probe\"\n").unwrap_err();
    assert_eq!(e.line, 2, "{e}");
    assert!(e.message.contains("warmup"), "{e}");
}

#[test]
fn slurm_table_and_target_keys() {
    let s = parse(
        "[slurm]\npartition = \"gpu\"\nnodes = 2\ngpus_per_node = 8\nsbatch_options = [\"--constraint=h100\"]\n\n[[target]]\nimage = \"i:a\"\nexecutor = \"slurm\"\ncontainer = \"pyxis\"\n\n[[workload]]\nkind = \"probe\"\n",
    )
    .unwrap();
    assert_eq!((s.slurm.partition.as_deref(), s.slurm.nodes()), (Some("gpu"), 2));
    assert_eq!(s.targets[0].executor_kind(), ExecutorKind::Slurm);
    assert_eq!(s.targets[0].container, Some(ContainerPlatform::Pyxis));
    let e = parse("[[workload]]\nkind = \"probe\"\n\n[slurm]\nnode = 2\n").unwrap_err();
    assert_eq!(e.line, 5, "{e}");
    assert!(e.message.contains("node"), "{e}");
    let e = parse("[[target]]\nimage = \"i\"\ncontainer = \"pyxis\"\n[[workload]]\nkind = \"probe\"\n")
        .unwrap_err();
    assert!(e.message.contains("executor = \"slurm\""), "{e}");
}

#[test]
fn container_keys_are_checked_at_load() {
    let suite = |keys: &str| {
        format!("[[workload]]\nkind = \"probe\"\n\n[[target]]\nimage = \"i:a\"\nexecutor = \"slurm\"\ncontainer = \"docker\"\n{keys}\n")
    };
    let s = parse(&suite(
        "shm_size = \"96m\"\ncpus = 1.5\nulimits = { nofile = 4096 }",
    ))
    .unwrap();
    assert_eq!(s.targets[0].cpus, Some(1.5));
    let e = parse(&suite("cpus = 0")).unwrap_err();
    // The key's own line, not the [[target]] header's (line 4).
    assert_eq!(e.line, 8, "{e}");
    assert!(e.to_string().contains("suites/t.toml"), "{e}");
    assert!(
        e.message
            .contains("key `cpus`: 0 is not a positive number of cores"),
        "{e}"
    );
    let e = parse(&suite("ulimits = { openfiles = 4096 }")).unwrap_err();
    assert_eq!(e.line, 8, "{e}");
    assert!(e.message.contains("unknown limit `openfiles`"), "{e}");
}

#[test]
fn syntax_error_has_line() {
    let e = parse("[[workload]]\nkind = \"gemm\"\nsize = = 3\n").unwrap_err();
    assert_eq!(e.line, 3, "{e}");
}

#[test]
fn missing_field_names_workload() {
    let e = parse("[[workload]]\nkind = \"attention\"\nheads = 2\n").unwrap_err();
    assert_eq!(e.line, 1, "{e}");
    assert!(e.message.contains("workload `attention`"), "{e}");
    assert!(e.message.contains("seq_q"), "{e}");
}

#[test]
fn cross_field_check() {
    let e = parse("[[workload]]\nkind = \"attention\"\nheads = 8\nkv_heads = 3\nseq_q = 4\nhead_dim = 8\n")
        .unwrap_err();
    assert!(e.message.contains("multiple of kv_heads"), "{e}");
}

#[test]
fn duplicate_workload_names() {
    let e = parse("[[workload]]\nkind = \"probe\"\n[[workload]]\nkind = \"probe\"\n").unwrap_err();
    assert!(e.message.contains("used twice"), "{e}");
    assert_eq!(e.line, 3);
}

#[test]
fn overrides_apply_and_are_checked() {
    let s = Suite::parse(
        OK,
        Path::new("t.toml"),
        &[
            "gemm.m=[8]".into(),
            "max_time_s=0.25".into(),
            "gemm.dtype=fp16".into(),
        ],
    )
    .unwrap();
    let ids: Vec<_> = s.workloads[0].cases.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, ["m=8,n=32,k=16,dtype=fp16"]);
    assert_eq!(s.workloads[0].cases[0].measure.max_time_s, 0.25);
    let e = Suite::parse(OK, Path::new("t.toml"), &["nope.m=1".into()]).unwrap_err();
    assert!(e.message.contains("no workload named `nope`"), "{e}");
    let e = Suite::parse(OK, Path::new("t.toml"), &["gemm.dtype=fp64".into()]).unwrap_err();
    assert!(e.message.contains("--set gemm.dtype=fp64"), "{e}");
}

#[test]
fn list_valued_param_is_not_an_axis_and_measure_override() {
    let s = parse("[[workload]]\nkind = \"gemm\"\nsize = 8\nmax_samples = 20\nmin_samples = 3\nrounds = 5\n")
        .unwrap();
    assert_eq!(s.workloads[0].cases[0].measure.rounds, 5);
    assert_eq!(s.workloads[0].cases[0].measure.max_samples, 20);
    assert_eq!(s.workloads[0].cases[0].id, "size=8");
    let e = parse("[[workload]]\nkind = \"gemm\"\nsize = 8\nmax_samples = 2\nmin_samples = 3\n").unwrap_err();
    assert!(e.message.contains("min_samples"), "{e}");
}

#[test]
fn targets_parse() {
    let s = parse(
        "[[target]]\nimage = \"repo/x:1\"\ngpus = [0, 1]\nenv = { A = \"1\" }\nulimits = { memlock = -1 }\n[[target]]\nlocal = true\ngpus = \"each\"\n[[workload]]\nkind = \"probe\"\n",
    )
    .unwrap();
    assert_eq!(s.targets.len(), 2);
    assert_eq!(s.targets[0].gpus, GpuSelection::List(vec![0, 1]));
    assert_eq!(s.targets[1].gpus, GpuSelection::Named(GpuNamed::Each));
    let e =
        parse("[[target]]\nimage = \"a\"\nprivileged = true\n[[workload]]\nkind = \"probe\"\n").unwrap_err();
    assert_eq!(e.line, 3, "{e}");
}

#[test]
fn shipped_suites_parse() {
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/suites")).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "toml") {
            Suite::load(&p, &[]).unwrap_or_else(|e| panic!("{e}"));
        }
    }
    Suite::parse(EMBEDDED_SMOKE, Path::new("smoke.toml"), &[]).unwrap();
}

#[test]
fn bad_byte_sizes_name_line_at_load() {
    let text = "[[target]]\nimage = \"x:1\"\nshm_size = \"lots\"\n\n[[workload]]\nkind = \"probe\"\n";
    let e = parse(text).unwrap_err();
    assert_eq!(e.line, 3, "{e}");
    assert!(e.message.contains("bad size `lots`"), "{e}");
    assert!(e.to_string().contains("suites/t.toml"), "{e}");
    let text = "[[target]]\nimage = \"x:1\"\nmemory = \"8q\"\n[[workload]]\nkind = \"probe\"\n";
    let e = parse(text).unwrap_err();
    assert_eq!(e.line, 3, "{e}");
    assert!(e.message.contains("bad size `8q`"), "{e}");
    let text =
        "[[target]]\nimage = \"x:1\"\nshm_size = \"1g\"\nmemory = 1024\n[[workload]]\nkind = \"probe\"\n";
    let t = &parse(text).unwrap().targets[0];
    assert_eq!(t.shm_size.as_ref().map(ByteSize::bytes), Some(1 << 30));
    assert_eq!(t.memory.as_ref().map(ByteSize::bytes), Some(1024));
}

#[test]
fn adaptive_rounds_keys() {
    let s = parse("[defaults]\nmin_rounds = 4\nmax_rounds = 12\nmax_run_time = \"30m\"\n[[workload]]\nkind = \"gemm\"\nsize = 8\n\n[[workload]]\nkind = \"gemm\"\nname = \"fixed\"\nsize = 8\nrounds = 3\n").unwrap();
    let (a, f) = (&s.workloads[0].cases[0].measure, &s.workloads[1].cases[0].measure);
    assert_eq!((a.rounds, a.max_rounds), (4, 12));
    assert_eq!((f.rounds, f.max_rounds), (3, 3));
    assert_eq!(s.max_run_time_s, Some(1800.0));
    // Defaults: 5 first, up to 20; no time budget.
    let d = parse("[[workload]]\nkind = \"gemm\"\nsize = 8\n").unwrap();
    assert_eq!(
        (d.defaults.rounds, d.defaults.max_rounds, d.max_run_time_s),
        (5, 20, None)
    );
    assert_eq!(
        parse("[defaults]\nmax_run_time = 90\n[[workload]]\nkind = \"probe\"\n")
            .unwrap()
            .max_run_time_s,
        Some(90.0)
    );
}

#[test]
fn adaptive_rounds_errors_name_the_line() {
    let e =
        parse("name = \"x\"\n[defaults]\nmin_rounds = 8\nmax_rounds = 4\n[[workload]]\nkind = \"probe\"\n")
            .unwrap_err();
    assert_eq!(e.line, 4, "{e}");
    assert!(
        e.message
            .contains("`max_rounds` (4) must be between `min_rounds` (8)"),
        "{e}"
    );
    let e = parse("[defaults]\nrounds = 5\nmax_rounds = 9\n[[workload]]\nkind = \"probe\"\n").unwrap_err();
    assert!(e.message.contains("either `rounds`"), "{e}");
    let e = parse("[defaults]\nwarmup_s = 0.1\nmax_run_time = \"soon\"\n[[workload]]\nkind = \"probe\"\n")
        .unwrap_err();
    assert_eq!(e.line, 3, "{e}");
    assert!(e.message.contains("max_run_time"), "{e}");
    let e = parse("[[workload]]\nkind = \"gemm\"\nsize = 8\nmax_run_time = 5\n").unwrap_err();
    assert!(e.message.contains("max_run_time"), "{e}");
    let e = parse("[[workload]]\nkind = \"gemm\"\nsize = 8\nmin_rounds = 30\nmax_rounds = 10\n").unwrap_err();
    assert!(e.message.contains("workload `gemm`"), "{e}");
}

/// A check across keys names the line of the key it is about, not its table's header.
#[test]
fn a_checked_key_is_named_at_its_own_line() {
    let e = parse("name = \"t\"\n\n[[workload]]\nkind = \"gemm\"\nname = \"g\"\n\n# many lines below the header\nsize = 64\nmin_samples = 50\nmax_samples = 10\n")
        .unwrap_err();
    assert_eq!(e.line, 9, "{e}");
    assert!(
        e.to_string()
            .contains("line 9: workload `g`: need 1 <= min_samples (50) <= max_samples (10)"),
        "{e}"
    );
    let e = parse(
        "name = \"t\"\n[[target]]\nimage = \"a:b\"\n\n# c\nipc = \"bogus\"\n[[workload]]\nkind = \"probe\"\n",
    )
    .unwrap_err();
    assert_eq!(e.line, 6, "{e}");
    let e =
        parse("name = \"t\"\n[slurm]\npartition = \"a\"\n\n# c\nnodes = 0\n[[workload]]\nkind = \"probe\"\n")
            .unwrap_err();
    assert_eq!(e.line, 6, "{e}");
    let e =
        parse("name = \"t\"\n[defaults]\nmax_time_s = 1\n\nwarmup_s = -1\n[[workload]]\nkind = \"probe\"\n")
            .unwrap_err();
    assert_eq!(e.line, 5, "{e}");
    let e = parse("name = \"t\"\n[[workload]]\nkind = \"gemm\"\nsize = 64\n\n# c\nfast_accum = true\n")
        .unwrap_err();
    assert_eq!(e.line, 7, "{e}");
}

#[test]
fn pairing_key() {
    let workload = "[[workload]]\nkind = \"probe\"\n";
    assert_eq!(parse(workload).unwrap().pairing, Pairing::Batches);
    for (text, want) in [
        ("case", Pairing::Case),
        ("round", Pairing::Round),
        ("batches", Pairing::Batches),
    ] {
        let s = parse(&format!("[defaults]\npairing = \"{text}\"\n{workload}")).unwrap();
        assert_eq!(s.pairing, want);
        assert_eq!(want.as_str(), text);
    }
    let e = parse(&format!(
        "name = \"x\"\n[defaults]\nwarmup_s = 0.1\npairing = \"pairs\"\n{workload}"
    ))
    .unwrap_err();
    assert_eq!(e.line, 4, "{e}");
    assert!(
        e.message
            .contains("`pairs` is not one of \"batches\", \"case\", \"round\""),
        "{e}"
    );
    let e = parse(&format!("[defaults]\npairing = 1\n{workload}")).unwrap_err();
    assert!(e.message.contains("key `pairing` must be a string"), "{e}");
}
