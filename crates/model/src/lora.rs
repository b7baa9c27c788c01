//! LoRA, as PEFT's `LoraConfig(task_type="SEQ_CLS")` gives it: a trainable low-rank update
//! `B·A·(alpha/r)` beside chosen linear layers of a frozen encoder, with the classification head
//! (and any other `modules_to_save`) trained in full.
//!
//! LoRA is a property of the layout, not of a family: [`crate::nn::Builder::linear`] asks the
//! [`Plan`] whether a layer is a target, and if so the layer carries an [`crate::nn::Adapter`]
//! whose `lora_A` / `lora_B` parameters are appended after every base parameter (so the base and
//! the head get the same initial values as a full fine-tune with the same seed). Every family
//! therefore takes LoRA with no code of its own beyond its default targets
//! ([`crate::Family::lora_targets`]).
//!
//! Names follow PEFT: `<module>.lora_A.weight` `(r, in)`, `<module>.lora_B.weight` `(out, r)`,
//! and an adapter file holds the trainable tensors under `base_model.model.<name>`. Targets
//! match a module path exactly or as its last dotted components (`query` matches
//! `bert.encoder.layer.0.attention.self.query`); `modules_to_save` entries match a module path
//! by suffix (`pooler` matches `bert.pooler`), as PEFT matches them.

use std::collections::BTreeSet;

use anyhow::bail;
use tch::{Kind, Tensor};

use crate::nn::{Init, Layout, Slot};
use crate::params::Params;

/// What a pipeline asks for (`train.lora`).
pub use pipeline::LoraParams as Spec;
/// What a LoRA layout came to: recorded in `hparams.json` and written to `adapter_config.json`.
pub use pipeline::files::Lora as Resolved;
use pipeline::{TargetModules, TargetRule};

/// PEFT's rule for `target_modules` entries.
fn is_target(module: &str, name: &str) -> bool {
    module == name || module.strip_suffix(name).is_some_and(|rest| rest.ends_with('.'))
}

/// The module path of a parameter name (`a.b.weight` → `a.b`).
fn module_of(param: &str) -> &str {
    param.rsplit_once('.').map_or(param, |(m, _)| m)
}

/// Each dotted prefix of a parameter's module path (`a`, `a.b`, `a.b.c`).
fn ancestors(param: &str) -> impl Iterator<Item = &str> {
    let module = module_of(param);
    module.match_indices('.').map(move |(i, _)| &module[..i]).chain(std::iter::once(module))
}

/// The LoRA side of a [`crate::nn::Builder`]: decides targets as layers are declared and adds
/// the adapters' parameters when the layout is finished.
#[derive(Clone, Debug)]
pub struct Plan {
    spec: Spec,
    targets: Vec<String>,
    /// (module path, in, out, weight index) of each adapted layer, in declaration order.
    pub(crate) pending: Vec<(String, i64, i64, usize)>,
    /// Every linear layer outside the head: (module path).
    encoder_linears: Vec<String>,
    head_linears: Vec<String>,
}

impl Plan {
    pub fn new(spec: &Spec, family_default: &[&str]) -> Plan {
        let targets = match &spec.target_modules {
            None => family_default.iter().map(|s| s.to_string()).collect(),
            Some(TargetModules::List(n)) => n.clone(),
            Some(TargetModules::Rule(TargetRule::AllLinear)) => Vec::new(),
        };
        Plan { spec: spec.clone(), targets, pending: Vec::new(), encoder_linears: Vec::new(), head_linears: Vec::new() }
    }

    /// Whether the linear layer `module` (declared in the head or not) gets an adapter; records
    /// it when it does. Returns the adapter's number.
    pub(crate) fn declare(&mut self, module: &str, inp: i64, out: i64, weight: usize, head: bool) -> Option<usize> {
        if head {
            self.head_linears.push(module.to_string());
            return None;
        }
        self.encoder_linears.push(module.to_string());
        let wanted = self.all_linear() || self.targets.iter().any(|t| is_target(module, t));
        wanted.then(|| {
            self.pending.push((module.to_string(), inp, out, weight));
            self.pending.len() - 1
        })
    }

    fn all_linear(&self) -> bool {
        self.spec.target_modules == Some(TargetModules::Rule(TargetRule::AllLinear))
    }

    /// Appends the adapters' parameters to `layout` and marks what trains; returns what was
    /// resolved. `base` is the encoder's attribute (`bert`), for naming head modules.
    pub(crate) fn finish(self, layout: &mut Layout, base: &str) -> anyhow::Result<Resolved> {
        let all_linear = self.all_linear();
        let Plan { spec, targets, pending, encoder_linears, head_linears } = self;
        if !all_linear {
            for t in &targets {
                if t.is_empty() || !encoder_linears.iter().any(|m| is_target(m, t)) {
                    let names: BTreeSet<&str> = encoder_linears.iter().map(|m| m.rsplit('.').next().unwrap_or(m)).collect();
                    bail!(
                        "train.lora.target_modules: `{t}` names no linear layer of the encoder; LoRA applies to linear layers such as {} (or `all-linear`; the head is trained in full)",
                        names.iter().take(12).map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
                    );
                }
            }
        }
        let modules_to_save = modules_to_save(&spec.modules_to_save, &layout.slots, base)?;
        let (r, scale) = (i64::from(spec.r), spec.alpha / f64::from(spec.r));
        let n_base = layout.slots.len();
        for (module, inp, out, weight) in &pending {
            let a = layout.slots.len();
            // PEFT: kaiming_uniform_(a=√5) on A, i.e. U(±1/√in); B zero, so training starts at the base.
            layout.slots.push(lora_slot(&format!("{module}.lora_A.weight"), &[r, *inp], Init::Uniform(1.0 / (*inp as f64).sqrt())));
            layout.slots.push(lora_slot(&format!("{module}.lora_B.weight"), &[*out, r], Init::Zeros));
            layout.adapters.push(crate::nn::Adapter { weight: *weight, a, b: a + 1, scale, dropout: spec.dropout });
        }
        let adapted: Vec<String> = pending.iter().map(|p| p.0.clone()).collect();
        // The adapters (appended after the base) train; of the base, the head and what is saved.
        for s in &mut layout.slots[..n_base] {
            s.trainable = s.head || saved(&s.name, &modules_to_save);
        }
        if let Some(s) = layout.slots.iter().find(|s| s.trainable && !s.head && adapted.iter().any(|m| module_of(&s.name) == m)) {
            bail!("train.lora: `{}` is both adapted (target_modules) and trained in full (modules_to_save); leave it out of one of them", module_of(&s.name));
        }
        // Names PEFT would match beyond what was adapted (a head layer): write the paths.
        let target_modules = if !all_linear && !head_linears.iter().any(|m| targets.iter().any(|n| is_target(m, n))) { targets } else { adapted.clone() };
        Ok(Resolved { r: spec.r, alpha: spec.alpha, dropout: spec.dropout, target_modules, modules_to_save, adapted })
    }
}

fn lora_slot(name: &str, shape: &[i64], init: Init) -> Slot {
    Slot { name: name.to_string(), shape: shape.to_vec(), init, linear: true, decay: true, head: false, trainable: true }
}

/// Whether parameter `name` lies in a module some `modules_to_save` entry matches.
fn saved(name: &str, modules: &[String]) -> bool {
    ancestors(name).any(|m| modules.iter().any(|s| m.ends_with(s.as_str())))
}

/// The head's top modules (`pooler`, `classifier`; `head`, `classifier`), then the extra modules
/// asked for, each of which must match a module.
fn modules_to_save(extra: &[String], slots: &[Slot], base: &str) -> anyhow::Result<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for s in slots.iter().filter(|s| s.head) {
        let local = s.name.strip_prefix(base).and_then(|r| r.strip_prefix('.')).unwrap_or(&s.name);
        let top = local.split('.').next().unwrap_or(local).to_string();
        if !out.contains(&top) {
            out.push(top);
        }
    }
    for m in extra {
        if m.is_empty() || !slots.iter().any(|s| ancestors(&s.name).any(|a| a.ends_with(m.as_str()))) {
            bail!("train.lora.modules_to_save: `{m}` names no module of the model (the head's modules, {}, are always trained in full)", out.join(", "));
        }
        if !out.contains(m) {
            out.push(m.clone());
        }
    }
    Ok(out)
}

impl Params {
    /// The weights with every adapter folded in (`W + scale·B·A`), under the base model's names
    /// and without the adapters' own tensors: a plain model, fp32, in host memory.
    pub fn merged(&self) -> Vec<(String, Tensor)> {
        tch::no_grad(|| {
            let mut delta: Vec<Option<Tensor>> = (0..self.len()).map(|_| None).collect();
            for a in self.adapters() {
                delta[a.weight] = Some(self.tensors[a.b].matmul(&self.tensors[a.a]) * a.scale);
            }
            let lora: BTreeSet<usize> = self.adapters().iter().flat_map(|a| [a.a, a.b]).collect();
            (0..self.len())
                .filter(|i| !lora.contains(i))
                .map(|i| {
                    let t = self.tensors[i].detach();
                    let t = match &delta[i] {
                        Some(d) => t + d,
                        None => t,
                    };
                    (self.names[i].clone(), crate::params::host_copy(&t, Kind::Float))
                })
                .collect()
        })
    }

    /// The trainable tensors under PEFT's adapter names (`base_model.model.<name>`), fp32, in
    /// host memory: what `adapter_model.safetensors` holds.
    pub fn peft_state(&self) -> Vec<(String, Tensor)> {
        self.host_copy_trainable(Kind::Float).into_iter().map(|(n, t)| (format!("base_model.model.{n}"), t)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_as_peft_matches_them() {
        assert!(is_target("bert.encoder.layer.0.attention.self.query", "query"));
        assert!(is_target("bert.encoder.layer.0.attention.self.query", "self.query"));
        assert!(is_target("classifier", "classifier"));
        assert!(!is_target("bert.encoder.layer.0.attention.self.query", "uery"));
        assert!(saved("bert.pooler.dense.weight", &["pooler".into()]));
        assert!(!saved("bert.encoder.layer.0.output.dense.weight", &["pooler".into()]));
        assert_eq!(ancestors("a.b.c.weight").collect::<Vec<_>>(), ["a", "a.b", "a.b.c"]);
    }
}
