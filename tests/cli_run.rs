//! `smallthinker run` / `chat` / `perplexity` driven as a user would, on the fixture GGUFs in
//! tests/fixtures/model/, checked against the library's Session, Sampler and Generation.
use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use smallthinker::gguf::GgufFile;
use smallthinker::model::{KvCache, KvParams, KvType, Model, Rows, Session, SessionParams};
use smallthinker::sampling::{Generation, Sampler, SamplerParams, StopCriteria};
use smallthinker::tokenizer::{EncodeOptions, Tokenizer, VocabSpec};

const CTX: u32 = 256;

fn fixture(config: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/model/{config}/f32.gguf"))
}

fn smallthinker(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_smallthinker"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning smallthinker");
    let mut pipe = child.stdin.take().unwrap();
    pipe.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    drop(pipe);
    child.wait_with_output().unwrap()
}

fn run_ok(args: &[&str]) -> (String, String) {
    let out = smallthinker(args, None);
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success(), "smallthinker {args:?} failed: {stderr}");
    (String::from_utf8(out.stdout).unwrap(), stderr)
}

fn tokenizer(config: &str) -> Tokenizer {
    let file = GgufFile::open(&fixture(config)).unwrap();
    Tokenizer::new(&VocabSpec::from_gguf(&file).unwrap()).unwrap()
}

/// The library's greedy generation from `prompt`: the printed text and the tokens sampled.
fn library_greedy(config: &str, prompt: &[u32], criteria: StopCriteria, kv: KvType) -> (String, Vec<u32>) {
    let file = GgufFile::open(&fixture(config)).unwrap();
    let tok = Tokenizer::new(&VocabSpec::from_gguf(&file).unwrap()).unwrap();
    let wctx = Model::context(&file).unwrap();
    let model = Model::load(&wctx, &file).unwrap();
    let kctx = KvCache::context(&model.hp).unwrap();
    let params = KvParams {
        n_ctx: CTX,
        n_batch: CTX,
        ty: kv,
    };
    let kv = KvCache::new(&kctx, &model.hp, params).unwrap();
    let mut session = Session::new(
        &model,
        kv,
        SessionParams {
            n_threads: 1,
            ..Default::default()
        },
    )
    .unwrap();
    let mut sampler = Sampler::new(SamplerParams::greedy()).unwrap();
    let mut gen = Generation::new(criteria);
    let (mut text, mut ids) = (String::new(), Vec::new());
    let mut logits = session.eval(prompt, Rows::Last).unwrap();
    loop {
        let id = sampler.sample(&logits).unwrap();
        sampler.accept(id);
        ids.push(id);
        let step = gen.push(&tok, id).unwrap();
        text.push_str(&step.text);
        if step.stop.is_some() {
            return (text, ids);
        }
        logits = session.eval(&[id], Rows::Last).unwrap();
    }
}

fn encode_prompt(tok: &Tokenizer, text: &str) -> Vec<u32> {
    let opts = EncodeOptions {
        add_special: true,
        parse_special: true,
    };
    tok.encode_with(text, opts).unwrap()
}

/// The token count of a speed line, e.g. ` generation =   4.69 ms /    20 tokens (...)`.
fn speed_tokens(stderr: &str, what: &str) -> usize {
    let line = stderr.lines().find(|l| l.trim_start().starts_with(what)).expect(what);
    let after = line.split(" / ").nth(1).unwrap();
    after.split_whitespace().next().unwrap().parse().unwrap()
}

const PROMPT: &str = "Hello world, this is a test of";

#[test]
fn greedy_run_matches_the_library_and_respects_n() {
    let model = fixture("st4b");
    let m = model.to_str().unwrap();
    let tok = tokenizer("st4b");
    let prompt = encode_prompt(&tok, PROMPT);
    for n in [1usize, 7, 24] {
        let criteria = StopCriteria {
            max_tokens: Some(n),
            ..Default::default()
        };
        let (want, ids) = library_greedy("st4b", &prompt, criteria, KvType::F16);
        let n_str = n.to_string();
        let args = [
            "run", "-m", m, "-p", PROMPT, "-n", &n_str, "--temp", "0", "-t", "1", "--ctx", "256",
        ];
        let (got, stderr) = run_ok(&args);
        assert_eq!(got, want, "-n {n}");
        assert_eq!(speed_tokens(&stderr, "generation"), ids.len(), "-n {n}: {stderr}");
        assert_eq!(
            ids.len(),
            n,
            "the fixture model emitted an end-of-generation token early"
        );
        assert_eq!(speed_tokens(&stderr, "prompt eval"), prompt.len());
    }
}

/// The manifests' llama.cpp greedy continuations start from token ids; where their text tokenizes back to the same
/// ids, `run` on that text must print exactly llama.cpp's 64 tokens (F32 cache, as llama.cpp used).
#[test]
fn greedy_run_matches_llama_cpp_continuation() {
    let mut checked = Vec::new();
    for config in ["st4b", "st21b", "stmha"] {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/model/{config}"));
        let manifest: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
        let g = manifest["greedy"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["model"] == "f32")
            .unwrap();
        let ids = |v: &serde_json::Value| -> Vec<u32> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect()
        };
        let (prompt, want_ids) = (ids(&g["prompt"]), ids(&g["tokens"]));
        let tok = tokenizer(config);
        let text = tok.decode(&prompt, false).unwrap();
        if encode_prompt(&tok, &text) != prompt {
            continue; // e.g. a lone byte token that is not valid UTF-8
        }
        let mut gen = Generation::new(StopCriteria {
            max_tokens: Some(want_ids.len()),
            ..Default::default()
        });
        let want: String = want_ids.iter().map(|&id| gen.push(&tok, id).unwrap().text).collect();
        let n = want_ids.len().to_string();
        let model = fixture(config);
        let m = model.to_str().unwrap();
        let args = [
            "run",
            "-m",
            m,
            "-p",
            &text,
            "-n",
            &n,
            "--temp",
            "0",
            "-t",
            "1",
            "--kv-type",
            "f32",
        ];
        let (got, _) = run_ok(&args);
        assert_eq!(got, want, "{config}");
        checked.push(config);
    }
    assert!(!checked.is_empty(), "no manifest prompt round-trips through text");
    eprintln!("matched llama.cpp's greedy continuation on {checked:?}");
}

#[test]
fn stop_string_ends_the_output_before_it() {
    let model = fixture("st4b");
    let m = model.to_str().unwrap();
    let tok = tokenizer("st4b");
    let criteria = StopCriteria {
        max_tokens: Some(24),
        ..Default::default()
    };
    let (full, _) = library_greedy("st4b", &encode_prompt(&tok, PROMPT), criteria, KvType::F16);
    // Two characters from the middle of the greedy output; the run must stop at their first occurrence.
    let chars: Vec<(usize, char)> = full.char_indices().collect();
    let (a, _) = chars[chars.len() / 2];
    let b = chars.get(chars.len() / 2 + 2).map_or(full.len(), |c| c.0);
    let stop = &full[a..b];
    let want = &full[..full.find(stop).unwrap()];
    let args = [
        "run", "-m", m, "-p", PROMPT, "-n", "24", "--temp", "0", "-t", "1", "--stop", stop, "--ctx", "256",
    ];
    let (got, stderr) = run_ok(&args);
    assert_eq!(got, want, "stop {stop:?}");
    assert!(speed_tokens(&stderr, "generation") < 24);
}

#[test]
fn empty_or_too_long_prompt_fails_with_a_message() {
    let model = fixture("st4b");
    let m = model.to_str().unwrap();
    let out = smallthinker(&["run", "-m", m, "-p", ""], None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("prompt is empty"));
    let out = smallthinker(&["run", "-m", m, "-p", PROMPT, "--ctx", "4", "-t", "1"], None);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("context of 4"), "{stderr}");
    assert!(out.stdout.is_empty());
}

#[test]
fn chat_flag_applies_the_template() {
    let model = fixture("st4b");
    let m = model.to_str().unwrap();
    let base = [
        "run",
        "-m",
        m,
        "-p",
        PROMPT,
        "-n",
        "8",
        "--temp",
        "0",
        "-t",
        "1",
        "--verbose-prompt",
    ];
    let (plain, plain_err) = run_ok(&base);
    let (chat, chat_err) = run_ok(&[&base[..], &["--chat", "--system", "Be brief."]].concat());
    assert_ne!(plain, chat);
    assert!(!plain_err.contains("<|im_start|>"), "{plain_err}");
    let tok = tokenizer("st4b");
    let rendered = format!(
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n{PROMPT}<|im_end|>\n<|im_start|>assistant\n"
    );
    let ids = encode_prompt(&tok, &rendered);
    assert_eq!(ids[0], tok.token_id("<|im_start|>").unwrap());
    assert!(
        chat_err.contains(&format!("prompt tokens ({}): {ids:?}", ids.len())),
        "{chat_err}"
    );
}

/// `[prompt: N new tokens, M cached]` lines of a chat session.
fn turn_stats(stderr: &str) -> Vec<(usize, usize)> {
    stderr
        .lines()
        .filter_map(|l| l.split("[prompt: ").nth(1))
        .map(|rest| {
            let nums: Vec<usize> = rest.split_whitespace().filter_map(|w| w.parse().ok()).collect();
            (nums[0], nums[1])
        })
        .collect()
}

#[test]
fn chat_keeps_the_cache_between_turns() {
    let model = fixture("st4b");
    let args = [
        "chat",
        "-m",
        model.to_str().unwrap(),
        "-n",
        "6",
        "--temp",
        "0",
        "-t",
        "1",
        "--ctx",
        "256",
    ];
    let out = smallthinker(&args, Some("Hello there\nHow are you today\n/exit\nnot read\n"));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success(), "{stderr}");
    let turns = turn_stats(&stderr);
    assert_eq!(turns.len(), 2, "{stderr}");
    assert_eq!(turns[0].1, 0);
    // The first prompt and the five generated tokens that were evaluated (the sixth ends the answer) are reused.
    let sampled: Vec<usize> = stderr
        .lines()
        .filter(|l| l.trim_start().starts_with("generation"))
        .map(|l| speed_tokens(l, "generation"))
        .collect();
    assert_eq!(turns[1].1, turns[0].0 + sampled[0] - 1, "{stderr}");
    assert!(turns[1].0 < turns[1].0 + turns[1].1);
    // End of input ends the session too.
    let out = smallthinker(&args, Some("Hello there\n"));
    assert!(out.status.success());
    assert_eq!(turn_stats(&String::from_utf8(out.stderr).unwrap()).len(), 1);
}

#[test]
fn perplexity_is_exp_mean_nll_of_the_logits_command() {
    let dir = tempfile::tempdir().unwrap();
    let text_path = dir.path().join("text.txt");
    let text = "The quick brown fox jumps over the lazy dog. It was a bright cold day in April. ".repeat(2);
    std::fs::write(&text_path, &text).unwrap();
    let model = fixture("st4b");
    let m = model.to_str().unwrap();
    let (n_ctx, n_vocab) = (16usize, 1024usize);
    let args = [
        "perplexity",
        "-m",
        m,
        "-f",
        text_path.to_str().unwrap(),
        "--ctx",
        "16",
        "-t",
        "1",
    ];
    let (stdout, _) = run_ok(&args);

    let tok = tokenizer("st4b");
    let tokens = tok
        .encode_with(
            &text,
            EncodeOptions {
                add_special: true,
                parse_special: false,
            },
        )
        .unwrap();
    let n_chunk = tokens.len() / n_ctx;
    assert!(n_chunk >= 2);
    let (mut sum, mut count) = (0.0f64, 0usize);
    for chunk in tokens.chunks_exact(n_ctx) {
        let mut ids = chunk.to_vec();
        if tok.add_bos() {
            ids[0] = tok.bos().unwrap();
        }
        let csv: Vec<String> = ids.iter().map(u32::to_string).collect();
        let out = dir.path().join("logits.bin");
        let args = [
            "logits",
            "-m",
            m,
            "--tokens",
            &csv.join(","),
            "--all",
            "--out",
            out.to_str().unwrap(),
        ];
        run_ok(&[&args[..], &["--ctx", "16", "-t", "1"]].concat());
        let logits: Vec<f32> = std::fs::read(&out)
            .unwrap()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        assert_eq!(logits.len(), n_ctx * n_vocab);
        for j in n_ctx / 2..n_ctx - 1 {
            let row = &logits[j * n_vocab..(j + 1) * n_vocab];
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let lse = f64::from(max) + row.iter().map(|&l| f64::from(l - max).exp()).sum::<f64>().ln();
            sum += lse - f64::from(row[chunk[j + 1] as usize]);
            count += 1;
        }
    }
    let want = (sum / count as f64).exp();
    let running: Vec<&str> = stdout.split(',').filter(|s| s.trim_start().starts_with('[')).collect();
    assert_eq!(running.len(), n_chunk, "{stdout}");
    let got: f64 = stdout
        .split("PPL = ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(got.is_finite() && got > 1.0);
    assert!(
        (got - want).abs() <= 1e-4 * want + 1e-4,
        "PPL {got} vs exp(mean NLL) {want}"
    );
}

#[test]
fn perplexity_rejects_a_short_text() {
    let dir = tempfile::tempdir().unwrap();
    let text_path = dir.path().join("short.txt");
    std::fs::write(&text_path, "Too short.").unwrap();
    let model = fixture("st4b");
    let args = [
        "perplexity",
        "-m",
        model.to_str().unwrap(),
        "-f",
        text_path.to_str().unwrap(),
        "--ctx",
        "16",
    ];
    let out = smallthinker(&args, None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs at least 32"));
}

#[test]
fn full_context_stops_with_a_message() {
    let model = fixture("st4b");
    let tok = tokenizer("st4b");
    let prompt = encode_prompt(&tok, PROMPT);
    let ctx = prompt.len() + 5;
    let criteria = StopCriteria {
        max_tokens: Some(6),
        ..Default::default()
    };
    let (want, _) = library_greedy("st4b", &prompt, criteria, KvType::F16);
    let ctx_str = ctx.to_string();
    // A stop string that starts with the output's last character holds that character back until the end: it
    // must still be printed when the context runs out.
    let stop = format!("{}\u{1}", want.chars().last().unwrap());
    let args = [
        "run",
        "-m",
        model.to_str().unwrap(),
        "-p",
        PROMPT,
        "--temp",
        "0",
        "-t",
        "1",
        "--ctx",
        &ctx_str,
        "--stop",
        &stop,
    ];
    let (got, stderr) = run_ok(&args);
    // Five generated tokens fill the context; the sixth is sampled and printed, then there is no room to go on.
    assert!(stderr.contains(&format!("context full: {ctx} tokens")), "{stderr}");
    assert_eq!(speed_tokens(&stderr, "generation"), 6);
    assert_eq!(got, want);
}
