//! Expert activation profiles: per layer, how many tokens selected each expert in their top-k, counted through
//! the sparse path's route hook ([`RouteEvent`]) while a text runs through a [`Session`]. The expert cache reads
//! these files to pre-warm and pin the hottest experts (issue 7), so the format is fixed:
//!
//! `{"model": "<file name>", "n_layer": L, "n_expert": E, "n_expert_used": K, "n_tokens": N,
//!   "counts": [[c_0, ..., c_{E-1}], ... L rows]}`
//!
//! Every token of every layer selects exactly K experts, so each row sums to N·K; files are checked for that
//! (and for their shape) on read.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::{EvalError, Hparams, Rows, Session};
use crate::graph::RouteEvent;

/// Why a profile could not be made, read or used. Every variant names the file where there is one.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not an expert profile: {why}")]
    Bad { path: PathBuf, why: String },
    #[error("{path}: profile has {key} = {profile}, the model has {model}")]
    ModelMismatch {
        path: PathBuf,
        key: &'static str,
        profile: u64,
        model: u64,
    },
    #[error("no tokens to profile")]
    Empty,
    #[error("profiling needs the sparse path (its router reports the expert ids), but the session runs {path}")]
    NotSparse { path: String },
    #[error("layer {layer}: the router reported {got} selections for {n_tokens} tokens, expected {expected}")]
    Incomplete {
        layer: usize,
        n_tokens: u64,
        got: u64,
        expected: u64,
    },
    #[error(transparent)]
    Eval(#[from] EvalError),
}

/// Expert selection counts per layer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpertProfile {
    /// The model's file name (not its path), for the reader's information.
    pub model: String,
    pub n_layer: u32,
    pub n_expert: u32,
    pub n_expert_used: u32,
    /// Tokens evaluated.
    pub n_tokens: u64,
    /// `[n_layer][n_expert]`: tokens that selected the expert in their top-k.
    pub counts: Vec<Vec<u64>>,
}

impl ExpertProfile {
    /// An empty profile for a model.
    pub fn new(model: impl Into<String>, hp: &Hparams) -> ExpertProfile {
        ExpertProfile {
            model: model.into(),
            n_layer: hp.n_layer,
            n_expert: hp.n_expert,
            n_expert_used: hp.n_expert_used,
            n_tokens: 0,
            counts: vec![vec![0; hp.n_expert as usize]; hp.n_layer as usize],
        }
    }

    /// Counts one router event (ids outside the layer's experts are ignored; the row sums then disagree).
    pub fn record(&mut self, ev: &RouteEvent<'_>) {
        if let Some(row) = self.counts.get_mut(ev.layer as usize) {
            for &e in ev.expert_ids {
                if let Some(c) = usize::try_from(e).ok().and_then(|e| row.get_mut(e)) {
                    *c += 1;
                }
            }
        }
    }

    /// Share of tokens that selected each expert, `[n_layer][n_expert]` (0 when no tokens).
    pub fn frequencies(&self) -> Vec<Vec<f64>> {
        let n = self.n_tokens.max(1) as f64;
        self.counts
            .iter()
            .map(|row| row.iter().map(|&c| c as f64 / n).collect())
            .collect()
    }

    /// The `n` most selected experts of `layer`, most selected first (ties: lower id first); empty for a layer
    /// out of range.
    pub fn hottest(&self, layer: usize, n: usize) -> Vec<u32> {
        let Some(row) = self.counts.get(layer) else {
            return vec![];
        };
        let mut ids: Vec<u32> = (0..row.len() as u32).collect();
        ids.sort_by(|&a, &b| row[b as usize].cmp(&row[a as usize]).then(a.cmp(&b)));
        ids.truncate(n);
        ids
    }

    /// The file text: the module's format, one layer per line.
    pub fn to_json(&self) -> String {
        let rows: Vec<String> = self
            .counts
            .iter()
            .map(|r| serde_json::to_string(r).expect("integers"))
            .collect();
        format!(
            "{{\"model\": {}, \"n_layer\": {}, \"n_expert\": {}, \"n_expert_used\": {}, \"n_tokens\": {}, \"counts\": [\n{}\n]}}\n",
            serde_json::to_string(&self.model).expect("a string"),
            self.n_layer,
            self.n_expert,
            self.n_expert_used,
            self.n_tokens,
            rows.join(",\n")
        )
    }

    /// Parses and checks a profile (`path` only names the source in errors).
    pub fn from_json(text: &str, path: &Path) -> Result<ExpertProfile, ProfileError> {
        let bad = |why: String| ProfileError::Bad {
            path: path.to_path_buf(),
            why,
        };
        let p: ExpertProfile = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        if p.counts.len() != p.n_layer as usize {
            return Err(bad(format!("{} count rows for n_layer {}", p.counts.len(), p.n_layer)));
        }
        if p.n_expert_used == 0 || p.n_expert_used > p.n_expert {
            return Err(bad(format!(
                "n_expert_used {} with n_expert {}",
                p.n_expert_used, p.n_expert
            )));
        }
        let expected = p.n_tokens * u64::from(p.n_expert_used);
        for (il, row) in p.counts.iter().enumerate() {
            if row.len() != p.n_expert as usize {
                return Err(bad(format!(
                    "layer {il} has {} counts for n_expert {}",
                    row.len(),
                    p.n_expert
                )));
            }
            let sum: u64 = row.iter().sum();
            if sum != expected {
                return Err(bad(format!(
                    "layer {il} counts sum to {sum}, not n_tokens × n_expert_used = {expected}"
                )));
            }
        }
        Ok(p)
    }

    /// Reads and checks a profile file.
    pub fn load(path: &Path) -> Result<ExpertProfile, ProfileError> {
        let text = std::fs::read_to_string(path).map_err(|source| ProfileError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        ExpertProfile::from_json(&text, path)
    }

    /// Checks that the profile was made on a model of this shape (`path` names the profile in errors).
    pub fn check_model(&self, hp: &Hparams, path: &Path) -> Result<(), ProfileError> {
        for (key, profile, model) in [
            ("n_layer", self.n_layer, hp.n_layer),
            ("n_expert", self.n_expert, hp.n_expert),
            ("n_expert_used", self.n_expert_used, hp.n_expert_used),
        ] {
            if profile != model {
                return Err(ProfileError::ModelMismatch {
                    path: path.to_path_buf(),
                    key,
                    profile: profile.into(),
                    model: model.into(),
                });
            }
        }
        Ok(())
    }

    /// Writes the profile to `path` atomically: a temporary file in the same directory, renamed over `path`
    /// when complete (removed on error), so a failed write leaves no partial file.
    pub fn save(&self, path: &Path) -> Result<(), ProfileError> {
        let io = |source| ProfileError::Io {
            path: path.to_path_buf(),
            source,
        };
        let name = path
            .file_name()
            .ok_or_else(|| io(std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file name")))?;
        let mut tmp_name = name.to_os_string();
        tmp_name.push(format!(".tmp-{}", std::process::id()));
        let tmp = path.with_file_name(tmp_name);
        let r = std::fs::File::create(&tmp).and_then(|mut f| {
            f.write_all(self.to_json().as_bytes())?;
            f.sync_all()
        });
        let r = r.and_then(|()| std::fs::rename(&tmp, path));
        if r.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        r.map_err(io)
    }
}

/// Runs `tokens` through `session` and counts the router's selections. The text is cut into chunks of the
/// session's context; the cache is reset before each chunk so texts longer than the context work. The session
/// must run prompts on the sparse path (`SessionParams::sparse_max_batch` at least the batch size), or the
/// router never reports and this fails with [`ProfileError::NotSparse`] / [`ProfileError::Incomplete`].
pub fn profile_tokens(
    session: &mut Session<'_>,
    model_name: &str,
    hp: &Hparams,
    tokens: &[u32],
) -> Result<ExpertProfile, ProfileError> {
    if tokens.is_empty() {
        return Err(ProfileError::Empty);
    }
    let shared = Arc::new(Mutex::new(ExpertProfile::new(model_name, hp)));
    let sink = Arc::clone(&shared);
    let installed = session.set_route_hook(Some(Arc::new(move |ev: &RouteEvent<'_>| {
        sink.lock().unwrap_or_else(|p| p.into_inner()).record(ev);
    })));
    if !installed {
        return Err(ProfileError::NotSparse {
            path: session.moe_path().to_string(),
        });
    }
    let n_ctx = session.kv().params().n_ctx as usize;
    let result = tokens.chunks(n_ctx).try_for_each(|chunk| {
        session.reset();
        session.eval(chunk, Rows::Last).map(|_| ())
    });
    session.set_route_hook(None);
    result?;
    let mut p = std::mem::replace(
        &mut *shared.lock().unwrap_or_else(|p| p.into_inner()),
        ExpertProfile::new(model_name, hp),
    );
    p.n_tokens = tokens.len() as u64;
    let expected = p.n_tokens * u64::from(p.n_expert_used);
    for (layer, row) in p.counts.iter().enumerate() {
        let got: u64 = row.iter().sum();
        if got != expected {
            return Err(ProfileError::Incomplete {
                layer,
                n_tokens: p.n_tokens,
                got,
                expected,
            });
        }
    }
    Ok(p)
}
