//! The synthetic weights as a converter input ([`TensorSource`]), generated on demand instead of read from
//! safetensors files: `synth --gguf-only` writes the GGUF directly, with bounded memory (one chunk at a time).
//!
//! The values are exactly what the safetensors path stores and the converter reads back: the same per-tensor
//! streams, rounded to bf16 when the dtype is bf16, listed in the order `Checkpoint::open` would list the files
//! `synth` writes (shards by name, tensors by name within each shard).

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::{SynthDtype, SynthTensor, ValueStream};
use crate::convert::{ConvertError, Dtype, SourceTensor, TensorSource};

/// Generated tensors standing in for a checkpoint's safetensors files.
pub struct SynthSource {
    /// The file each tensor would be in (named in errors).
    files: Vec<PathBuf>,
    tensors: Vec<SourceTensor>,
    gens: Vec<SynthTensor>,
    by_name: HashMap<String, usize>,
    seed: u64,
    dtype: SynthDtype,
    /// The stream last read from: the converter reads each tensor front to back, so a read usually continues it.
    cursor: RefCell<Option<(usize, ValueStreamOwned)>>,
}

/// A [`ValueStream`] over a tensor owned by the source (by index, to avoid a self-borrow).
struct ValueStreamOwned {
    rng: super::Rng,
    pos: u64,
}

impl SynthSource {
    /// `shards`: (would-be file path, tensors sorted by name) in file-name order.
    pub(super) fn new(shards: Vec<(PathBuf, Vec<SynthTensor>)>, seed: u64, dtype: SynthDtype) -> SynthSource {
        let mut files = vec![];
        let mut tensors = vec![];
        let mut gens = vec![];
        for (file, (path, shard)) in shards.into_iter().enumerate() {
            files.push(path);
            for t in shard {
                tensors.push(SourceTensor {
                    name: t.name.clone(),
                    dtype: match dtype {
                        SynthDtype::Bf16 => Dtype::Bf16,
                        SynthDtype::F32 => Dtype::F32,
                    },
                    shape: t.shape.clone(),
                    file,
                    // No file behind it; the offset is never used.
                    start: 0,
                });
                gens.push(t);
            }
        }
        let by_name = tensors.iter().enumerate().map(|(i, t)| (t.name.clone(), i)).collect();
        SynthSource {
            files,
            tensors,
            gens,
            by_name,
            seed,
            dtype,
            cursor: RefCell::new(None),
        }
    }

    /// Total elements of all tensors.
    pub fn n_elements(&self) -> u64 {
        self.gens.iter().map(SynthTensor::n_elements).sum()
    }
}

impl TensorSource for SynthSource {
    fn tensors(&self) -> &[SourceTensor] {
        &self.tensors
    }

    fn origin(&self, t: &SourceTensor) -> &Path {
        &self.files[t.file]
    }

    fn read_rows_f32(
        &self,
        t: &SourceTensor,
        row: u64,
        n_rows: u64,
        row_len: u64,
        _raw: &mut Vec<u8>,
        out: &mut Vec<f32>,
    ) -> Result<(), ConvertError> {
        let Some(&i) = self.by_name.get(&t.name) else {
            return Err(ConvertError::MissingTensor { tensor: t.name.clone() });
        };
        let g = &self.gens[i];
        let start = row * row_len;
        let n = n_rows * row_len;
        if start + n > g.n_elements() {
            return Err(ConvertError::ShapeMismatch {
                tensor: t.name.clone(),
                expected: g.shape.clone(),
                got: vec![row + n_rows, row_len],
            });
        }
        let mut cur = self.cursor.borrow_mut();
        let mut s = match cur.take() {
            Some((j, st)) if j == i && st.pos <= start => ValueStream {
                t: g,
                rng: st.rng,
                pos: st.pos,
            },
            _ => g.stream(self.seed),
        };
        s.skip(start - s.pos);
        s.fill(n as usize, out);
        if self.dtype == SynthDtype::Bf16 {
            // What the safetensors path stores and reads back: round to bf16, widen exactly.
            for x in out.iter_mut() {
                *x = half::bf16::from_f32(*x).to_f32();
            }
        }
        *cur = Some((i, ValueStreamOwned { rng: s.rng, pos: s.pos }));
        Ok(())
    }
}
