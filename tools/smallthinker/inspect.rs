//! `smallthinker inspect FILE.gguf`: metadata and tensor table, like gguf-py's gguf-dump; `--json` for scripts.
//!
//! Only the header is read (the data stays mapped, untouched), so this takes milliseconds on any size of model.
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;

use anyhow::Context as _;
use serde_json::{json, Value as Json};
use smallthinker::gguf::{Array, GgufFile, Value};

/// Arguments of `inspect`.
#[derive(clap::Args)]
pub struct InspectArgs {
    /// The GGUF file.
    file: PathBuf,
    /// Print one JSON document with every value in full.
    #[arg(long)]
    json: bool,
    /// In the table view, print arrays and long strings in full instead of summarising them.
    #[arg(long)]
    full: bool,
}

/// Array elements shown in the table view before "...".
const SHOWN_ITEMS: usize = 8;
/// Characters of a string shown in the table view.
const SHOWN_CHARS: usize = 80;

pub fn run(args: &InspectArgs) -> anyhow::Result<()> {
    let f = GgufFile::open(&args.file).with_context(|| format!("cannot read {}", args.file.display()))?;
    let out = if args.json {
        serde_json::to_string_pretty(&to_json(&f))? + "\n"
    } else {
        table(&f, args.full)
    };
    match std::io::stdout().lock().write_all(out.as_bytes()) {
        // `inspect x.gguf | head` is fine.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r.context("writing to stdout"),
    }
}

fn table(f: &GgufFile, full: bool) -> String {
    let mut s = String::new();
    let total: u64 = f.tensors().iter().map(|t| t.size).sum();
    let _ = writeln!(
        s,
        "{}: GGUF v{}, {} bytes, alignment {}, data section at offset {}",
        f.path().display(),
        f.version(),
        f.file_size(),
        f.alignment(),
        f.data_offset()
    );
    let _ = writeln!(s, "\n{} metadata keys:", f.metadata().len());
    let width = f.metadata().iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (i, (k, v)) in f.metadata().iter().enumerate() {
        let _ = writeln!(s, "{:5}: {:8} {k:width$} = {}", i + 1, v.type_label(), show(v, full));
    }
    let _ = writeln!(s, "\n{} tensors, {total} bytes of data:", f.tensors().len());
    let width = f.tensors().iter().map(|t| t.name.len()).max().unwrap_or(4).max(4);
    let _ = writeln!(
        s,
        "{:>5}  {:width$}  {:7}  {:28}  {:>12}  {:>12}  {:>12}",
        "#", "name", "type", "shape (ggml ne)", "elements", "bytes", "offset"
    );
    for (i, t) in f.tensors().iter().enumerate() {
        let dims = format!("{:?}", t.dims);
        let _ = writeln!(
            s,
            "{:5}  {:width$}  {:7}  {dims:28}  {:12}  {:12}  {:12}",
            i + 1,
            t.name,
            t.ty.to_string(),
            t.n_elements(),
            t.size,
            t.offset
        );
    }
    s
}

/// A value for the table: strings quoted and escaped, long strings and arrays summarised unless `full`.
fn show(v: &Value, full: bool) -> String {
    match v {
        Value::String(x) => quote(x, full),
        Value::Array(a) => show_array(a, full),
        // Through the shortest f32 text, so 1e-6f32 shows as 1e-6 rather than 9.999999974752427e-7.
        Value::F32(x) => show_float(f32_to_f64(*x)),
        Value::F64(x) => show_float(*x),
        v => value_json(v).to_string(),
    }
}

/// Floats the way Python prints them: exponent notation when very large or small.
fn show_float(x: f64) -> String {
    let a = x.abs();
    if a != 0.0 && a.is_finite() && !(1e-4..1e16).contains(&a) {
        format!("{x:e}")
    } else {
        x.to_string()
    }
}

fn quote(x: &str, full: bool) -> String {
    let n = x.chars().count();
    if full || n <= SHOWN_CHARS {
        format!("{x:?}")
    } else {
        let head: String = x.chars().take(SHOWN_CHARS).collect();
        format!("{head:?}... ({n} chars)")
    }
}

fn show_array(a: &Array, full: bool) -> String {
    let n = a.len();
    let shown = if full { n } else { n.min(SHOWN_ITEMS) };
    let items: Vec<String> = (0..shown).filter_map(|i| a.get(i)).map(|v| show(&v, full)).collect();
    let more = if shown < n {
        format!(", ... ({n} items)")
    } else {
        String::new()
    };
    format!("[{}{more}]", items.join(", "))
}

fn to_json(f: &GgufFile) -> Json {
    let metadata: Vec<Json> = f
        .metadata()
        .iter()
        .map(|(k, v)| json!({"key": k, "type": v.type_label(), "value": value_json(v)}))
        .collect();
    let tensors: Vec<Json> = f
        .tensors()
        .iter()
        .map(|t| {
            json!({"name": t.name, "type": t.ty.name(), "type_id": t.ty.id(), "dims": t.dims,
                   "n_elements": t.n_elements(), "offset": t.offset, "size": t.size})
        })
        .collect();
    json!({
        "path": f.path().display().to_string(), "version": f.version(), "file_size": f.file_size(),
        "alignment": f.alignment(), "data_offset": f.data_offset(), "metadata": metadata, "tensors": tensors,
    })
}

/// Numbers stay numbers; non-finite floats, which JSON cannot hold, become the strings "nan", "inf", "-inf".
fn float_json(x: f64) -> Json {
    serde_json::Number::from_f64(x)
        .map(Json::Number)
        .unwrap_or_else(|| Json::String(x.to_string().to_lowercase()))
}

/// The f64 nearest to the shortest decimal that reads back as `x`: what a human or a JSON reader expects to see.
fn f32_to_f64(x: f32) -> f64 {
    x.to_string().parse().unwrap_or(f64::from(x))
}

fn value_json(v: &Value) -> Json {
    match v {
        Value::U8(x) => json!(x),
        Value::I8(x) => json!(x),
        Value::U16(x) => json!(x),
        Value::I16(x) => json!(x),
        Value::U32(x) => json!(x),
        Value::I32(x) => json!(x),
        Value::U64(x) => json!(x),
        Value::I64(x) => json!(x),
        Value::F32(x) => float_json(f32_to_f64(*x)),
        Value::F64(x) => float_json(*x),
        Value::Bool(x) => json!(x),
        Value::String(x) => json!(x),
        Value::Array(a) => array_json(a),
    }
}

fn array_json(a: &Array) -> Json {
    match a {
        Array::U8(v) => json!(v),
        Array::I8(v) => json!(v),
        Array::U16(v) => json!(v),
        Array::I16(v) => json!(v),
        Array::U32(v) => json!(v),
        Array::I32(v) => json!(v),
        Array::U64(v) => json!(v),
        Array::I64(v) => json!(v),
        Array::F32(v) => Json::Array(v.iter().map(|&x| float_json(f32_to_f64(x))).collect()),
        Array::F64(v) => Json::Array(v.iter().map(|&x| float_json(x)).collect()),
        Array::Bool(v) => json!(v),
        Array::String(v) => json!(v),
        Array::Array(v) => Json::Array(v.iter().map(array_json).collect()),
    }
}
