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
                ParseEvent::ToolCallStart { .. } => {}
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
