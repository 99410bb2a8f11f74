//! Chat templates: rendering a conversation into a prompt the way the model was
//! trained to see it.
//!
//! Hugging Face models ship a Jinja template (`chat_template` in
//! `tokenizer_config.json`, or a `chat_template.jinja` file). It is rendered with
//! minijinja plus its Python-compatibility methods (`.strip()`, `.startswith()`,
//! ...), with the variables transformers provides: `messages`,
//! `add_generation_prompt`, `bos_token`, `eos_token` and `raise_exception`.

use std::path::Path;

use minijinja::{Environment, Error, ErrorKind, context};
use serde::{Deserialize, Serialize};

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
}

#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error("{path}: {msg}")]
    File { path: String, msg: String },
    #[error("chat template does not compile: {0}")]
    Compile(String),
    #[error("chat template failed to render: {0}")]
    Render(String),
}

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

fn token_string(v: Option<&serde_json::Value>) -> String {
    match v {
        Some(serde_json::Value::String(s)) => s.clone(),
        // Older configs store added tokens as objects: {"content": "<s>", ...}.
        Some(serde_json::Value::Object(o)) => o
            .get("content")
            .and_then(|c| c.as_str())
            .unwrap_or("")
            .to_string(),
        _ => String::new(),
    }
}

impl ChatTemplate {
    /// Compiles `template`.
    pub fn new(template: &str, bos_token: &str, eos_token: &str) -> Result<Self, ChatError> {
        let mut env = Environment::new();
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> Result<String, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_template_owned("chat", template.to_string())
            .map_err(|e| ChatError::Compile(e.to_string()))?;
        Ok(ChatTemplate {
            env,
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
        })
    }

    /// The model directory's template (`chat_template.jinja`, else `chat_template` in
    /// `tokenizer_config.json`); `None` when the model has none (a base model).
    pub fn from_model_dir(dir: &Path) -> Result<Option<Self>, ChatError> {
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg: serde_json::Value = match std::fs::read_to_string(&cfg_path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| ChatError::File {
                path: cfg_path.display().to_string(),
                msg: format!("invalid JSON: {e}"),
            })?,
            Err(_) => serde_json::Value::Null,
        };
        let bos = token_string(cfg.get("bos_token"));
        let eos = token_string(cfg.get("eos_token"));
        let jinja = dir.join("chat_template.jinja");
        let template = if jinja.exists() {
            Some(
                std::fs::read_to_string(&jinja).map_err(|e| ChatError::File {
                    path: jinja.display().to_string(),
                    msg: e.to_string(),
                })?,
            )
        } else {
            match cfg.get("chat_template") {
                Some(serde_json::Value::String(s)) => Some(s.clone()),
                // A list of named templates: use "default".
                Some(serde_json::Value::Array(list)) => list
                    .iter()
                    .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                    .and_then(|t| t.get("template").and_then(|s| s.as_str()))
                    .map(str::to_string),
                _ => None,
            }
        };
        template.map(|t| Self::new(&t, &bos, &eos)).transpose()
    }

    /// Renders `messages`; with `add_generation_prompt` the text ends where the
    /// assistant's reply begins.
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, ChatError> {
        let tmpl = self
            .env
            .get_template("chat")
            .map_err(|e| ChatError::Render(e.to_string()))?;
        tmpl.render(context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token,
            eos_token => self.eos_token,
        })
        .map_err(|e| ChatError::Render(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_reference_smollm2_template() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/smollm2-reference.json"
        ))
        .unwrap();
        let fx: serde_json::Value = serde_json::from_str(&text).unwrap();
        let ct = &fx["chat_template"];
        let t = ChatTemplate::new(
            ct["template"].as_str().unwrap(),
            "<|im_start|>",
            "<|im_end|>",
        )
        .unwrap();
        let messages: Vec<Message> = serde_json::from_value(ct["messages"].clone()).unwrap();
        let got = t
            .render(&messages, ct["add_generation_prompt"].as_bool().unwrap())
            .unwrap();
        assert_eq!(got, ct["rendered"].as_str().unwrap());
        // With a system message the default one is not added.
        let got = t
            .render(
                &[
                    Message::new("system", "Be brief."),
                    Message::new("user", "Hi"),
                ],
                false,
            )
            .unwrap();
        assert_eq!(
            got,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        );
    }

    #[test]
    fn python_methods_and_raise_exception() {
        let t = ChatTemplate::new(
            "{% if messages[0].role != 'user' %}{{ raise_exception('first must be user') }}{% endif %}\
             {{ bos_token }}{{ messages[0].content.strip() }}",
            "<s>",
            "</s>",
        )
        .unwrap();
        assert_eq!(
            t.render(&[Message::new("user", "  hi  ")], false).unwrap(),
            "<s>hi"
        );
        let err = t
            .render(&[Message::new("system", "x")], false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("first must be user"), "{err}");
        assert!(ChatTemplate::new("{% if %}", "", "").is_err());
    }

    #[test]
    fn reads_template_from_model_dir() {
        let d = std::env::temp_dir().join(format!("palr-chat-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        assert!(ChatTemplate::from_model_dir(&d).unwrap().is_none());
        std::fs::write(
            d.join("tokenizer_config.json"),
            r#"{"bos_token":{"content":"<s>"},"eos_token":"</s>","chat_template":[{"name":"default","template":"{{ bos_token }}{{ messages[0].content }}{{ eos_token }}"}]}"#,
        )
        .unwrap();
        let t = ChatTemplate::from_model_dir(&d).unwrap().unwrap();
        assert_eq!(
            t.render(&[Message::new("user", "x")], true).unwrap(),
            "<s>x</s>"
        );
        std::fs::write(d.join("tokenizer_config.json"), "{nope").unwrap();
        assert!(ChatTemplate::from_model_dir(&d).is_err());
        let _ = std::fs::remove_dir_all(&d);
    }
}
