//! Chat templates: the Jinja template a model ships, rendered as transformers'
//! `apply_chat_template` renders it (trim_blocks, lstrip_blocks, `raise_exception`,
//! Python string methods), with minijinja.

use crate::error::{PipelineError, Result};
use serde::Serialize;

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn user(content: &str) -> Self {
        Message { role: "user".into(), content: content.into() }
    }
}

/// Renders `template` for `messages`; `add_generation_prompt` appends the assistant's turn
/// opener. `bos_token`/`eos_token` are the strings the template may use.
pub fn render(
    template: &str,
    messages: &[Message],
    add_generation_prompt: bool,
    bos_token: &str,
    eos_token: &str,
) -> Result<String> {
    let err = |msg: String| PipelineError::Invalid { what: "chat template", msg };
    let mut env = minijinja::Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", |msg: String| -> std::result::Result<String, minijinja::Error> {
        Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
    });
    env.add_template("chat", template).map_err(|e| err(format!("does not parse: {e}")))?;
    let tmpl = env.get_template("chat").map_err(|e| err(e.to_string()))?;
    tmpl.render(minijinja::context! {
        messages => messages,
        add_generation_prompt => add_generation_prompt,
        bos_token => bos_token,
        eos_token => eos_token,
    })
    .map_err(|e| err(format!("rendering failed: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    // SmolLM2-Instruct's template, as its tokenizer_config.json carries it.
    const SMOLLM2: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn smollm2_template_renders_like_transformers() {
        let out =
            render(SMOLLM2, &[Message::user("What is the capital of France?")], true, "<|im_start|>", "<|im_end|>")
                .unwrap();
        assert_eq!(
            out,
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn python_methods_blocks_and_errors() {
        let t = "{% for m in messages %}\n  {{ m.content.strip() }}|\n{% endfor %}{% if messages|length > 1 %}{{ raise_exception('one message only') }}{% endif %}";
        assert_eq!(render(t, &[Message::user("  hi  ")], false, "", "").unwrap(), "  hi|\n");
        let e = render(t, &[Message::user("a"), Message::user("b")], false, "", "").unwrap_err().to_string();
        assert!(e.contains("one message only"), "{e}");
        assert!(render("{% for %}", &[], false, "", "").unwrap_err().to_string().contains("does not parse"));
    }
}
