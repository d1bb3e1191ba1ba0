//! Safetensors input: header parsing and validation, shard discovery through `model.safetensors.index.json`, and
//! bounded reads of tensor rows.
//!
//! Data is read with positioned reads (`pread`) into small buffers rather than memory-mapped: mapped pages of an
//! 8-43 GB checkpoint would count towards the process RSS, and mapping a file is the kind of FFI-boundary code
//! the crate keeps in `src/ggml/` (the only module allowed it; `lib.rs` denies it everywhere else).

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::error::ConvertError;

/// Header length cap: real headers are a few hundred kB; anything larger is corrupt.
const MAX_HEADER: u64 = 100 << 20;

/// Source element types the converter accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    Bf16,
    F16,
    F32,
}

impl Dtype {
    /// Bytes per element.
    pub fn size(self) -> u64 {
        match self {
            Dtype::Bf16 | Dtype::F16 => 2,
            Dtype::F32 => 4,
        }
    }
}

/// One tensor of one safetensors file.
#[derive(Clone, Debug)]
pub struct SourceTensor {
    pub name: String,
    pub dtype: Dtype,
    /// PyTorch order (`[out_features, in_features]`).
    pub shape: Vec<u64>,
    /// Index into `Checkpoint::files`.
    pub file: usize,
    /// Absolute byte offset of the data in the file.
    pub start: u64,
}

impl SourceTensor {
    /// Number of elements.
    pub fn n_elements(&self) -> u64 {
        self.shape.iter().product()
    }
}

/// Where the converter's source tensors come from: a checkpoint's safetensors files ([`Checkpoint`]), or a
/// generator that produces the same values without them (`synth --gguf-only`).
pub trait TensorSource {
    /// Every tensor, in llama.cpp's converter order (files sorted by name, tensors sorted by name within each).
    fn tensors(&self) -> &[SourceTensor];

    /// The file a tensor is attributed to in error messages.
    fn origin(&self, t: &SourceTensor) -> &Path;

    /// Reads `n_rows` rows of `row_len` elements starting at `row` of tensor `t` (flattened to 2-D) into `out`
    /// as f32 (`raw` is scratch for the stored bytes).
    fn read_rows_f32(
        &self,
        t: &SourceTensor,
        row: u64,
        n_rows: u64,
        row_len: u64,
        raw: &mut Vec<u8>,
        out: &mut Vec<f32>,
    ) -> Result<(), ConvertError>;
}

/// The safetensors files of a checkpoint, opened, with every tensor's location.
pub struct Checkpoint {
    pub files: Vec<(PathBuf, File)>,
    /// In llama.cpp's converter order: files sorted by name, tensors sorted by name within each file.
    pub tensors: Vec<SourceTensor>,
}

fn bad(path: &Path, why: impl Into<String>) -> ConvertError {
    ConvertError::BadSafetensors {
        path: path.into(),
        why: why.into(),
    }
}

/// Parses and validates one safetensors header; returns the tensors sorted by name.
pub fn read_header(path: &Path, file: &File, file_index: usize) -> Result<Vec<SourceTensor>, ConvertError> {
    let file_len = file.metadata().map_err(ConvertError::io(path))?.len();
    let mut len8 = [0u8; 8];
    file.read_exact_at(&mut len8, 0)
        .map_err(|_| bad(path, format!("file is {file_len} bytes, too short for a header")))?;
    let n = u64::from_le_bytes(len8);
    if n > MAX_HEADER || 8 + n > file_len {
        return Err(bad(
            path,
            format!("header length {n} does not fit in the {file_len}-byte file"),
        ));
    }
    let mut buf = vec![0u8; n as usize];
    file.read_exact_at(&mut buf, 8).map_err(ConvertError::io(path))?;
    let header: serde_json::Map<String, Value> =
        serde_json::from_slice(&buf).map_err(|e| bad(path, format!("header is not a JSON object: {e}")))?;
    let data_start = 8 + n;
    let data_len = file_len - data_start;
    let mut out = vec![];
    for (name, meta) in &header {
        if name == "__metadata__" {
            continue;
        }
        let field = |k: &str| meta.get(k).ok_or_else(|| bad(path, format!("tensor {name}: no {k}")));
        let dtype = match field("dtype")?.as_str() {
            Some("BF16") => Dtype::Bf16,
            Some("F16") => Dtype::F16,
            Some("F32") => Dtype::F32,
            Some(other) => {
                return Err(ConvertError::UnsupportedDtype {
                    path: path.into(),
                    tensor: name.clone(),
                    dtype: other.into(),
                })
            }
            None => return Err(bad(path, format!("tensor {name}: dtype is not a string"))),
        };
        let shape = field("shape")?
            .as_array()
            .and_then(|a| a.iter().map(Value::as_u64).collect::<Option<Vec<u64>>>())
            .ok_or_else(|| bad(path, format!("tensor {name}: shape is not a list of integers")))?;
        let offs = field("data_offsets")?
            .as_array()
            .and_then(|a| a.iter().map(Value::as_u64).collect::<Option<Vec<u64>>>())
            .filter(|o| o.len() == 2)
            .ok_or_else(|| bad(path, format!("tensor {name}: data_offsets is not [begin, end]")))?;
        let n_bytes = shape.iter().try_fold(dtype.size(), |a, &d| a.checked_mul(d));
        if offs[0] > offs[1] || offs[1] > data_len || n_bytes != Some(offs[1] - offs[0]) {
            return Err(bad(
                path,
                format!("tensor {name}: data_offsets {offs:?} do not fit shape {shape:?} in {data_len} data bytes"),
            ));
        }
        out.push(SourceTensor {
            name: name.clone(),
            dtype,
            shape,
            file: file_index,
            start: data_start + offs[0],
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

fn open(path: &Path) -> Result<File, ConvertError> {
    File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => ConvertError::MissingFile { path: path.into() },
        _ => ConvertError::Io {
            path: path.into(),
            source: e,
        },
    })
}

impl Checkpoint {
    /// Opens `model.safetensors.index.json` + its shards if the index exists, else every `model*.safetensors`.
    pub fn open(dir: &Path) -> Result<Checkpoint, ConvertError> {
        let index = dir.join("model.safetensors.index.json");
        let mut weight_map: Option<HashMap<String, String>> = None;
        let names: Vec<String> = if index.is_file() {
            let text = std::fs::read(&index).map_err(ConvertError::io(&index))?;
            let v: Value = serde_json::from_slice(&text).map_err(|source| ConvertError::Json {
                path: index.clone(),
                source,
            })?;
            let map = v
                .get("weight_map")
                .and_then(Value::as_object)
                .ok_or_else(|| ConvertError::BadKey {
                    path: index.clone(),
                    key: "weight_map".into(),
                    why: "missing or not an object".into(),
                })?;
            let mut wm = HashMap::new();
            for (t, f) in map {
                let f = f.as_str().ok_or_else(|| ConvertError::BadKey {
                    path: index.clone(),
                    key: format!("weight_map.{t}"),
                    why: "not a file name".into(),
                })?;
                if f.contains('/') || f.contains("..") {
                    return Err(ConvertError::BadKey {
                        path: index.clone(),
                        key: format!("weight_map.{t}"),
                        why: format!("{f:?} is not a file in the model directory"),
                    });
                }
                wm.insert(t.clone(), f.to_string());
            }
            let mut files: Vec<String> = wm.values().cloned().collect();
            files.sort();
            files.dedup();
            weight_map = Some(wm);
            files
        } else {
            let mut v: Vec<String> = std::fs::read_dir(dir)
                .map_err(ConvertError::io(dir))?
                .filter_map(|e| e.ok().and_then(|e| e.file_name().into_string().ok()))
                .filter(|n| n.starts_with("model") && n.ends_with(".safetensors"))
                .collect();
            v.sort();
            if v.is_empty() {
                return Err(ConvertError::MissingFile {
                    path: dir.join("model.safetensors"),
                });
            }
            v
        };
        let mut files = vec![];
        let mut tensors: Vec<SourceTensor> = vec![];
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        for (i, name) in names.iter().enumerate() {
            let path = dir.join(name);
            let f = match open(&path) {
                Err(ConvertError::MissingFile { path }) if weight_map.is_some() => {
                    return Err(ConvertError::MissingShard {
                        index: index.clone(),
                        shard: path,
                    })
                }
                r => r?,
            };
            for t in read_header(&path, &f, i)? {
                if let Some(&j) = seen.get(&t.name) {
                    return Err(ConvertError::DuplicateTensor {
                        tensor: t.name,
                        first: dir.join(&names[j]),
                        second: path,
                    });
                }
                if let Some(wm) = &weight_map {
                    if wm.get(&t.name) != Some(name) {
                        return Err(ConvertError::IndexMismatch {
                            index: index.clone(),
                            tensor: t.name.clone(),
                            shard: wm
                                .get(&t.name)
                                .cloned()
                                .unwrap_or_else(|| format!("(unlisted; found in {name})")),
                        });
                    }
                }
                seen.insert(t.name.clone(), i);
                tensors.push(t);
            }
            files.push((path, f));
        }
        if let Some(wm) = &weight_map {
            let mut missing: Vec<_> = wm.iter().filter(|(t, _)| !seen.contains_key(*t)).collect();
            missing.sort();
            if let Some((t, f)) = missing.first() {
                return Err(ConvertError::IndexMismatch {
                    index,
                    tensor: (*t).clone(),
                    shard: (*f).clone(),
                });
            }
        }
        Ok(Checkpoint { files, tensors })
    }
}

impl TensorSource for Checkpoint {
    fn tensors(&self) -> &[SourceTensor] {
        &self.tensors
    }

    fn origin(&self, t: &SourceTensor) -> &Path {
        &self.files[t.file].0
    }

    /// bf16 and f16 widen exactly.
    fn read_rows_f32(
        &self,
        t: &SourceTensor,
        row: u64,
        n_rows: u64,
        row_len: u64,
        raw: &mut Vec<u8>,
        out: &mut Vec<f32>,
    ) -> Result<(), ConvertError> {
        let (path, file) = &self.files[t.file];
        let es = t.dtype.size();
        let n = (n_rows * row_len) as usize;
        raw.resize(n * es as usize, 0);
        file.read_exact_at(raw, t.start + row * row_len * es)
            .map_err(ConvertError::io(path))?;
        out.clear();
        out.reserve(n);
        match t.dtype {
            Dtype::F32 => out.extend(
                raw.chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            ),
            Dtype::F16 => out.extend(
                raw.chunks_exact(2)
                    .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()),
            ),
            Dtype::Bf16 => out.extend(
                raw.chunks_exact(2)
                    .map(|b| f32::from_bits(u32::from(b[0]) << 16 | u32::from(b[1]) << 24)),
            ),
        }
        Ok(())
    }
}
