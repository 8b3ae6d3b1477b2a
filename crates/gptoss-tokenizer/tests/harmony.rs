//! Harmony rendering and parsing against openai-harmony 0.0.8 goldens (render.json, parse.json).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;

use gptoss_tokenizer::harmony::{
    AnalysisHistory, Effort, Harmony, Message, ParseEvent, ParserStart, Role, StreamParser,
    Strictness, Terminator,
};
use gptoss_tokenizer::Tokenizer;

fn harmony() -> Harmony {
    Harmony::new(Arc::new(Tokenizer::o200k_harmony().unwrap())).unwrap()
}

#[test]
fn renders_like_openai_harmony() {
    let h = harmony();
    let golden = common::load("render.json");
    for case in golden["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let messages: Vec<Message> = serde_json::from_value(case["messages"].clone()).unwrap();
        let ids = match case["mode"].as_str().unwrap() {
            "completion" => {
                h.render_for_completion(&messages, Role::Assistant, AnalysisHistory::DropFinished)
            }
            "conversation" => h.render_conversation(&messages, AnalysisHistory::DropFinished),
            "conversation_keep" => h.render_conversation(&messages, AnalysisHistory::KeepAll),
            "training" => h.render_for_training(&messages, AnalysisHistory::DropFinished),
            other => panic!("mode {other}"),
        }
        .unwrap();
        let want = common::ids(&case["ids"]);
        if ids != want {
            let got = h.tokenizer().decode(&ids).unwrap();
            assert_eq!(
                got,
                case["text"].as_str().unwrap(),
                "case {name}: text differs"
            );
            panic!("case {name}: same text, different ids\n got {ids:?}\nwant {want:?}");
        }
    }
}

#[test]
fn chat_prompt_matches_the_equivalent_conversation() {
    let h = harmony();
    let golden = common::load("render.json");
    let case = golden["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "low_effort_date_developer")
        .unwrap();
    // The golden has a date line; the convenience prompt has none, so compare with the date removed.
    let mut messages: Vec<Message> = serde_json::from_value(case["messages"].clone()).unwrap();
    if let gptoss_tokenizer::harmony::Content::System(sys) = &mut messages[0].content[0] {
        sys.conversation_start_date = None;
    }
    let want = h
        .render_for_completion(&messages, Role::Assistant, AnalysisHistory::DropFinished)
        .unwrap();
    let got = h
        .render_chat_prompt(
            Some("Answer in one sentence."),
            "Name a color.",
            Effort::Low,
        )
        .unwrap();
    assert_eq!(got, want);
    let text = h.tokenizer().decode(&got).unwrap();
    assert!(
        text.contains("Reasoning: low") && text.ends_with("<|start|>assistant"),
        "{text}"
    );
}

fn parse(h: &Harmony, case: &serde_json::Value) -> (Vec<Message>, Vec<ParseEvent>) {
    let start = match case["role"].as_str() {
        Some("assistant") => ParserStart::Header(Role::Assistant),
        Some(other) => panic!("role {other}"),
        None => ParserStart::ExpectStart,
    };
    let strictness = if case["strict"].as_bool().unwrap() {
        Strictness::Strict
    } else {
        Strictness::Lenient
    };
    let mut parser = StreamParser::new(h.clone(), start, strictness);
    let mut events = Vec::new();
    for id in common::ids(&case["ids"]) {
        events.extend(parser.push(id).unwrap());
    }
    events.extend(parser.finish().unwrap());
    (parser.into_messages(), events)
}

#[test]
fn parses_like_openai_harmony() {
    let h = harmony();
    let golden = common::load("parse.json");
    for case in golden["cases"].as_array().unwrap() {
        let (messages, events) = parse(&h, case);
        assert_eq!(
            serde_json::to_value(&messages).unwrap(),
            case["messages"],
            "case {}",
            case["name"]
        );
        // The deltas of each message add up to its text.
        let mut streamed = String::new();
        for e in &events {
            match e {
                ParseEvent::Reasoning(t)
                | ParseEvent::Final(t)
                | ParseEvent::Preamble(t)
                | ParseEvent::ToolCallArgs(t) => streamed.push_str(t),
                ParseEvent::MessageEnd { message, .. } => {
                    assert_eq!(
                        std::mem::take(&mut streamed),
                        message.text_content(),
                        "case {}",
                        case["name"]
                    );
                }
                ParseEvent::ToolCallStart { .. } | ParseEvent::Unparsed(_) => {}
            }
        }
    }
}

#[test]
fn events_classify_channels_and_tool_calls() {
    let h = harmony();
    let golden = common::load("parse.json");
    let find = |name: &str| {
        golden["cases"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap()
            .clone()
    };

    let (_, events) = parse(&h, &find("analysis_then_final"));
    assert_eq!(
        events
            .iter()
            .filter_map(|e| if let ParseEvent::Reasoning(t) = e {
                Some(t.as_str())
            } else {
                None
            })
            .collect::<String>(),
        "Let me think: 2+2."
    );
    assert_eq!(
        events
            .iter()
            .filter_map(|e| if let ParseEvent::Final(t) = e {
                Some(t.as_str())
            } else {
                None
            })
            .collect::<String>(),
        "The answer is 4."
    );
    let ends: Vec<Terminator> = events
        .iter()
        .filter_map(|e| {
            if let ParseEvent::MessageEnd { terminator, .. } = e {
                Some(*terminator)
            } else {
                None
            }
        })
        .collect();
    assert_eq!(ends, vec![Terminator::End, Terminator::Return]);

    for name in [
        "tool_call_recipient_after_channel",
        "tool_call_recipient_before_channel",
    ] {
        let (_, events) = parse(&h, &find(name));
        assert!(
            matches!(&events[0], ParseEvent::ToolCallStart { recipient, .. } if recipient == "functions.get_weather"),
            "{name}: {events:?}"
        );
        assert!(events
            .iter()
            .any(|e| matches!(e, ParseEvent::ToolCallArgs(_))));
        assert!(matches!(
            events.last(),
            Some(ParseEvent::MessageEnd {
                terminator: Terminator::Call,
                ..
            })
        ));
    }

    let (_, events) = parse(&h, &find("preamble_then_call"));
    assert!(
        matches!(&events[0], ParseEvent::Preamble(t) if t.starts_with("Checking")),
        "{events:?}"
    );
}

#[test]
fn strict_rejects_garbage_and_lenient_skips_it() {
    let h = harmony();
    let tok = h.tokenizer();
    let mut ids = tok.encode("junk").unwrap();
    ids.push(tok.special_id("<|start|>").unwrap());
    ids.extend(tok.encode("assistant").unwrap());
    ids.push(tok.special_id("<|channel|>").unwrap());
    ids.extend(tok.encode("final").unwrap());
    ids.push(tok.special_id("<|message|>").unwrap());
    ids.extend(tok.encode("ok").unwrap());
    ids.push(tok.special_id("<|endoftext|>").unwrap());

    let mut strict = StreamParser::new(h.clone(), ParserStart::ExpectStart, Strictness::Strict);
    assert!(strict.push(ids[0]).is_err());

    let mut lenient = StreamParser::new(h.clone(), ParserStart::ExpectStart, Strictness::Lenient);
    for &id in &ids {
        lenient.push(id).unwrap();
    }
    assert_eq!(lenient.last_terminator(), Some(Terminator::EndOfText));
    assert!(lenient.last_terminator().unwrap().stops_generation());
    assert_eq!(lenient.messages().len(), 1);
    assert_eq!(lenient.messages()[0].text_content(), "ok");

    let mut header_eos = StreamParser::new(
        h.clone(),
        ParserStart::Header(Role::Assistant),
        Strictness::Strict,
    );
    header_eos
        .push(tok.special_id("<|channel|>").unwrap())
        .unwrap();
    assert!(header_eos.finish().is_err());
}

#[test]
fn stop_tokens_are_return_call_and_endoftext() {
    let h = harmony();
    let mut stops = h.stop_tokens();
    stops.sort();
    assert_eq!(stops, vec![199999, 200002, 200012]);
}

#[test]
fn lenient_skips_ids_outside_the_vocabulary() {
    let h = harmony();
    let tok = h.tokenizer();
    let mut ids = vec![tok.special_id("<|channel|>").unwrap()];
    ids.extend(tok.encode("final").unwrap());
    ids.push(tok.special_id("<|message|>").unwrap());
    ids.push(tok.vocab_size() as u32 + 5);
    ids.extend(tok.encode("fine").unwrap());
    ids.push(tok.special_id("<|return|>").unwrap());
    let mut lenient = StreamParser::new(
        h.clone(),
        ParserStart::Header(Role::Assistant),
        Strictness::Lenient,
    );
    for &id in &ids {
        lenient.push(id).unwrap();
    }
    assert_eq!(lenient.messages()[0].text_content(), "fine");
    let mut strict = StreamParser::new(
        h.clone(),
        ParserStart::Header(Role::Assistant),
        Strictness::Strict,
    );
    let results: Vec<bool> = ids.iter().map(|&id| strict.push(id).is_ok()).collect();
    assert!(results.contains(&false));
}

/// Ids of `text`, where `<|name|>` is a special token.
fn marked(h: &Harmony, text: &str) -> Vec<u32> {
    let tok = h.tokenizer();
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("<|") {
        out.extend(tok.encode(&rest[..at]).unwrap());
        let end = rest[at..].find("|>").unwrap() + at + 2;
        out.push(tok.special_id(&rest[at..end]).unwrap());
        rest = &rest[end..];
    }
    out.extend(tok.encode(rest).unwrap());
    out
}

/// Lenient parsing of an answer (after `<|start|>assistant`): the concatenated text of each kind
/// of event (reasoning, final, unparsed) and the messages.
fn lenient(h: &Harmony, ids: &[u32]) -> (String, String, String, Vec<Message>) {
    let mut p = StreamParser::new(
        h.clone(),
        ParserStart::Header(Role::Assistant),
        Strictness::Lenient,
    );
    let mut events = Vec::new();
    for &id in ids {
        events.extend(p.push(id).unwrap());
    }
    events.extend(p.finish().unwrap());
    let (mut reasoning, mut fin, mut unparsed) = (String::new(), String::new(), String::new());
    for e in events {
        match e {
            ParseEvent::Reasoning(t) => reasoning.push_str(&t),
            ParseEvent::Final(t) => fin.push_str(&t),
            ParseEvent::Unparsed(t) => unparsed.push_str(&t),
            _ => {}
        }
    }
    (reasoning, fin, unparsed, p.into_messages())
}

#[test]
fn lenient_returns_what_it_cannot_parse_as_unparsed_text() {
    let h = harmony();
    // (generated, reasoning, final, unparsed, messages)
    let cases: [(&str, &str, &str, &str, usize); 6] = [
        // Well formed: nothing unparsed.
        ("<|channel|>analysis<|message|>think<|end|><|start|>assistant<|channel|>final<|message|>Hi<|return|>", "think", "Hi", "", 2),
        // Text between messages (no <|start|>).
        ("<|channel|>analysis<|message|>think<|end|>hello <|channel|>world<|return|>", "think", "", "hello <|channel|>world", 1),
        // A first header that cannot be parsed (a channel without a name), and its content.
        ("<|channel|><|message|>caf\u{e9} ok<|end|>", "", "", "<|channel|><|message|>caf\u{e9} ok", 0),
        // A later header with an unknown role, then a good message.
        ("<|channel|>final<|message|>A<|end|><|start|>bogus<|message|>more<|end|><|start|>assistant<|channel|>final<|message|>B<|return|>", "", "AB", "<|start|>bogus<|message|>more", 2),
        // A later header cut off by the end of the stream.
        ("<|channel|>final<|message|>A<|end|><|start|>assistant<|channel|>fin", "", "A", "<|start|>assistant<|channel|>fin", 1),
        // A terminator between messages is not text.
        ("<|channel|>final<|message|>A<|end|><|end|>", "", "A", "", 1),
    ];
    for (i, (text, reasoning, fin, unparsed, messages)) in cases.into_iter().enumerate() {
        let ids = marked(&h, text);
        let got = lenient(&h, &ids);
        assert_eq!(
            (got.0.as_str(), got.1.as_str(), got.2.as_str(), got.3.len()),
            (reasoning, fin, unparsed, messages),
            "{text}"
        );
        // Strict parsing refuses every case with unparsed text and takes the well-formed one.
        let mut strict = StreamParser::new(
            h.clone(),
            ParserStart::Header(Role::Assistant),
            Strictness::Strict,
        );
        let ok = ids.iter().all(|&id| strict.push(id).is_ok()) && strict.finish().is_ok();
        assert!(!ok || unparsed.is_empty(), "{text}");
        assert!(ok || i > 0, "{text}");
    }
    // An id outside the vocabulary has no text but is reported.
    let mut p = StreamParser::new(h.clone(), ParserStart::ExpectStart, Strictness::Lenient);
    let outside = h.tokenizer().vocab_size() as u32 + 3;
    assert_eq!(
        p.push(outside).unwrap(),
        [ParseEvent::Unparsed(String::new())]
    );
}

/// A tool schema nested deep renders to far more text than its JSON (each level indents every line
/// below it): capped rendering refuses it at the cap, and gives the uncapped ids whenever they fit.
#[test]
fn capped_rendering_bounds_tool_schemas() {
    use gptoss_tokenizer::harmony::{Content, DeveloperContent, SystemContent, ToolDescription};
    let h = harmony();
    let mut schema = serde_json::json!({"type": "string"});
    for i in 0..100 {
        schema = serde_json::json!({"type": "object", "properties": {
            format!("p{i}"): schema, "a": {"type": "number"}, "b": {"type": "number"}}});
    }
    let tool = ToolDescription {
        name: "deep".into(),
        description: "nested".into(),
        parameters: Some(schema),
    };
    let messages = vec![
        Message::with_content(Role::System, Content::System(SystemContent::default())),
        Message::with_content(
            Role::Developer,
            Content::Developer(DeveloperContent::with_functions(None, vec![tool])),
        ),
        Message::text(Role::User, "hi"),
    ];
    let drop = AnalysisHistory::DropFinished;
    let full = h
        .render_for_completion(&messages, Role::Assistant, drop)
        .unwrap();
    let capped = h.render_for_completion_capped(&messages, Role::Assistant, drop, full.len());
    assert_eq!(capped.unwrap(), full);
    for cap in [full.len() - 1, full.len() / 4] {
        let e = h
            .render_for_completion_capped(&messages, Role::Assistant, drop, cap)
            .unwrap_err();
        assert!(
            matches!(e, gptoss_tokenizer::Error::TooManyTokens { cap: c } if c == cap),
            "{e}"
        );
    }
}
