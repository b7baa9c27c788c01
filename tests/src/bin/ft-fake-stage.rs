//! A test stage executable: speaks the real stage command line and publishes through the real
//! artifact store, but its "work" is writing a description of its parameters and inputs. Tests
//! link it as `ft-download`, `ft-tokenize`, ... and steer it with `KEY=VALUE` lines in the file
//! `fake.env` beside the store (one per test, so parallel tests do not interfere):
//!
//! * `FAKE_CODE_VERSION_<STAGE>`: its code version (default `1`);
//! * `FAKE_CONSTANT_<STAGE>=1`: write output that ignores parameters and inputs;
//! * `FAKE_CRASH_<STAGE>=1`: write half a file, then abort (as a `kill -9` mid-write would);
//! * `FAKE_FAIL_<STAGE>=CODE`: print an error and exit with CODE before writing;
//! * `FAKE_SLEEP_MS`: sleep while writing (for concurrency tests);
//! * `FAKE_LOG=FILE`: append `<stage>` to FILE each time the stage really runs;
//! * `FAKE_CALLS=FILE`: append `<stage>` to FILE each time the binary starts (any mode);
//! * `FAKE_FILE_INPUT_<STAGE>=PATH`: key on PATH's bytes too, as download does with local files;
//! * `FAKE_RUNTIME_FILE_<STAGE>=PATH`: a file "loaded at run time" (as train loads libtorch):
//!   its bytes enter the key as a run-time fact and the runner's memo re-checks it;
//! * `FAKE_SPLITS=a,b`: the splits the download stage's `dataset/info.json` lists (default
//!   train,validation,test; classes `neg`, `pos`).

use std::collections::BTreeMap;
use std::io::Write;

use clap::Parser;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: artifact::StageArgs,
}

type Controls = BTreeMap<String, String>;

fn controls(store: &std::path::Path) -> Controls {
    let path = store.parent().unwrap_or(store).join("fake.env");
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, v)| (k.trim().to_string(), v.trim().to_string())))
        .collect()
}

fn main() -> anyhow::Result<()> {
    let argv0 = std::env::args().next().unwrap_or_default();
    let file = std::path::Path::new(&argv0).file_name().and_then(|f| f.to_str()).unwrap_or_default().to_string();
    let stage_name = file.strip_prefix("ft-").unwrap_or(&file).to_string();
    let stage = pipeline::Stage::parse(&stage_name).ok_or_else(|| anyhow::anyhow!("link me as ft-<stage>, not {file}"))?;
    let cli = Cli::parse();
    let c = controls(&cli.args.store);
    let env = |name: &str, stage: &str| c.get(&format!("{name}_{}", stage.to_uppercase())).cloned();
    let params: serde_json::Value = pipeline::load_params(&cli.args.params)?;
    let mut def = artifact::StageDef::new(stage.name(), env("FAKE_CODE_VERSION", stage.name()).unwrap_or_else(|| "1".into()), env!("CARGO_PKG_VERSION"));
    if let Some(path) = env("FAKE_RUNTIME_FILE", stage.name()) {
        let path = std::path::PathBuf::from(path);
        let facts = [("runtime".to_string(), artifact::hash_file(&path)?.1)].into();
        def = def.with_runtime(artifact::Runtime { facts, files: vec![path] });
    }
    if let Some(log) = c.get("FAKE_CALLS") {
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
        writeln!(f, "{stage}")?;
    }
    let mut files = BTreeMap::new();
    if let Some(path) = env("FAKE_FILE_INPUT", stage.name()) {
        files.insert(format!("file:{path}"), artifact::hash_file(std::path::Path::new(&path))?.1);
    }
    let report = artifact::execute(&def, &cli.args, &params, files, |ctx| {
        if let Some(code) = env("FAKE_FAIL", stage.name()) {
            eprintln!("fake {stage}: failing on purpose");
            std::process::exit(code.parse().unwrap_or(1));
        }
        if let Ok(log) = c.get("FAKE_LOG").ok_or(()) {
            let mut f = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
            writeln!(f, "{stage}")?;
        }
        let text = if env("FAKE_CONSTANT", stage.name()).is_some() {
            format!("{stage}: constant\n")
        } else {
            let inputs: BTreeMap<&String, &String> =
                ctx.inputs.iter().map(|(n, a)| (n, &a.manifest.content_hash)).collect();
            format!("{stage} v{}: {params}\ninputs: {inputs:?}\n", def.code_version)
        };
        let path = ctx.out.join("out.txt");
        let mut f = std::fs::File::create(&path)?;
        let (a, b) = text.as_bytes().split_at(text.len() / 2);
        f.write_all(a)?;
        f.flush()?;
        if let Ok(ms) = c.get("FAKE_SLEEP_MS").ok_or(()) {
            std::thread::sleep(std::time::Duration::from_millis(ms.parse().unwrap_or(0)));
        }
        if env("FAKE_CRASH", stage.name()).is_some() {
            std::process::abort();
        }
        f.write_all(b)?;
        if stage == pipeline::Stage::Download {
            write_dataset_files(&ctx.out, c.get("FAKE_SPLITS").map(String::as_str).unwrap_or("train,validation,test"))?;
        }
        ctx.summary = serde_json::json!({"bytes": text.len()});
        Ok(())
    });
    artifact::exit(&cli.args, report)
}

/// The typed files a download artifact holds that the runner reads (splits and class names).
fn write_dataset_files(out: &std::path::Path, splits: &str) -> anyhow::Result<()> {
    use pipeline::files::{DatasetInfo, Labels, Origin, SplitInfo};
    let dir = out.join("dataset");
    std::fs::create_dir_all(&dir)?;
    let splits = splits.split(',').map(|s| (s.to_string(), SplitInfo { rows: 1, class_counts: vec![1, 0], scores: None })).collect();
    let info = DatasetInfo {
        task: pipeline::Task::SingleLabel,
        source: Origin::default(),
        splits,
        validation_carved: None,
        test_carved: None,
        columns: serde_json::from_str("{}")?,
        split_map: BTreeMap::new(),
    };
    pipeline::files::write(&dir.join("info.json"), &info)?;
    pipeline::files::write(&dir.join("labels.json"), &Labels { task: pipeline::Task::SingleLabel, names: vec!["neg".into(), "pos".into()] })?;
    Ok(())
}
