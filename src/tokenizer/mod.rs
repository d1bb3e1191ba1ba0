//! Byte-level BPE tokenizer built from GGUF metadata alone, matching llama.cpp's `llama_tokenize` /
//! `llama_detokenize` for `tokenizer.ggml.model = "gpt2"` with the Qwen2 pre-tokenizer.
//!
//! How llama.cpp tokenizes (llama-vocab.cpp), and so how this does:
//! 1. special-token partition: every CONTROL / USER_DEFINED / UNKNOWN token's text is cut out of the input, longest
//!    text first; with `parse_special = false` only USER_DEFINED tokens are (`tokenizer_st_partition`);
//! 2. each remaining text fragment goes through the Qwen2 regex split, GPT-2 byte-level mapping and BPE merges, with
//!    no Unicode normalisation (Hugging Face's Qwen2 tokenizer applies NFC; llama.cpp does not);
//! 3. pieces: NORMAL tokens are byte-level decoded, CONTROL / UNKNOWN ones print their text only when asked to,
//!    USER_DEFINED ones always print their text, the rest print nothing (`token_to_piece`).

mod from_gguf;
mod stream;
mod vocab;

pub use stream::StreamDecoder;
pub use vocab::{token_type, VocabSpec, QWEN2_PRE_REGEX};

/// Errors from building or running the tokenizer.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("{key} = {value:?} is not supported (supported: {supported})")]
    Unsupported {
        key: &'static str,
        value: String,
        supported: &'static str,
    },
    #[error("bad tokenizer metadata {key}: {detail}")]
    BadVocab { key: &'static str, detail: String },
    #[error("missing tokenizer metadata key {key}")]
    MissingKey { key: &'static str },
    #[error("tokenizer metadata {key} is {got}, expected {expected}")]
    WrongType {
        key: &'static str,
        expected: &'static str,
        got: String,
    },
    #[error("token id {id} is out of range (vocab size {n_vocab})")]
    TokenOutOfRange { id: u32, n_vocab: usize },
    #[error("tokenizers crate: {0}")]
    Backend(String),
}

/// llama.cpp token attributes (`llama_token_attr`), the subset that changes tokenization or output.
const ATTR_UNKNOWN: u8 = 1 << 0;
const ATTR_UNUSED: u8 = 1 << 1;
const ATTR_NORMAL: u8 = 1 << 2;
const ATTR_CONTROL: u8 = 1 << 3;
const ATTR_USER_DEFINED: u8 = 1 << 4;
const ATTR_BYTE: u8 = 1 << 5;

/// Token texts llama.cpp treats as end-of-generation whatever their type (llama-vocab.cpp, `special_eog_ids`),
/// plus the Qwen FIM tokens it adds as FIM_PAD / FIM_REP / FIM_SEP.
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
];

/// When `tokenizer.ggml.eot_token_id` is absent llama.cpp takes the first token with one of these texts.
const EOT_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "<｜end▁of▁sentence｜>",
    "<end_of_utterance>",
];

/// Options for [`Tokenizer::encode_with`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EncodeOptions {
    /// Prepend BOS / append EOS when the vocabulary asks for them (`add_bos_token` / `add_eos_token`).
    pub add_special: bool,
    /// Turn the text of CONTROL tokens (`<|im_start|>`) into those tokens instead of tokenizing it as text.
    pub parse_special: bool,
}

/// A GGUF vocabulary ready to encode and decode.
pub struct Tokenizer {
    bpe: tokenizers::Tokenizer,
    tokens: Vec<String>,
    attrs: Vec<u8>,
    /// Each token's bytes as printed when special tokens are rendered (see the module docs).
    pieces: Vec<Vec<u8>>,
    /// Ids cut out of the text before the BPE runs, longest text first (llama.cpp `cache_special_tokens`).
    special_order: Vec<u32>,
    eog: std::collections::BTreeSet<u32>,
    bos: Option<u32>,
    eos: Option<u32>,
    eot: Option<u32>,
    add_bos: bool,
    add_eos: bool,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("n_vocab", &self.tokens.len())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("eot", &self.eot)
            .field("eog", &self.eog)
            .finish_non_exhaustive()
    }
}

impl Tokenizer {
    /// Builds the tokenizer; refuses vocabularies whose model or pre-tokenizer we cannot reproduce.
    pub fn new(spec: &VocabSpec) -> Result<Tokenizer, TokenizerError> {
        spec.validate()?;
        let bpe = spec.bpe_pipeline()?;

        let mut attrs: Vec<u8> = (0..spec.tokens.len())
            .map(|id| type_to_attr(spec.token_type(id)))
            .collect();
        let find = |text: &str| spec.tokens.iter().position(|t| t == text).map(|id| id as u32);
        let eot = spec.eot.or_else(|| EOT_TEXTS.iter().find_map(|t| find(t)));
        let mut eog: std::collections::BTreeSet<u32> = EOG_TEXTS.iter().filter_map(|t| find(t)).collect();
        eog.extend(spec.eos);
        eog.extend(eot);
        // llama.cpp overrides the type of every EOG-looking token to CONTROL, so e.g. a NORMAL "</s>" is then cut
        // out only with parse_special and prints only when special tokens are rendered.
        for &id in &eog {
            attrs[id as usize] |= ATTR_CONTROL;
        }

        let decoder = vocab::byte_level_decoder();
        let mut pieces = Vec::with_capacity(spec.tokens.len());
        for (id, text) in spec.tokens.iter().enumerate() {
            let a = attrs[id];
            let piece = if a & (ATTR_CONTROL | ATTR_UNKNOWN | ATTR_USER_DEFINED) != 0 {
                text.as_bytes().to_vec()
            } else if a & ATTR_NORMAL != 0 {
                byte_level_decode(text, &decoder)
            } else if a & ATTR_BYTE != 0 {
                vec![parse_byte_token(text).ok_or_else(|| TokenizerError::BadVocab {
                    key: "tokenizer.ggml.tokens",
                    detail: format!("BYTE token {id} {text:?} is not <0xXX>"),
                })?]
            } else {
                Vec::new()
            };
            pieces.push(piece);
        }

        let mut special_order: Vec<u32> = (0..spec.tokens.len() as u32)
            .filter(|&id| attrs[id as usize] & (ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN) != 0)
            .filter(|&id| !spec.tokens[id as usize].is_empty())
            .collect();
        special_order.sort_by_key(|&id| std::cmp::Reverse(spec.tokens[id as usize].len()));

        Ok(Tokenizer {
            bpe,
            tokens: spec.tokens.clone(),
            attrs,
            pieces,
            special_order,
            eog,
            bos: spec.bos,
            eos: spec.eos,
            eot,
            add_bos: spec.add_bos,
            add_eos: spec.add_eos,
        })
    }

    /// Tokenizes `text` without BOS/EOS (llama.cpp `add_special = false`); see [`EncodeOptions::parse_special`].
    pub fn encode(&self, text: &str, parse_special: bool) -> Result<Vec<u32>, TokenizerError> {
        self.encode_with(
            text,
            EncodeOptions {
                add_special: false,
                parse_special,
            },
        )
    }

    /// Tokenizes `text` as a prompt (of `run`, `chat` and the server): special-token text becomes those tokens, and
    /// BOS is added when the vocabulary asks for it, unless the text (a rendered template) already starts with it.
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let has_bos = self
            .bos()
            .and_then(|b| self.token_text(b))
            .is_some_and(|b| text.starts_with(b));
        let opts = EncodeOptions {
            add_special: !has_bos,
            parse_special: true,
        };
        self.encode_with(text, opts)
    }

    /// Tokenizes `text` like `llama_tokenize(vocab, text, add_special, parse_special)`.
    pub fn encode_with(&self, text: &str, opts: EncodeOptions) -> Result<Vec<u32>, TokenizerError> {
        let mut out = Vec::new();
        if opts.add_special && self.add_bos {
            out.extend(self.bos);
        }
        for frag in self.partition(text, opts.parse_special) {
            match frag {
                Fragment::Token(id) => out.push(id),
                Fragment::Text(s) => {
                    let enc = self
                        .bpe
                        .encode_fast(s, false)
                        .map_err(|e| TokenizerError::Backend(e.to_string()))?;
                    out.extend_from_slice(enc.get_ids());
                }
            }
        }
        if opts.add_special && self.add_eos {
            out.extend(self.eos);
        }
        Ok(out)
    }

    /// llama.cpp's `tokenizer_st_partition`: cut each special token's text out of the remaining text fragments,
    /// one token at a time in `special_order`.
    fn partition<'t>(&self, text: &'t str, parse_special: bool) -> Vec<Fragment<'t>> {
        let mut frags = vec![Fragment::Text(text)];
        if text.is_empty() {
            return Vec::new();
        }
        for &id in &self.special_order {
            let a = self.attrs[id as usize];
            if !parse_special && a & (ATTR_CONTROL | ATTR_UNKNOWN) != 0 {
                continue;
            }
            let needle = self.tokens[id as usize].as_str();
            if !frags
                .iter()
                .any(|f| matches!(f, Fragment::Text(s) if s.contains(needle)))
            {
                continue;
            }
            let mut next = Vec::with_capacity(frags.len() + 2);
            for f in frags {
                let Fragment::Text(mut s) = f else {
                    next.push(f);
                    continue;
                };
                while let Some(pos) = s.find(needle) {
                    if pos > 0 {
                        next.push(Fragment::Text(&s[..pos]));
                    }
                    next.push(Fragment::Token(id));
                    s = &s[pos + needle.len()..];
                }
                if !s.is_empty() {
                    next.push(Fragment::Text(s));
                }
            }
            frags = next;
        }
        frags
    }

    /// The bytes token `id` prints as (llama.cpp `token_to_piece` with `lstrip = 0`). CONTROL and UNKNOWN tokens
    /// print their text only with `render_special`.
    pub fn token_to_piece_bytes(&self, id: u32, render_special: bool) -> Result<&[u8], TokenizerError> {
        let i = id as usize;
        let a = *self.attrs.get(i).ok_or(TokenizerError::TokenOutOfRange {
            id,
            n_vocab: self.n_vocab(),
        })?;
        if !render_special && a & (ATTR_CONTROL | ATTR_UNKNOWN) != 0 {
            return Ok(&[]);
        }
        Ok(&self.pieces[i])
    }

    /// The concatenated bytes of `ids` (not necessarily UTF-8: a character may be split across tokens).
    pub fn decode_bytes(&self, ids: &[u32], render_special: bool) -> Result<Vec<u8>, TokenizerError> {
        let mut out = Vec::new();
        for &id in ids {
            out.extend_from_slice(self.token_to_piece_bytes(id, render_special)?);
        }
        Ok(out)
    }

    /// Detokenizes like `llama_detokenize(.., remove_special = false, unparse_special = render_special)`; bytes
    /// that are not UTF-8 become U+FFFD.
    pub fn decode(&self, ids: &[u32], render_special: bool) -> Result<String, TokenizerError> {
        Ok(String::from_utf8_lossy(&self.decode_bytes(ids, render_special)?).into_owned())
    }

    /// The token's text as stored in the vocabulary (`Ġ` for a space, etc.).
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    /// The id of the token whose vocabulary text is exactly `text`.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.tokens.iter().position(|t| t == text).map(|i| i as u32)
    }

    pub fn n_vocab(&self) -> usize {
        self.tokens.len()
    }

    /// End of generation: EOS, EOT, and every token llama.cpp lists by text (`<|im_end|>`, `<|endoftext|>`, ...).
    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.contains(&id)
    }

    /// All end-of-generation ids, ascending.
    pub fn eog_ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.eog.iter().copied()
    }

    /// Whether the token is CONTROL (after llama.cpp's EOG override), i.e. hidden unless special tokens render.
    pub fn is_control(&self, id: u32) -> bool {
        self.attrs.get(id as usize).is_some_and(|a| a & ATTR_CONTROL != 0)
    }

    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    pub fn eos(&self) -> Option<u32> {
        self.eos
    }

    pub fn eot(&self) -> Option<u32> {
        self.eot
    }

    pub fn add_bos(&self) -> bool {
        self.add_bos
    }
}

#[derive(Debug, Clone, Copy)]
enum Fragment<'t> {
    Text(&'t str),
    Token(u32),
}

/// llama.cpp's type → attribute table (llama-vocab.cpp `load`): unknown type values become UNDEFINED (no bits).
fn type_to_attr(t: i32) -> u8 {
    use token_type::*;
    match t {
        NORMAL => ATTR_NORMAL,
        UNKNOWN => ATTR_UNKNOWN,
        CONTROL => ATTR_CONTROL,
        USER_DEFINED => ATTR_USER_DEFINED,
        UNUSED => ATTR_UNUSED,
        BYTE => ATTR_BYTE,
        _ => 0,
    }
}

/// Maps each character of a byte-level token back to its byte. A character outside the alphabet (a malformed
/// vocabulary) is kept as UTF-8, where llama.cpp would print `[UNK_BYTE_0x..]`.
fn byte_level_decode(text: &str, decoder: &std::collections::HashMap<char, u8>) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    for c in text.chars() {
        match decoder.get(&c) {
            Some(&b) => out.push(b),
            None => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
        }
    }
    out
}

/// `<0xAB>` → 0xAB (SPM-style byte tokens, which llama.cpp also accepts in BPE vocabularies).
fn parse_byte_token(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}
