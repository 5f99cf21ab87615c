//! Choosing the device a command runs on (`--device cuda|cpu`, default: cuda when a GPU is
//! found and the model runs there, else cpu) and building a whole-model GPU stage for it.

use super::{BlockBytes, GpuDevice, GpuStage, GpuStageLimits};
use crate::error::Result;
use crate::model::Model;
use crate::packed::PackedFile;
use std::path::Path;
use std::sync::Arc;

/// Where a command runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    /// `--device cuda`: the GPU or an error.
    Cuda,
    /// No `--device` and a GPU was found: the GPU when the model runs there, else the CPU.
    CudaIfSupported,
    Cpu,
}

/// Parses `--device` and, when it is absent, probes for a GPU (one log line either way).
pub fn pick_device(arg: Option<&str>) -> std::result::Result<Device, String> {
    match arg {
        Some("cuda") => Ok(Device::Cuda),
        Some("cpu") => Ok(Device::Cpu),
        Some(other) => Err(format!("--device {other}: expected cuda or cpu")),
        None => Ok(match ::gpu::probe_logged() {
            Ok(devs) if !devs.is_empty() => Device::CudaIfSupported,
            _ => Device::Cpu,
        }),
    }
}

/// Opens the model; for a packed file on a GPU path the file itself is kept too, so blocks are
/// uploaded in one piece each.
pub fn open_model(
    path: &Path,
    gguf_dtype: kernels::DType,
    device: Device,
) -> std::result::Result<(Model, Option<Arc<PackedFile>>), String> {
    if device != Device::Cpu && path.is_file() && crate::packed::is_packed_file(path) {
        let pf = Arc::new(PackedFile::open_header(path).map_err(|e| e.to_string())?);
        pf.mark_all_present().map_err(|e| e.to_string())?;
        let model = pf.clone().into_model().map_err(|e| e.to_string())?;
        return Ok((model, Some(pf)));
    }
    Ok((Model::open_with(path, gguf_dtype).map_err(|e| e.to_string())?, None))
}

/// A GPU stage running every block of `model` on device 0. With `required` false a model the GPU
/// path does not support, or a device that fails to open, gives `Ok(None)` and one log line.
pub fn whole_model_stage(
    model: &Model,
    packed: Option<&PackedFile>,
    num_blocks: usize,
    required: bool,
) -> std::result::Result<Option<GpuStage>, String> {
    whole_model_stage_with(model, packed, num_blocks, required, GpuStageLimits::for_config(&model.config).max_seqs)
}

/// As `whole_model_stage`, with room for `max_seqs` sequences in the KV cache (a server's
/// `--max-num-seqs`; the KV slots are preallocated, so this sets the stage's KV memory).
pub fn whole_model_stage_with(
    model: &Model,
    packed: Option<&PackedFile>,
    num_blocks: usize,
    required: bool,
    max_seqs: usize,
) -> std::result::Result<Option<GpuStage>, String> {
    let build = || -> Result<GpuStage> {
        let layout = crate::blocks::BlockLayout::new(model.config.num_hidden_layers, num_blocks)?;
        let limits = GpuStageLimits { max_seqs, ..GpuStageLimits::for_config(&model.config) };
        GpuStage::check(&model.config, model.weights.as_ref(), &layout, 0..num_blocks, &limits)?;
        let dev = GpuDevice::open(0)?;
        let bytes = packed.map(|p| p as &dyn BlockBytes);
        GpuStage::new(model.config.clone(), model.weights.as_ref(), bytes, layout, 0..num_blocks, &dev, limits)
    };
    match build() {
        Ok(s) => Ok(Some(s)),
        Err(e) if required => Err(format!("--device cuda: {e}")),
        Err(e) => {
            log::info!("gpu: {e}; using the CPU path");
            Ok(None)
        }
    }
}
