//! The tokenizer imported from the default model's GGUF against the reference ids in
//! `tests/fixtures/smollm2-reference.json` (made with Hugging Face `tokenizers` on the same
//! file). Needs the default model: run `palr model fetch` first.

use std::path::PathBuf;

use palr::tokenizer::Tokenizer;
use serde_json::Value;

fn fixture() -> Value {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/smollm2-reference.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn tokenizer() -> Tokenizer {
    let dir = palr::gguf::require_default_model_dir().unwrap_or_else(|e| panic!("{e}"));
    Tokenizer::from_file(dir.join("tokenizer.json")).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// Every (text, ids) pair of the fixture.
fn cases(fx: &Value) -> Vec<(String, String, Vec<u32>)> {
    let mut out = Vec::new();
    for t in fx["tokenizer"].as_array().unwrap() {
        out.push((
            format!("tokenizer/{}", t["name"].as_str().unwrap()),
            t["text"].as_str().unwrap().to_string(),
            ids(&t["ids"]),
        ));
    }
    let ct = &fx["chat_template"];
    out.push((
        "chat_template.rendered".into(),
        ct["rendered"].as_str().unwrap().into(),
        ids(&ct["rendered_ids"]),
    ));
    for l in fx["logits"].as_array().unwrap() {
        out.push((
            format!("logits/{}", l["name"].as_str().unwrap()),
            l["text"].as_str().unwrap().into(),
            ids(&l["ids"]),
        ));
    }
    for g in fx["greedy"].as_array().unwrap() {
        out.push((
            format!("greedy/{}", g["name"].as_str().unwrap()),
            g["prompt_text"].as_str().unwrap().into(),
            ids(&g["prompt_ids"]),
        ));
    }
    out
}

#[test]
fn encodes_every_reference_string_exactly() {
    let fx = fixture();
    let tok = tokenizer();
    let cases = cases(&fx);
    assert!(cases.len() > 35, "fixture lost its cases? {}", cases.len());
    for (name, text, want) in &cases {
        assert_eq!(&tok.encode(text, false).unwrap(), want, "{name}: {text:?}");
        // This tokenizer adds no BOS even when asked for special tokens (as the reference).
        assert_eq!(
            &tok.encode(text, true).unwrap(),
            want,
            "{name} (add_special_tokens)"
        );
    }
}

#[test]
fn token_strings_and_decoding_match_reference() {
    let fx = fixture();
    let tok = tokenizer();
    for t in fx["tokenizer"].as_array().unwrap() {
        let name = t["name"].as_str().unwrap();
        let ids = ids(&t["ids"]);
        let tokens: Vec<String> = ids.iter().map(|&i| tok.id_to_token(i).unwrap()).collect();
        let want: Vec<&str> = t["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap())
            .collect();
        assert_eq!(tokens, want, "{name}");
        for (tk, &id) in tokens.iter().zip(&ids) {
            assert_eq!(tok.token_to_id(tk), Some(id), "{name}: {tk:?}");
        }
        let decoded = tok.decode(&ids, false).unwrap();
        assert_eq!(decoded, t["decoded"].as_str().unwrap(), "{name}");
        assert_eq!(decoded, t["text"].as_str().unwrap(), "{name}: round trip");
    }
    // Greedy continuations decode to the reference text, special tokens included.
    for g in fx["greedy"].as_array().unwrap() {
        let c = ids(&g["continuation_ids"]);
        assert_eq!(
            tok.decode(&c, false).unwrap(),
            g["continuation_text"].as_str().unwrap(),
            "{}",
            g["name"]
        );
    }
    // skip_special drops the control tokens only.
    let rendered = ids(&fx["chat_template"]["rendered_ids"]);
    let plain = tok.decode(&rendered, true).unwrap();
    assert!(!plain.contains("<|im_"), "{plain:?}");
    assert!(
        plain.starts_with("system\nYou are a helpful AI assistant"),
        "{plain:?}"
    );
}

#[test]
fn special_tokens_match_reference() {
    let fx = fixture();
    let tok = tokenizer();
    assert_eq!(
        tok.vocab_size() as u64,
        fx["vocab_size_tokenizer"].as_u64().unwrap()
    );
    for (content, id) in fx["special_tokens"]["added_tokens"].as_object().unwrap() {
        let id = id.as_u64().unwrap() as u32;
        assert_eq!(tok.token_to_id(content), Some(id), "{content}");
        assert!(tok.is_special(id), "{content}");
        assert_eq!(tok.token_bytes(id), content.as_bytes());
        assert_eq!(
            tok.encode(content, false).unwrap(),
            [id],
            "{content} in text"
        );
    }
    assert!(!tok.is_special(17));
    let st = &fx["special_tokens"];
    assert_eq!(
        tok.bos_id(),
        Some(st["bos_token"]["id"].as_u64().unwrap() as u32)
    );
    assert_eq!(
        tok.eos_id(),
        Some(st["eos_token"]["id"].as_u64().unwrap() as u32)
    );
}

#[test]
fn token_bytes_concatenate_to_the_text() {
    let fx = fixture();
    let tok = tokenizer();
    for (name, text, ids) in cases(&fx) {
        let bytes: Vec<u8> = ids
            .iter()
            .flat_map(|&i| tok.token_bytes(i).to_vec())
            .collect();
        assert_eq!(bytes, text.as_bytes(), "{name}");
    }
    // Table sanity: every id has bytes, and the table is indexed by id.
    let table = tok.token_bytes_table();
    assert_eq!(table.len(), tok.vocab_size());
    assert!(table.iter().all(|b| !b.is_empty()));
    let space_the = tok.token_to_id("Ġthe").unwrap();
    assert_eq!(tok.token_bytes(space_the), b" the");
    assert_eq!(tok.token_bytes(tok.token_to_id("Ċ").unwrap()), b"\n");
    assert_eq!(tok.token_bytes(u32::MAX), b"");
}

#[test]
fn stream_decoding_equals_decode_and_never_splits_characters() {
    let fx = fixture();
    let tok = tokenizer();
    let mut saw_split_char = false;
    for (name, text, ids) in cases(&fx) {
        let mut dec = tok.stream_decoder(false);
        let mut out = String::new();
        for &id in &ids {
            let piece = dec.push(id).unwrap();
            assert!(!piece.contains('\u{FFFD}'), "{name}: {piece:?}");
            if piece.is_empty() {
                saw_split_char = true;
            }
            out.push_str(&piece);
        }
        out.push_str(&dec.finish());
        assert_eq!(out, text, "{name}");
    }
    assert!(
        saw_split_char,
        "no fixture string splits a character across tokens"
    );
    // skip_special in streaming matches decode(skip_special = true).
    let rendered = ids(&fx["chat_template"]["rendered_ids"]);
    let mut dec = tok.stream_decoder(true);
    let streamed: String = rendered.iter().map(|&i| dec.push(i).unwrap()).collect();
    assert_eq!(streamed, tok.decode(&rendered, true).unwrap());
    // An incomplete character at the end becomes U+FFFD; unknown ids are errors.
    let emoji = tok.encode("😀", false).unwrap();
    assert!(emoji.len() > 1, "{emoji:?}");
    let mut dec = tok.stream_decoder(false);
    assert_eq!(dec.push(emoji[0]).unwrap(), "");
    assert_eq!(dec.finish(), "\u{FFFD}");
    assert!(tok.stream_decoder(false).push(1 << 30).is_err());
    assert!(tok.decode(&[1 << 30], false).is_err());
}
