//! Chat templates: a conversation turned into the prompt text a chat model was trained on.
//!
//! A GGUF file carries its template as Jinja (`tokenizer.chat_template`); like llama.cpp, this
//! module recognises the common families by marks in that text (llama.cpp's
//! `llm_chat_detect_template`, in its order) and formats them natively, with the same output as
//! llama.cpp's `llama_chat_apply_template`. A template it does not recognise is an error that
//! names it, never a guess.

use crate::error::{Error, Result};
use crate::gguf::Gguf;

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text of the turn.
    pub content: String,
}

impl Message {
    /// A turn with this role and text.
    pub fn new(role: &str, content: &str) -> Message {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A chat template family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Template {
    /// `<|im_start|>role\ncontent<|im_end|>\n` (Qwen2, SmolLM2, many fine-tunes).
    ChatMl,
    /// `[INST] … [/INST]` (Llama 2, and Mistral's first templates): with a `<<SYS>>` block for
    /// the system turn when `system`, BOS inside the history when `bos_inside`, turns stripped
    /// of surrounding spaces when `strip`.
    Llama2 {
        /// The template has a `<<SYS>>` block.
        system: bool,
        /// Each later turn starts with `<s>`.
        bos_inside: bool,
        /// Turns are stripped of surrounding whitespace.
        strip: bool,
    },
    /// `<|start_header_id|>role<|end_header_id|>\n\ncontent<|eot_id|>` (Llama 3).
    Llama3,
    /// `<|role|>\ncontent<|end|>\n` (Phi 3).
    Phi3,
    /// `<|role|>\ncontent\n` (Falcon 3).
    Falcon3,
    /// `<|role|>\ncontent` (GLM-Edge; llama.cpp also picks it for TinyLlama's template).
    GlmEdge,
    /// `<|role|>\ncontent<|endoftext|>\n` (Zephyr).
    Zephyr,
}

impl Template {
    /// The template of a GGUF model (`tokenizer.chat_template`). Errors: none in the file, or
    /// one this module does not recognise.
    pub fn from_gguf(g: &Gguf) -> Result<Template> {
        let t = g
            .get("tokenizer.chat_template")
            .and_then(|v| v.as_str())
            .ok_or_else(|| Error::Tokenizer("the model has no chat template".into()))?;
        Template::detect(t)
    }

    /// The family of a template's text (Jinja), or of a name (`chatml`, `llama2`,
    /// `llama2-sys`, `llama2-sys-bos`, `llama2-sys-strip`, `llama3`, `phi3`, `falcon3`,
    /// `glmedge`, `zephyr`).
    pub fn detect(t: &str) -> Result<Template> {
        let llama2 = |system, bos_inside, strip| Template::Llama2 {
            system,
            bos_inside,
            strip,
        };
        match t {
            "chatml" => return Ok(Template::ChatMl),
            "llama2" => return Ok(llama2(false, false, false)),
            "llama2-sys" => return Ok(llama2(true, false, false)),
            "llama2-sys-bos" => return Ok(llama2(true, true, false)),
            "llama2-sys-strip" => return Ok(llama2(true, false, true)),
            "llama3" => return Ok(Template::Llama3),
            "phi3" => return Ok(Template::Phi3),
            "falcon3" => return Ok(Template::Falcon3),
            "glmedge" => return Ok(Template::GlmEdge),
            "zephyr" => return Ok(Template::Zephyr),
            _ => {}
        }
        let has = |s: &str| t.contains(s);
        let unsupported = |family: &str| {
            Err(Error::Tokenizer(format!(
                "chat template of the {family} family is not supported (chatml, llama2, llama3, phi3, falcon3, glmedge, zephyr)"
            )))
        };
        if has("<|im_start|>") {
            if has("<|im_sep|>") || has("<end_of_utterance>") {
                return unsupported("Phi 4 / SmolVLM");
            }
            return Ok(Template::ChatMl);
        }
        if t.starts_with("mistral") || has("[INST]") {
            if has("[SYSTEM_PROMPT]")
                || has("' [INST] ' + system_message")
                || has("[AVAILABLE_TOOLS]")
            {
                return unsupported("Mistral v1/v3/v7");
            }
            let (system, bos_inside, strip) = (
                has("<<SYS>>"),
                has("bos_token + '[INST]"),
                has("content.strip()"),
            );
            return Ok(if strip {
                llama2(true, false, true)
            } else if bos_inside {
                llama2(true, true, false)
            } else {
                llama2(system, false, false)
            });
        }
        if has("<|assistant|>") && has("<|end|>") {
            return Ok(Template::Phi3);
        }
        if has("[gMASK]<sop>") {
            return unsupported("ChatGLM 4");
        }
        if has("<|assistant|>") && has("<|user|>") {
            if has("<|tool_declare|>") {
                return unsupported("EXAONE MoE");
            }
            return Ok(if has("</s>") {
                Template::Falcon3
            } else {
                Template::GlmEdge
            });
        }
        if has("<|{{ item['role'] }}|>") && has("<|begin_of_image|>") {
            return Ok(Template::GlmEdge);
        }
        if has("<|user|>") && has("<|endoftext|>") {
            return Ok(Template::Zephyr);
        }
        for (mark, family) in [
            ("bos_token + message['role']", "Monarch"),
            ("<start_of_turn>", "Gemma"),
            ("'\\n\\nAssistant: ' + eos_token", "Orion"),
            ("GPT4 Correct ", "OpenChat"),
            ("### Instruction:", "DeepSeek"),
            ("<|START_OF_TURN_TOKEN|>", "Command R"),
        ] {
            if has(mark) {
                return unsupported(family);
            }
        }
        if has("USER: ") && has("ASSISTANT: ") {
            return unsupported("Vicuna");
        }
        if has("<|start_header_id|>") && has("<|end_header_id|>") {
            return Ok(Template::Llama3);
        }
        unsupported("unrecognised")
    }

    /// The prompt text of `messages`, ending with the assistant's header when
    /// `add_assistant` (generation continues from there).
    pub fn apply(&self, messages: &[Message], add_assistant: bool) -> String {
        let mut s = String::new();
        match *self {
            Template::ChatMl => {
                for m in messages {
                    s += &format!("<|im_start|>{}\n{}<|im_end|>\n", m.role, m.content);
                }
                if add_assistant {
                    s += "<|im_start|>assistant\n";
                }
            }
            Template::Llama2 {
                system,
                bos_inside,
                strip,
            } => {
                let mut inside = true;
                s += "[INST] ";
                for m in messages {
                    let content = if strip { trim(&m.content) } else { &m.content };
                    if !inside {
                        inside = true;
                        s += if bos_inside { "<s>[INST] " } else { "[INST] " };
                    }
                    match m.role.as_str() {
                        "system" if system => s += &format!("<<SYS>>\n{content}\n<</SYS>>\n\n"),
                        "system" => s += &format!("{content}\n"),
                        "user" => s += &format!("{content} [/INST]"),
                        _ => {
                            s += &format!("{content}</s>");
                            inside = false;
                        }
                    }
                }
            }
            Template::Llama3 => {
                for m in messages {
                    s += &format!(
                        "<|start_header_id|>{}<|end_header_id|>\n\n{}<|eot_id|>",
                        m.role,
                        trim(&m.content)
                    );
                }
                if add_assistant {
                    s += "<|start_header_id|>assistant<|end_header_id|>\n\n";
                }
            }
            Template::Phi3 | Template::Falcon3 | Template::GlmEdge | Template::Zephyr => {
                let end = match *self {
                    Template::Phi3 => "<|end|>\n",
                    Template::Falcon3 => "\n",
                    Template::GlmEdge => "",
                    _ => "<|endoftext|>\n",
                };
                for m in messages {
                    s += &format!("<|{}|>\n{}{end}", m.role, m.content);
                }
                if add_assistant {
                    s += if *self == Template::GlmEdge {
                        "<|assistant|>"
                    } else {
                        "<|assistant|>\n"
                    };
                }
            }
        }
        s
    }

    /// The text that ends an assistant turn where it is a token of its own (generation stops
    /// there as at EOS).
    pub fn end_of_turn(&self) -> Option<&'static str> {
        match self {
            Template::ChatMl => Some("<|im_end|>"),
            Template::Llama3 => Some("<|eot_id|>"),
            Template::Phi3 => Some("<|end|>"),
            Template::Zephyr => Some("<|endoftext|>"),
            _ => None,
        }
    }
}

/// `s` without leading and trailing ASCII whitespace (C's `isspace`, as llama.cpp trims).
fn trim(s: &str) -> &str {
    s.trim_matches(|c: char| c.is_ascii_whitespace() || c == '\x0b')
}
