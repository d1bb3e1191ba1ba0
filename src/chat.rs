//! Chat templates: the GGUF's `tokenizer.chat_template` (a Hugging Face Jinja template) rendered with minijinja,
//! configured like transformers' `apply_chat_template`: `trim_blocks` and `lstrip_blocks` on, loop controls,
//! Python string/dict methods (`.strip()`, `.startswith()`, `.get()`), `raise_exception(msg)`, and a `tojson` that
//! prints what Python's `json.dumps(ensure_ascii=False)` prints.
//!
//! The rendered prompt contains the template's control tokens as text (`<|im_start|>`): tokenize it with
//! `parse_special = true`, as llama.cpp does for chat prompts.

use minijinja::value::{Kwargs, ValueKind};
use minijinja::{Environment, ErrorKind, Value};

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }

    pub fn system(content: impl Into<String>) -> Self {
        Message::new("system", content)
    }

    pub fn user(content: impl Into<String>) -> Self {
        Message::new("user", content)
    }

    pub fn assistant(content: impl Into<String>) -> Self {
        Message::new("assistant", content)
    }
}

/// Errors from compiling or rendering a chat template. `line` is the template line, when minijinja knows it.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error("the GGUF has no tokenizer.chat_template")]
    NoTemplate,
    #[error("chat template syntax error (line {line:?}): {detail}")]
    Syntax { line: Option<usize>, detail: String },
    #[error("chat template failed to render (line {line:?}): {detail}")]
    Render { line: Option<usize>, detail: String },
    #[error("chat template raised an exception: {message}")]
    Raised { message: String },
}

/// The marker attached to errors made by the template's own `raise_exception`.
#[derive(Debug)]
struct Raised(String);

impl std::fmt::Display for Raised {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Raised {}

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: Option<String>,
    eos_token: Option<String>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish_non_exhaustive()
    }
}

const NAME: &str = "chat_template";

impl ChatTemplate {
    /// Compiles `src`; a syntax error says what and where.
    pub fn new(src: &str) -> Result<ChatTemplate, ChatError> {
        let mut env = Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| ChatError::Syntax {
                line: None,
                detail: e.to_string(),
            })?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> Result<Value, minijinja::Error> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg.clone()).with_source(Raised(msg)))
        });
        env.add_filter("tojson", tojson);
        env.add_template_owned(NAME, src.to_owned())
            .map_err(|e| ChatError::Syntax {
                line: e.line(),
                detail: describe(&e),
            })?;
        Ok(ChatTemplate {
            env,
            bos_token: None,
            eos_token: None,
        })
    }

    /// The GGUF's own template (`tokenizer.chat_template`), with `bos_token` / `eos_token` set to the texts of the
    /// vocabulary's BOS / EOS tokens.
    pub fn for_vocab(spec: &crate::tokenizer::VocabSpec) -> Result<ChatTemplate, ChatError> {
        let src = spec.chat_template.as_deref().ok_or(ChatError::NoTemplate)?;
        let text = |id: Option<u32>| id.and_then(|id| spec.tokens.get(id as usize)).cloned();
        Ok(ChatTemplate::new(src)?.with_special_tokens(text(spec.bos), text(spec.eos)))
    }

    /// Sets the `bos_token` / `eos_token` template variables (token texts, e.g. from the tokenizer's ids).
    pub fn with_special_tokens(mut self, bos_token: Option<String>, eos_token: Option<String>) -> Self {
        self.bos_token = bos_token;
        self.eos_token = eos_token;
        self
    }

    /// Renders `messages`; `add_generation_prompt` appends the assistant turn header the model continues from.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String, ChatError> {
        let messages: Vec<Value> = messages
            .iter()
            .map(|m| {
                Value::from_pairs([
                    ("role", Value::from(m.role.as_str())),
                    ("content", Value::from(m.content.as_str())),
                ])
            })
            .collect();
        let ctx = minijinja::context! {
            messages => Value::from(messages),
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token.clone().unwrap_or_default(),
            eos_token => self.eos_token.clone().unwrap_or_default(),
        };
        let tmpl = self.env.get_template(NAME).map_err(|e| render_error(&e))?;
        tmpl.render(ctx).map_err(|e| render_error(&e))
    }

    /// Renders with an optional system prompt put first; `None` leaves the template's default (if it has one).
    pub fn render_with_system(
        &self,
        system_prompt: Option<&str>,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, ChatError> {
        match system_prompt {
            None => self.render(messages, add_generation_prompt),
            Some(s) => {
                let mut all = Vec::with_capacity(messages.len() + 1);
                all.push(Message::system(s));
                all.extend_from_slice(messages);
                self.render(&all, add_generation_prompt)
            }
        }
    }
}

fn render_error(e: &minijinja::Error) -> ChatError {
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = src {
        if let Some(raised) = err.downcast_ref::<Raised>() {
            return ChatError::Raised {
                message: raised.0.clone(),
            };
        }
        src = err.source();
    }
    ChatError::Render {
        line: e.line(),
        detail: describe(e),
    }
}

/// minijinja's message plus the offending template line, which is what a user needs to fix a template.
fn describe(e: &minijinja::Error) -> String {
    let mut s = e.to_string();
    if let (Some(line), Some(source)) = (e.line(), e.template_source()) {
        if let Some(text) = source.lines().nth(line.saturating_sub(1)) {
            let text: String = text.chars().take(200).collect();
            s.push_str(&format!(" -- at: {}", text.trim()));
        }
    }
    s
}

/// transformers' `tojson` filter: `json.dumps(x, ensure_ascii=False, indent=indent, sort_keys=sort_keys)`.
fn tojson(value: &Value, kwargs: Kwargs) -> Result<Value, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let mut out = String::new();
    write_json(&mut out, value, indent, sort_keys.unwrap_or(false), 0)?;
    Ok(Value::from_safe_string(out))
}

fn write_json(
    out: &mut String,
    v: &Value,
    indent: Option<usize>,
    sort_keys: bool,
    depth: usize,
) -> Result<(), minijinja::Error> {
    let newline = |out: &mut String, depth: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * depth));
        }
    };
    // Python's separators: ", " and ": " inline, "," and ": " when indenting.
    let item_sep = if indent.is_some() { "," } else { ", " };
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            if let Ok(i) = i64::try_from(v.clone()) {
                out.push_str(&i.to_string());
            } else {
                let f = f64::try_from(v.clone())?;
                out.push_str(&python_float(f));
            }
        }
        ValueKind::String => write_json_str(out, v.as_str().unwrap_or_default()),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                write_json(out, item, indent, sort_keys, depth + 1)?;
            }
            if !items.is_empty() {
                newline(out, depth);
            }
            out.push(']');
        }
        ValueKind::Map => {
            let mut keys: Vec<Value> = v.try_iter()?.collect();
            if sort_keys {
                keys.sort();
            }
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                write_json_str(out, &k.to_string());
                out.push_str(": ");
                write_json(out, &v.get_item(k)?, indent, sort_keys, depth + 1)?;
            }
            if !keys.is_empty() {
                newline(out, depth);
            }
            out.push('}');
        }
        _ => {
            return Err(minijinja::Error::new(
                ErrorKind::BadSerialization,
                format!("tojson cannot serialize a {}", v.kind()),
            ))
        }
    }
    Ok(())
}

/// A JSON string as Python's json module writes it with `ensure_ascii=False`.
fn write_json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0C}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Python's `repr(float)` for the common cases: `1.0`, `0.5`, `1e-05`, `NaN`.
fn python_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity".into() } else { "-Infinity".into() };
    }
    let a = f.abs();
    if a != 0.0 && !(1e-4..1e16).contains(&a) {
        // Rust: "1e-5"; Python: "1e-05".
        let s = format!("{f:e}");
        let (m, e) = s.split_once('e').unwrap_or((&s, "0"));
        let (sign, digits) = e.strip_prefix('-').map_or(("+", e), |d| ("-", d));
        return format!("{m}e{sign}{digits:0>2}");
    }
    if f.fract() == 0.0 {
        format!("{f:.1}")
    } else {
        format!("{f}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_floats() {
        assert_eq!(python_float(1.0), "1.0");
        assert_eq!(python_float(0.5), "0.5");
        assert_eq!(python_float(1e-5), "1e-05");
        assert_eq!(python_float(2.5e20), "2.5e+20");
        assert_eq!(python_float(-3.0), "-3.0");
    }

    #[test]
    fn tojson_like_python() {
        let t = ChatTemplate::new("{{ messages | tojson }}|{{ messages[0] | tojson(indent=2) }}").unwrap();
        let out = t.render(&[Message::user("a \"q\"\n<é>")], false).unwrap();
        assert_eq!(
            out,
            "[{\"role\": \"user\", \"content\": \"a \\\"q\\\"\\n<é>\"}]|{\n  \"role\": \"user\",\n  \"content\": \"a \\\"q\\\"\\n<é>\"\n}"
        );
    }
}
