//! AdamW (PyTorch's algorithm) with state we own so checkpoints can hold it, the linear
//! warmup/decay schedule of HF's `get_linear_schedule_with_warmup`, and gradient clipping.

use tch::{Kind, Tensor};

pub struct AdamW {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Optimizer steps taken.
    pub step: u64,
    /// First and second moments, laid out like the parameters' flat buffer.
    pub m: Tensor,
    pub v: Tensor,
}

impl AdamW {
    pub fn new(params: &model::Params, weight_decay: f64) -> AdamW {
        let m = params.flat().zeros_like().detach();
        let v = params.flat().zeros_like().detach();
        AdamW { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay, step: 0, m, v }
    }

    /// One update with learning rate `lr` from the gradients in `params`, after clipping their
    /// global L2 norm to `max_grad_norm` (0: no clipping). Returns the norm before clipping as a
    /// device scalar (no host sync). Everything runs on the flat buffers: a dozen kernels.
    pub fn step(&mut self, params: &model::Params, lr: f64, max_grad_norm: f64) -> Tensor {
        self.step += 1;
        let t = self.step as i32;
        let bc1 = 1.0 - self.beta1.powi(t);
        let bc2 = 1.0 - self.beta2.powi(t);
        tch::no_grad(|| {
            let mut g = params.flat_grad();
            let norm = g.norm();
            if max_grad_norm > 0.0 {
                let coef = (max_grad_norm / (&norm + 1e-6)).clamp_max(1.0);
                let _ = g.g_mul_(&coef);
            }
            let mut p = params.flat().shallow_clone();
            if self.weight_decay != 0.0 && params.n_decay() > 0 {
                let _ = p.narrow(0, 0, params.n_decay()).g_mul_scalar_(1.0 - lr * self.weight_decay);
            }
            // As torch's AdamW: m = lerp(m, g, 1-b1); v = lerp(v, g^2, 1-b2);
            // p -= lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps).
            let _ = self.m.lerp_(&g, 1.0 - self.beta1);
            let _ = self.v.lerp_(&g.square(), 1.0 - self.beta2);
            let mut d = self.v.sqrt();
            let _ = d.g_div_scalar_(bc2.sqrt());
            let _ = d.g_add_scalar_(self.eps);
            let _ = d.reciprocal_();
            let _ = d.g_mul_(&self.m);
            let _ = d.g_mul_scalar_(lr / bc1);
            let _ = p.g_sub_(&d);
            norm
        })
    }

    /// State tensors under names for a checkpoint (`m.<param>`, `v.<param>`).
    pub fn named_state(&self, params: &model::Params) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (i, n) in params.names.iter().enumerate() {
            out.push((format!("m.{n}"), params.view_of(&self.m, i).to_device(tch::Device::Cpu)));
            out.push((format!("v.{n}"), params.view_of(&self.v, i).to_device(tch::Device::Cpu)));
        }
        out
    }

    /// Restores state saved by [`AdamW::named_state`].
    pub fn load_state(&mut self, params: &model::Params, named: Vec<(String, Tensor)>, step: u64) -> anyhow::Result<()> {
        let map: std::collections::HashMap<String, Tensor> = named.into_iter().collect();
        tch::no_grad(|| -> anyhow::Result<()> {
            for (i, n) in params.names.iter().enumerate() {
                for (prefix, buf) in [("m", &self.m), ("v", &self.v)] {
                    let src = map.get(&format!("{prefix}.{n}")).ok_or_else(|| anyhow::anyhow!("checkpoint lacks optimizer state {prefix}.{n}"))?;
                    let mut dst = params.view_of(buf, i);
                    dst.copy_(&src.to_kind(Kind::Float));
                }
            }
            Ok(())
        })?;
        self.step = step;
        Ok(())
    }
}

/// Learning-rate multiplier for optimizer step `step` (0-based), as HF's linear schedule.
pub fn lr_lambda(step: u64, warmup: u64, total: u64) -> f64 {
    if step < warmup {
        return step as f64 / warmup.max(1) as f64;
    }
    let rest = total.saturating_sub(step) as f64 / total.saturating_sub(warmup).max(1) as f64;
    rest.max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_matches_hf_linear() {
        assert_eq!(lr_lambda(0, 10, 100), 0.0);
        assert_eq!(lr_lambda(5, 10, 100), 0.5);
        assert_eq!(lr_lambda(10, 10, 100), 1.0);
        assert_eq!(lr_lambda(55, 10, 100), 0.5);
        assert_eq!(lr_lambda(100, 10, 100), 0.0);
        assert_eq!(lr_lambda(0, 0, 4), 1.0);
        assert_eq!(lr_lambda(3, 0, 4), 0.25);
    }

    #[test]
    fn adamw_matches_pytorch_first_steps() {
        // One scalar parameter p=1, grad 0.5 twice, lr 0.1, wd 0.01 (decayed). By hand, as
        // torch.optim.AdamW computes it.
        let mut c = model::BertConfig::tiny(16);
        c.num_hidden_layers = 0;
        let params = model::Params::init(&c, 2, tch::Device::Cpu, 0);
        let mut opt = AdamW::new(&params, 0.01);
        let w = params.get("classifier.weight").shallow_clone();
        let before = f64::try_from(w.get(0).get(0)).unwrap();
        for _ in 0..2 {
            params.zero_grad();
            let loss = (params.get("classifier.weight").get(0).get(0) * 0.5).sum(Kind::Float);
            loss.backward();
            let _ = opt.step(&params, 0.1, 0.0);
        }
        // Step 1: p1 = p0(1-0.001) - 0.1 * (0.05/0.1) / (sqrt(0.00025/0.001)/... ) -> Adam's first
        // steps move by ~lr regardless of gradient scale.
        let mut p = before;
        let (mut m, mut v) = (0.0f64, 0.0f64);
        for t in 1..=2 {
            p *= 1.0 - 0.1 * 0.01;
            m = 0.9 * m + 0.1 * 0.5;
            v = 0.999 * v + 0.001 * 0.25;
            let mh = m / (1.0 - 0.9f64.powi(t));
            let vh = (v / (1.0 - 0.999f64.powi(t))).sqrt() + 1e-8;
            p -= 0.1 * mh / vh;
        }
        let after = f64::try_from(w.get(0).get(0)).unwrap();
        assert!((after - p).abs() < 1e-6, "{after} vs {p}");
    }
}
