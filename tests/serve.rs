//! `smallthinker serve` end to end: tests/serve/client_test.py drives a live server (started by the script on a
//! free loopback port) with the official `openai` client and raw HTTP: chat and completions, streaming and not,
//! stop strings, seeds, logprobs, the prompt cache, greedy output equal to `smallthinker run`, every error case,
//! the API key, and a client that disconnects mid-stream; and concurrent requests equal to single ones.
use std::process::Command;

#[test]
fn openai_client_against_a_live_server() {
    let python = std::env::var("SMALLTHINKER_PYTHON")
        .expect("SMALLTHINKER_PYTHON must name a python with the `openai` package (tools/test.sh sets it up)");
    let root = env!("CARGO_MANIFEST_DIR");
    let check = Command::new(&python).args(["-c", "import openai"]).status();
    assert!(
        check.is_ok_and(|s| s.success()),
        "{python} cannot import openai: pip install openai (tools/test.sh pins the version)"
    );
    let out = Command::new(&python)
        .arg(format!("{root}/tests/serve/client_test.py"))
        .arg(env!("CARGO_BIN_EXE_smallthinker"))
        .arg(format!("{root}/tests/fixtures/model/st4b/f32.gguf"))
        .output()
        .expect("running the client test");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "client test failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("serve client test: ok"), "{stdout}");
}

/// tests/serve/parallel_test.py: three concurrent greedy requests through `--parallel 3` (their decode steps
/// batched in one graph) each give the text the same request gives alone. Standard library only.
#[test]
fn concurrent_greedy_requests_equal_single_ones() {
    let python = std::env::var("SMALLTHINKER_PYTHON").unwrap_or_else(|_| "python3".to_string());
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new(&python)
        .arg(format!("{root}/tests/serve/parallel_test.py"))
        .arg(env!("CARGO_BIN_EXE_smallthinker"))
        .arg(format!("{root}/models/smallthinker-tiny/smallthinker-tiny-f32.gguf"))
        .output()
        .expect("running the parallel test");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "parallel test failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("serve parallel test: ok"), "{stdout}");
}
