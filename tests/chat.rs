//! Chat templates rendered with minijinja against Python jinja2 configured like transformers
//! (tests/fixtures/chat_templates.json from tools/py/gen_chat_fixture.py).
mod tokenizer_support;

use std::collections::BTreeMap;

use smallthinker::chat::{ChatError, ChatTemplate, Message};
use tokenizer_support::{fixture, spec, tokenizer};

#[derive(serde::Deserialize)]
struct Fixture {
    bos_token: String,
    eos_token: String,
    templates: BTreeMap<String, String>,
    conversations: BTreeMap<String, Vec<FixtureMessage>>,
    cases: Vec<Case>,
}

#[derive(serde::Deserialize)]
struct FixtureMessage {
    role: String,
    content: String,
}

#[derive(serde::Deserialize)]
struct Case {
    template: String,
    conversation: String,
    add_generation_prompt: bool,
    expected: String,
}

fn load_fixture() -> Fixture {
    serde_json::from_str(&std::fs::read_to_string(fixture("chat_templates.json")).unwrap()).unwrap()
}

fn gguf_template() -> ChatTemplate {
    ChatTemplate::for_vocab(spec()).expect("the vendored GGUF has tokenizer.chat_template")
}

#[test]
fn chatml_from_the_gguf_with_and_without_a_system_prompt() {
    let t = gguf_template();
    let user = [Message::user("Hello!")];
    // The template adds its default system turn only when the first message is not a system message.
    assert_eq!(
        t.render(&user, true).unwrap(),
        "<|im_start|>system\nYou are a helpful assistant<|im_end|>\n\
         <|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n"
    );
    assert_eq!(
        t.render_with_system(Some("You are terse."), &user, true).unwrap(),
        "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n"
    );
    assert_eq!(
        t.render_with_system(None, &user, false).unwrap(),
        "<|im_start|>system\nYou are a helpful assistant<|im_end|>\n<|im_start|>user\nHello!<|im_end|>\n"
    );
    // The rendered prompt tokenizes with the ChatML control tokens when special tokens are parsed.
    let ids = tokenizer().encode(&t.render(&user, true).unwrap(), true).unwrap();
    assert_eq!(ids.iter().filter(|&&id| id == 151644).count(), 3);
    assert_eq!(ids.iter().filter(|&&id| id == 151645).count(), 2);
}

#[test]
fn renders_like_python_jinja2() {
    let fx = load_fixture();
    assert_eq!(
        spec().chat_template.as_deref(),
        Some(fx.templates["qwen2_gguf"].as_str()),
        "the fixture was made from the vendored GGUF's template"
    );
    assert_eq!(fx.cases.len(), 12);
    for case in &fx.cases {
        let t = ChatTemplate::new(&fx.templates[&case.template])
            .unwrap()
            .with_special_tokens(Some(fx.bos_token.clone()), Some(fx.eos_token.clone()));
        let messages: Vec<Message> = fx.conversations[&case.conversation]
            .iter()
            .map(|m| Message::new(&m.role, &m.content))
            .collect();
        let got = t.render(&messages, case.add_generation_prompt).unwrap();
        assert_eq!(
            got, case.expected,
            "template {} conversation {} add_generation_prompt {}",
            case.template, case.conversation, case.add_generation_prompt
        );
    }
}

#[test]
fn a_vocab_without_a_template_is_a_clear_error() {
    let mut s = spec().clone();
    s.chat_template = None;
    let err = ChatTemplate::for_vocab(&s).unwrap_err();
    assert!(matches!(err, ChatError::NoTemplate), "{err:?}");
    assert!(err.to_string().contains("tokenizer.chat_template"), "{err}");
}

#[test]
fn syntax_errors_say_where() {
    let err = ChatTemplate::new("{% for m in messages %}\n{{ m.content }\n{% endfor %}").unwrap_err();
    let ChatError::Syntax { line, detail } = &err else {
        panic!("expected a syntax error, got {err:?}")
    };
    assert_eq!(*line, Some(2));
    assert!(err.to_string().contains("syntax error"), "{err}");
    assert!(detail.contains("m.content"), "{detail}");
}

#[test]
fn render_errors_say_what_failed() {
    let t = ChatTemplate::new("ok\n{{ messages[0].content | no_such_filter }}").unwrap();
    let err = t.render(&[Message::user("x")], false).unwrap_err();
    let ChatError::Render { line, detail } = &err else {
        panic!("expected a render error, got {err:?}")
    };
    assert_eq!(*line, Some(2));
    assert!(detail.contains("no_such_filter"), "{detail}");

    let t = ChatTemplate::new("{{ messages[0].nope.deeper }}").unwrap();
    let err = t.render(&[Message::user("x")], false).unwrap_err();
    assert!(matches!(err, ChatError::Render { .. }), "{err:?}");
}

#[test]
fn raise_exception_becomes_a_clear_error() {
    let fx = load_fixture();
    let t = ChatTemplate::new(&fx.templates["features"]).unwrap();
    let err = t
        .render(&[Message::user("hi"), Message::system("late")], false)
        .unwrap_err();
    match err {
        ChatError::Raised { message } => assert_eq!(message, "system message must come first"),
        other => panic!("expected Raised, got {other:?}"),
    }
}
