//! The faascale LLM engine: Hugging Face checkpoints (config, safetensors, tokenizer), the
//! `Stage` API over execution blocks with a per-stage KV cache, sampling, and generation.
//!
//! The engine knows nothing of networks or HTTP. A model is cut into execution blocks
//! (`blocks`); a `Stage` runs a range of them; an `Engine` chains stages on one node.

pub mod blocks;
pub mod chat;
pub mod config;
pub mod engine;
pub mod error;
pub mod gguf;
pub mod gpu;
pub mod kv;
pub mod model;
pub mod packed;
pub mod safetensors;
pub mod sampler;
pub mod sched;
pub mod stage;
pub mod synth;
pub mod tensor;
pub mod tokenizer;
pub mod weights;
pub mod wire;

pub use blocks::{BlockLayout, DEFAULT_NUM_BLOCKS};
pub use config::{Arch, ModelConfig, RopeScaling};
pub use engine::{Engine, FinishReason, GenRequest, GenResult};
pub use error::{PipelineError, Result};
pub use model::{Format, Model};
pub use sampler::{Sampler, SamplingParams};
pub use stage::{LogitsRows, Stage, StageBatch, StageInput, StageLimits, StageOutput};
