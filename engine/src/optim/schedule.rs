//! Learning-rate schedules: linear warm-up, then constant, cosine or linear decay.

/// What happens after warm-up.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decay {
    Constant,
    Cosine,
    Linear,
}

/// A multiplier of the base learning rate as a function of the step (0-based).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LrSchedule {
    pub warmup_steps: u64,
    pub total_steps: u64,
    pub decay: Decay,
    /// Final multiplier reached at `total_steps` by cosine/linear decay.
    pub min_factor: f64,
}

impl LrSchedule {
    pub fn constant_with_warmup(warmup_steps: u64) -> LrSchedule {
        LrSchedule { warmup_steps, total_steps: u64::MAX, decay: Decay::Constant, min_factor: 1.0 }
    }

    /// Warm-up: `step / warmup_steps` (HuggingFace convention, so step 0 has factor 0 when warming
    /// up); then 1 (constant), or a cosine / linear ramp from 1 to `min_factor` at `total_steps`.
    pub fn factor(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            return step as f64 / self.warmup_steps as f64;
        }
        let span = self.total_steps.saturating_sub(self.warmup_steps).max(1);
        let progress = ((step - self.warmup_steps) as f64 / span as f64).min(1.0);
        match self.decay {
            Decay::Constant => 1.0,
            Decay::Cosine => self.min_factor + (1.0 - self.min_factor) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
            Decay::Linear => 1.0 + (self.min_factor - 1.0) * progress,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine() {
        let s = LrSchedule { warmup_steps: 10, total_steps: 110, decay: Decay::Cosine, min_factor: 0.1 };
        assert_eq!(s.factor(0), 0.0);
        assert!((s.factor(5) - 0.5).abs() < 1e-12);
        assert!((s.factor(10) - 1.0).abs() < 1e-12);
        assert!((s.factor(60) - 0.55).abs() < 1e-12);
        assert!((s.factor(110) - 0.1).abs() < 1e-12);
        assert!((s.factor(1000) - 0.1).abs() < 1e-12);
        let l = LrSchedule { decay: Decay::Linear, ..s };
        assert!((l.factor(60) - 0.55).abs() < 1e-12);
    }
}
