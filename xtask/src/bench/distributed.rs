//! The bench's distributed section: the bench pipeline's train stage, forced, on its cached
//! token ids, with one process and with two CPU ranks (Gloo over 127.0.0.1, splitting this
//! machine's cores between them), [`STEPS`] optimizer steps each at the same global batch: training samples/s (the summary's: global samples over the training loop's seconds)
//! and the stage's wall seconds (start-up, rendezvous and the final validation included). On a
//! machine with few cores little gain is expected; the rows measure what the wiring costs there.

use std::path::Path;

use anyhow::Context as _;
use pipeline::Stage;

use super::{Plan, Row, Runs};

/// Optimizer steps per run: enough that start-up is a small part of the loop's seconds.
const STEPS: u64 = 40;

pub(super) fn rows(plan: &Plan, bench: &pipeline::Pipeline, bins: &Path) -> anyhow::Result<Vec<Row>> {
    eprintln!("== distributed: the train stage with 1 process and with 2 CPU ranks, {} steps at batch {} ({} runs each)", STEPS, plan.batch, plan.repeats);
    let mut p = bench.clone();
    let train = p.stages.iter_mut().find(|s| s.stage == Stage::Train).context("the bench pipeline has no train section")?;
    let params = train.params.as_object_mut().context("train's parameters are not a map")?;
    params.insert("max_steps".into(), STEPS.into());
    params.insert("batch_size".into(), plan.batch.into());
    params.insert("device".into(), "cpu".into());
    params.insert("precision".into(), "fp32".into());
    let (mut sps, mut wall) = ([Runs::default(), Runs::default()], [Runs::default(), Runs::default()]);
    for _ in 0..plan.repeats {
        for (i, ranks) in [1usize, 2].into_iter().enumerate() {
            let opts = runner::RunOptions {
                only: Some(Stage::Train),
                force: vec![Stage::Train],
                bin_dir: bins.to_path_buf(),
                store: Some(plan.out.join("store")),
                nproc_per_node: ranks,
                ..Default::default()
            };
            let o = runner::run(&p, &opts, |o| eprintln!("  {} with {ranks} rank(s) {:.1} s", o.stage, o.seconds))?;
            let art = super::artifact_of(&o, Stage::Train)?;
            let s: pipeline::files::TrainSummary = pipeline::files::read(&art.join("summary.json"))?;
            sps[i].0.push(s.samples_per_second);
            wall[i].0.push(super::seconds_of(&o, Stage::Train));
        }
    }
    let [one_sps, two_sps] = sps;
    let [one_wall, two_wall] = wall;
    let section = "distributed";
    Ok(vec![
        Row {
            section,
            figure: format!("training samples/s, {STEPS} steps at global batch {}: 2 CPU ranks (Gloo) vs 1 process", plan.batch),
            unit: "samples/s",
            ours: two_sps,
            reference_name: "one process".into(),
            reference: one_sps,
            higher_is_better: true,
            target: String::new(),
        },
        Row {
            section,
            figure: "train stage wall seconds (start-up, rendezvous, validation): 2 CPU ranks vs 1 process".into(),
            unit: "s",
            ours: two_wall,
            reference_name: "one process".into(),
            reference: one_wall,
            higher_is_better: false,
            target: String::new(),
        },
    ])
}
