//! Where a tensor's storage lives: the CPU or a CUDA GPU.
use std::sync::OnceLock;

/// A compute device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Device {
    #[default]
    Cpu,
    /// A CUDA GPU by ordinal.
    Cuda(usize),
}

impl Device {
    /// The best available device: the first CUDA GPU when one can be used, else the CPU.
    /// `FLAMINGO_DEVICE=cpu|cuda|cuda:N|auto` overrides. When CUDA was asked for (or would have
    /// been picked) but cannot be used, one line on stderr says why, once per process.
    pub fn best() -> Device {
        let asked = std::env::var("FLAMINGO_DEVICE").unwrap_or_else(|_| "auto".into());
        Device::resolve(&asked).unwrap_or_else(|e| {
            warn_once(&format!("flamingo: FLAMINGO_DEVICE={asked}: {e}; using the CPU"));
            Device::Cpu
        })
    }

    /// Parses `cpu`, `cuda`, `cuda:N` or `auto` and checks the device can be used. `auto` picks
    /// CUDA when usable and otherwise the CPU (saying why once). Errors name the reason.
    pub fn resolve(s: &str) -> Result<Device, String> {
        match s.trim() {
            "cpu" => Ok(Device::Cpu),
            "auto" | "" => match crate::cuda::probe() {
                Ok(_) => Ok(Device::Cuda(0)),
                Err(e) => {
                    warn_once(&format!("flamingo: no usable CUDA device ({e}); running on the CPU"));
                    Ok(Device::Cpu)
                }
            },
            other => {
                let ordinal = match other {
                    "cuda" => 0,
                    o => o
                        .strip_prefix("cuda:")
                        .and_then(|n| n.parse::<usize>().ok())
                        .ok_or_else(|| format!("unknown device `{o}` (expected cpu, cuda, cuda:N or auto)"))?,
                };
                let gpus = crate::cuda::probe().map_err(|e| format!("CUDA is not usable: {e}"))?;
                if ordinal >= gpus.len() {
                    return Err(format!("cuda:{ordinal} does not exist ({} CUDA device(s) visible)", gpus.len()));
                }
                Ok(Device::Cuda(ordinal))
            }
        }
    }

    pub fn is_cuda(self) -> bool {
        matches!(self, Device::Cuda(_))
    }
}

/// Prints `msg` on stderr the first time only.
fn warn_once(msg: &str) {
    static SAID: OnceLock<()> = OnceLock::new();
    SAID.get_or_init(|| eprintln!("{msg}"));
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}
