"""End-to-end test of `smallthinker serve` with the official openai client and raw HTTP.

usage: client_test.py SMALLTHINKER_BINARY MODEL.gguf
Starts its own server on a free loopback port (with --api-key) and stops it at the end; exits non-zero on failure.
"""
import http.client
import json
import socket
import subprocess
import sys
import time

import openai

BIN, MODEL = sys.argv[1], sys.argv[2]
KEY = "test-key"
CTX = 256


def start_server():
    args = [BIN, "serve", "-m", MODEL, "--port", "0", "--parallel", "2", "--ctx", str(CTX),
            "--api-key", KEY, "--max-body", "65536", "-t", "1"]
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
    # Start-up log lines (the MoE path, ...) come first, as llama-server's do; the address line last.
    seen = []
    for _ in range(20):
        line = proc.stderr.readline()
        seen.append(line)
        if line.startswith("listening on http://") or not line:
            break
    if not line.startswith("listening on http://"):
        proc.kill()
        raise AssertionError(f"server did not start: {seen!r}")
    host, port = line.strip().removeprefix("listening on http://").rsplit(":", 1)
    return proc, host, int(port)


def raw(method, path, body=None, key=KEY, headers=None):
    conn = http.client.HTTPConnection(HOST, PORT, timeout=60)
    h = dict(headers or {})
    if key:
        h["Authorization"] = f"Bearer {key}"
    if body is not None and not isinstance(body, (bytes, str)):
        body = json.dumps(body)
    conn.request(method, path, body=body, headers=h)
    r = conn.getresponse()
    data = r.read()
    conn.close()
    return r.status, data


def expect_error(status, data, want):
    assert status == want, (status, data)
    err = json.loads(data)["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert err["message"], err
    return err


def run_cli(prompt, n):
    out = subprocess.run([BIN, "run", "-m", MODEL, "-p", prompt, "-n", str(n), "--temp", "0", "--ctx", str(CTX),
                          "-t", "1"], capture_output=True, text=True, check=True)
    return out.stdout


def health():
    return json.loads(raw("GET", "/health", key=None)[1])


proc, HOST, PORT = start_server()
try:
    client = openai.OpenAI(base_url=f"http://{HOST}:{PORT}/v1", api_key=KEY, max_retries=0, timeout=120)
    assert [m.id for m in client.models.list().data] == ["f32.gguf"]

    # Greedy completion equals `smallthinker run`; streaming gives the same text.
    prompt = "The quick brown fox"
    c = client.completions.create(model="m", prompt=prompt, max_tokens=8, temperature=0)
    assert c.choices[0].finish_reason == "length"
    assert c.usage.completion_tokens == 8 and c.usage.prompt_tokens > 0
    cli = run_cli(prompt, 8)
    assert c.choices[0].text == cli, (c.choices[0].text, cli)
    streamed = "".join(ch.choices[0].text for ch in
                       client.completions.create(model="m", prompt=prompt, max_tokens=8, temperature=0, stream=True)
                       if ch.choices)
    assert streamed == cli, (streamed, cli)

    # Stop strings: cut at a piece of the greedy text, which is not part of the output.
    stop = cli[len(cli) // 2:len(cli) // 2 + 2]
    assert stop.strip(), cli
    s = client.completions.create(model="m", prompt=prompt, max_tokens=8, temperature=0, stop=[stop])
    assert s.choices[0].finish_reason == "stop" and s.choices[0].text == cli[:cli.index(stop)], (s, stop)

    # Chat, non-streaming and streaming, greedy: the same answer; usage counts the cached prefix on turn 2.
    msgs = [{"role": "user", "content": "Hi there"}]
    a = client.chat.completions.create(model="m", messages=msgs, max_tokens=6, temperature=0)
    answer = a.choices[0].message.content
    assert a.choices[0].message.role == "assistant" and a.usage.completion_tokens <= 6
    chunks = list(client.chat.completions.create(model="m", messages=msgs, max_tokens=6, temperature=0,
                                                  stream=True, stream_options={"include_usage": True}))
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == answer
    assert chunks[-1].usage.completion_tokens == a.usage.completion_tokens
    turn2 = msgs + [{"role": "assistant", "content": answer}, {"role": "user", "content": "And then?"}]
    b = client.chat.completions.create(model="m", messages=turn2, max_tokens=4, temperature=0)
    assert b.usage.prompt_tokens_details.cached_tokens >= a.usage.prompt_tokens, b.usage

    # A prompt that shares only its start with a slot's tokens: the cache goes back to the shared prefix (as
    # llama-server's does), and the greedy text still equals `smallthinker run`.
    base = "Once upon a time, in a land far away, there lived a small model that"
    p1, p2 = base + " ran on a phone", base + " nobody had heard of"
    client.completions.create(model="m", prompt=p1, max_tokens=4, temperature=0)
    d = client.completions.create(model="m", prompt=p2, max_tokens=8, temperature=0)
    t1, t2 = (json.loads(raw("POST", "/tokenize", {"content": p})[1])["tokens"] for p in (p1, p2))
    shared = next(i for i, (a, b) in enumerate(zip(t1, t2)) if a != b)
    bos = d.usage.prompt_tokens - len(t2)  # 1 if the prompt gets a BOS that /tokenize leaves out
    assert 0 < shared < len(t2) and d.usage.prompt_tokens_details.cached_tokens == shared + bos, (d.usage, shared)
    assert d.choices[0].text == run_cli(p2, 8), (d.choices[0].text, run_cli(p2, 8))

    # Seeds: the same seed gives the same sample, at a temperature where samples vary.
    def sample(seed):
        return client.completions.create(model="m", prompt=prompt, max_tokens=8, temperature=1.5,
                                         top_p=1.0, seed=seed, extra_body={"top_k": 0, "min_p": 0.0}).choices[0].text
    assert sample(7) == sample(7)
    assert len({sample(s) for s in (1, 2, 3)}) > 1

    # Log-probabilities: the greedy token is the most likely alternative, alternatives sorted.
    lp = client.chat.completions.create(model="m", messages=msgs, max_tokens=3, temperature=0, logprobs=True,
                                        top_logprobs=3).choices[0].logprobs.content
    assert len(lp) == 3
    for t in lp:
        assert len(t.top_logprobs) == 3 and t.top_logprobs[0].token == t.token
        assert abs(t.top_logprobs[0].logprob - t.logprob) < 1e-6 and t.logprob <= 0
        assert t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob >= t.top_logprobs[2].logprob
    clp = client.completions.create(model="m", prompt=prompt, max_tokens=3, temperature=0, logprobs=2)
    assert len(clp.choices[0].logprobs.tokens) == 3 and len(clp.choices[0].logprobs.top_logprobs[0]) == 2

    # The API key is required (not on /health).
    try:
        openai.OpenAI(base_url=f"http://{HOST}:{PORT}/v1", api_key="wrong", max_retries=0).models.list()
        raise AssertionError("a wrong key was accepted")
    except openai.AuthenticationError:
        pass
    expect_error(*raw("POST", "/v1/completions", {"prompt": "x"}, key=None), 401)
    assert health()["status"] == "ok"

    # Raw HTTP error cases: always an OpenAI error object, never a crash.
    expect_error(*raw("POST", "/v1/completions", "{bad json"), 400)
    expect_error(*raw("POST", "/v1/completions", {"prompt": "x", "max_tokens": "ten"}), 400)
    expect_error(*raw("POST", "/v1/chat/completions", {"messages": "hi"}), 400)
    expect_error(*raw("POST", "/v1/chat/completions", {"messages": []}), 400)
    err = expect_error(*raw("POST", "/v1/completions", {"prompt": [5] * (CTX + 10)}), 400)
    assert err["code"] == "context_length_exceeded", err
    err = expect_error(*raw("POST", "/v1/completions", {"prompt": "x", "max_tokens": CTX + 1}), 400)
    assert err["param"] == "max_tokens", err
    expect_error(*raw("POST", "/v1/completions", {"prompt": [999999]}), 400)
    expect_error(*raw("POST", "/v1/completions", {"prompt": "x", "temperature": 1, "top_p": -1}), 400)
    expect_error(*raw("POST", "/v1/completions", json.dumps({"prompt": "x" * 100000})), 413)
    expect_error(*raw("GET", "/v1/nothing"), 404)
    st, data = raw("POST", "/v1/completions", {"prompt": "x", "max_tokens": 1, "no_such_field": [1, 2]})
    assert st == 200 and json.loads(data)["usage"]["completion_tokens"] == 1, data

    # tokenize / detokenize as llama-server has them.
    st, data = raw("POST", "/tokenize", {"content": "Hello world"})
    toks = json.loads(data)["tokens"]
    assert st == 200 and toks and all(isinstance(t, int) for t in toks)
    st, data = raw("POST", "/detokenize", {"tokens": toks})
    assert st == 200 and json.loads(data)["content"] == "Hello world", data
    st, data = raw("POST", "/tokenize", {"content": "Hello", "with_pieces": True})
    assert "".join(p["piece"] for p in json.loads(data)["tokens"]) == "Hello", data

    # A client that disconnects mid-stream frees its slot.
    s = socket.create_connection((HOST, PORT))
    body = json.dumps({"prompt": "a", "max_tokens": CTX - 10, "stream": True, "temperature": 0})
    s.sendall((f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
               f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}").encode())
    got = b""
    while got.count(b"data:") < 2:
        got += s.recv(4096)
    assert health()["slots_processing"] == 1
    s.close()
    deadline = time.time() + 30
    while health()["slots_processing"] != 0:
        assert time.time() < deadline, "the slot of a disconnected client was not freed"
        time.sleep(0.1)
    # and the server still answers
    assert client.completions.create(model="m", prompt="a", max_tokens=1).usage.completion_tokens == 1
    assert proc.poll() is None, "the server exited"
    print("serve client test: ok")
finally:
    proc.terminate()
    proc.wait(timeout=10)
