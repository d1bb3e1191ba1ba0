//! HF → GGUF conversion for SmallThinker, producing what llama.cpp's converter (+ llama-quantize for Q4_0)
//! writes: the same metadata keys and values, tensor names, shapes, types and bytes.
//!
//! Streaming with bounded memory: the plan (tensor table) comes from the safetensors headers alone; then each
//! GGUF tensor is produced chunk by chunk (at most `CHUNK_ELEMS` source elements at a time, experts one after
//! another for the stacked `ffn_*_exps`) and streamed into the GGUF writer.

mod config;
mod error;
mod metadata;
mod names;
mod safetensors;
mod tokenizer;
mod types;

use std::io::Write;
use std::path::PathBuf;

pub use config::HfConfig;
pub use error::ConvertError;
pub use names::{plan, Kind, Planned};
pub use safetensors::{Checkpoint, Dtype, SourceTensor, TensorSource};
pub use tokenizer::TokenizerMeta;
pub use types::{tensor_type, OutType};

use crate::quant;

use crate::gguf::{self, GgmlType};

/// Source elements converted per step: 16 Mi f32 = 64 MiB of f32, whatever the tensor size.
const CHUNK_ELEMS: u64 = 16 << 20;

/// What to convert.
#[derive(Clone, Debug)]
pub struct ConvertParams {
    /// The HF model directory.
    pub input: PathBuf,
    pub output: PathBuf,
    pub out_type: OutType,
    /// Quantization threads (0 = all cores).
    pub n_threads: usize,
}

/// Progress notifications, for a progress bar.
#[derive(Clone, Debug)]
pub enum Progress<'a> {
    /// Conversion starts: this many output tensors, this many output data bytes.
    Start { n_tensors: usize, total_bytes: u64 },
    /// A tensor starts.
    Tensor {
        index: usize,
        name: &'a str,
        ty: GgmlType,
        bytes: u64,
    },
    /// This many more output bytes were written.
    Bytes(u64),
}

/// What was written.
#[derive(Clone, Debug)]
pub struct ConvertReport {
    pub n_tensors: usize,
    pub data_bytes: u64,
    /// (GGUF name, type) in file order.
    pub tensors: Vec<(String, GgmlType)>,
}

/// One GGUF tensor to write: the plan entry and its output type.
struct Job {
    planned: Planned,
    ty: GgmlType,
}

/// Converts `p.input` into `p.output`. On error no output file is left behind.
pub fn convert(p: &ConvertParams, progress: &mut dyn FnMut(Progress)) -> Result<ConvertReport, ConvertError> {
    run(p, None, progress)
}

/// [`convert`] with the weights taken from `ck` instead of `p.input`'s safetensors files (config, tokenizer and
/// generation config still come from `p.input`).
pub fn convert_from(
    p: &ConvertParams,
    ck: &dyn TensorSource,
    progress: &mut dyn FnMut(Progress),
) -> Result<ConvertReport, ConvertError> {
    run(p, Some(ck), progress)
}

/// The conversion; `source` None opens `p.input`'s safetensors after config and tokenizer (so that their errors
/// come first).
fn run(
    p: &ConvertParams,
    source: Option<&dyn TensorSource>,
    progress: &mut dyn FnMut(Progress),
) -> Result<ConvertReport, ConvertError> {
    let cfg = HfConfig::load(&p.input.join("config.json"))?;
    let tok = TokenizerMeta::load(&p.input, &cfg)?;
    let opened;
    let ck: &dyn TensorSource = match source {
        Some(s) => s,
        None => {
            opened = Checkpoint::open(&p.input)?;
            &opened
        }
    };
    let planned = plan(ck, &cfg)?;
    let has_output = planned.iter().any(|t| t.kind == Kind::Output);
    let mut jobs: Vec<Job> = planned
        .into_iter()
        .map(|planned| {
            let ty = tensor_type(p.out_type, planned.kind, &planned.dims, has_output);
            Job { planned, ty }
        })
        .collect();
    let quantized = matches!(p.out_type, OutType::Q4_0 | OutType::Q4_0Pure);
    if quantized {
        // llama-quantize writes tensors in its loader's map order: layer (-1 outside blocks), then name.
        jobs.sort_by(|a, b| quantize_order(&a.planned.name).cmp(&quantize_order(&b.planned.name)));
    }

    let mut w = gguf::GgufWriter::new();
    let n_params: u64 = jobs.iter().map(|j| j.planned.dims.iter().product::<u64>()).sum();
    let mut kvs = metadata::kvs(
        &p.input,
        &cfg,
        &tok,
        p.out_type,
        &metadata::ParamCounts::of(&jobs_view(&jobs), n_params),
    );
    if quantized {
        // llama-quantize copies the KV pairs and then sets these two, which moves them to the end.
        for key in ["general.quantization_version", "general.file_type"] {
            if let Some(i) = kvs.iter().position(|(k, _)| k == key) {
                let kv = kvs.remove(i);
                kvs.push(kv);
            }
        }
    }
    for (k, v) in kvs {
        w.add_kv(&k, v);
    }
    for j in &jobs {
        w.add_tensor(&j.planned.name, &j.planned.dims, j.ty)
            .map_err(|source| ConvertError::Write {
                path: p.output.clone(),
                source,
            })?;
    }
    let total: u64 = jobs
        .iter()
        .map(|j| j.ty.tensor_bytes(&j.planned.dims).unwrap_or(0))
        .sum();
    progress(Progress::Start {
        n_tensors: jobs.len(),
        total_bytes: total,
    });
    let n_threads = match p.n_threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let mut bufs = Buffers::default();
    let r = w.write(&p.output, |i, info, out: &mut dyn Write| {
        let j = &jobs[i];
        progress(Progress::Tensor {
            index: i,
            name: &j.planned.name,
            ty: j.ty,
            bytes: info.size,
        });
        write_tensor(ck, j, n_threads, &mut bufs, out, &p.output, progress)
    });
    match r {
        Ok(()) => {}
        Err(gguf::WriteError::Data { error, .. }) => return Err(error),
        Err(gguf::WriteError::Gguf(source)) => {
            return Err(ConvertError::Write {
                path: p.output.clone(),
                source,
            })
        }
        Err(gguf::WriteError::SizeMismatch {
            tensor,
            expected,
            written,
        }) => {
            return Err(ConvertError::WrongSize {
                tensor,
                expected,
                written,
            })
        }
    }
    Ok(ConvertReport {
        n_tensors: jobs.len(),
        data_bytes: total,
        tensors: jobs.iter().map(|j| (j.planned.name.clone(), j.ty)).collect(),
    })
}

/// llama-model-loader's `weight_name_comparer` key.
fn quantize_order(name: &str) -> (i64, &str) {
    let layer = name
        .strip_prefix("blk.")
        .and_then(|r| r.split('.').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(-1);
    (layer, name)
}

fn jobs_view(jobs: &[Job]) -> Vec<(&str, &[u64])> {
    jobs.iter()
        .map(|j| (j.planned.name.as_str(), j.planned.dims.as_slice()))
        .collect()
}

/// Reused scratch buffers (one chunk each).
#[derive(Default)]
struct Buffers {
    raw: Vec<u8>,
    f32s: Vec<f32>,
    out: Vec<u8>,
}

/// Streams one GGUF tensor: every source (one per expert when stacked) in row chunks, converted to `j.ty`.
fn write_tensor(
    ck: &dyn TensorSource,
    j: &Job,
    n_threads: usize,
    b: &mut Buffers,
    out: &mut dyn Write,
    out_path: &std::path::Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<(), ConvertError> {
    let row_len = j.planned.dims[0];
    let row_bytes = j.ty.row_bytes(row_len).expect("type chosen to fit the row length") as usize;
    for &si in &j.planned.sources {
        let t = &ck.tensors()[si];
        let n_rows = t.n_elements() / row_len;
        let step = (CHUNK_ELEMS / row_len).max(1);
        let mut row = 0;
        while row < n_rows {
            let n = step.min(n_rows - row);
            ck.read_rows_f32(t, row, n, row_len, &mut b.raw, &mut b.f32s)?;
            let bytes: &[u8] = if j.ty == GgmlType::F32 {
                b.out.clear();
                b.out.extend(b.f32s.iter().flat_map(|x| x.to_le_bytes()));
                &b.out
            } else {
                b.out.resize(n as usize * row_bytes, 0);
                quant::quantize_parallel(j.ty, &b.f32s, row_len as usize, &mut b.out, n_threads).map_err(|source| {
                    ConvertError::Quantize {
                        tensor: j.planned.name.clone(),
                        source,
                    }
                })?;
                &b.out
            };
            out.write_all(bytes).map_err(ConvertError::io(out_path))?;
            progress(Progress::Bytes(bytes.len() as u64));
            row += n;
        }
    }
    Ok(())
}
