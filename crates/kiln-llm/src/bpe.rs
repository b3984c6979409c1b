//! BPE by merge ranks. GPT-2-style byte-level BPE (`tokenizer.ggml.model = "gpt2"`: Qwen2,
//! SmolLM, Llama 3), as llama.cpp runs it: the text is split by the model's pre-tokenizer
//! regexes, each piece's UTF-8 bytes are spelled in GPT-2's printable byte alphabet, and
//! adjacent symbols are merged, lowest merge rank first (ties: the leftmost), while a merge
//! applies. SentencePiece-style BPE as Hugging Face's `tokenizer.json` has it (Llama 2's):
//! spaces become `▁` with one put in front, the characters are merged the same way, and a
//! symbol left that is not a token becomes its UTF-8 bytes' `<0xXX>` tokens (byte fallback).

use std::collections::HashMap;

use fancy_regex::Regex;

use crate::error::{Error, Result};

/// GPT-2's pre-tokenizer (Hugging Face's `ByteLevel` with `use_regex`).
pub(crate) const GPT2: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
/// Qwen2's (and StableLM 2's).
const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Llama 3's.
const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// How a BPE model spells text before merging.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Alphabet {
    /// UTF-8 bytes in GPT-2's printable byte alphabet.
    Bytes,
    /// Characters, spaces as `▁`, and byte tokens for what the vocabulary lacks.
    Metaspace {
        /// Where a `▁` is put in front.
        front: Front,
        /// Words (each from a `▁` to the next) merge apart.
        split: bool,
    },
}

/// How a SentencePiece-style model puts `▁` in front of a text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Front {
    /// Which texts.
    pub(crate) prepend: Prepend,
    /// Not in front of a text that starts with a space (the `Metaspace` pre-tokenizer's rule;
    /// a `Prepend` normalizer puts one in front of every text).
    pub(crate) unless_space: bool,
}

/// Which texts a SentencePiece-style model puts a `▁` in front of (Hugging Face's
/// `prepend_scheme`; a `Prepend` normalizer is `Always`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Prepend {
    /// None.
    Never,
    /// The input's first text only (not a text after a special token).
    First,
    /// Every text between special tokens.
    Always,
}

/// A BPE model.
#[derive(Debug, Clone)]
pub(crate) struct Bpe {
    alphabet: Alphabet,
    /// Merge rank of each `"left right"` pair.
    ranks: HashMap<String, u32>,
    /// The pre-tokenizer: each regex splits the pieces the one before it made.
    splits: Vec<Regex>,
    /// A whole piece that is a token is taken as it is (Llama 3).
    ignore_merges: bool,
    /// GPT-2's printable character for each byte, and back.
    to_char: [char; 256],
    to_byte: HashMap<char, u8>,
}

impl Bpe {
    /// A model from its pre-tokenizer regexes (applied in turn) and merge list (`"a b"`).
    pub(crate) fn from_regexes(
        exprs: &[&str],
        merges: &[String],
        ignore_merges: bool,
    ) -> Result<Bpe> {
        let splits = exprs
            .iter()
            .map(|e| Regex::new(e).map_err(|e| Error::Tokenizer(format!("regex: {e}"))))
            .collect::<Result<_>>()?;
        let mut ranks = HashMap::with_capacity(merges.len());
        for (i, m) in merges.iter().enumerate() {
            if m.split(' ').count() != 2 {
                return Err(Error::Tokenizer(format!(
                    "merge {i} `{m}` is not two symbols"
                )));
            }
            ranks.entry(m.clone()).or_insert(i as u32);
        }
        let to_char = byte_chars();
        let to_byte = to_char
            .iter()
            .enumerate()
            .map(|(b, &c)| (c, b as u8))
            .collect();
        Ok(Bpe {
            alphabet: Alphabet::Bytes,
            ranks,
            splits,
            ignore_merges,
            to_char,
            to_byte,
        })
    }

    /// A SentencePiece-style model from its merge list (`"a b"`).
    pub(crate) fn metaspace(merges: &[String], front: Front, split: bool) -> Result<Bpe> {
        Ok(Bpe {
            alphabet: Alphabet::Metaspace { front, split },
            ..Bpe::from_regexes(&[], merges, false)?
        })
    }

    /// Whether the input gets a `▁` in front (a decoder strips that space again).
    pub(crate) fn prepends(&self) -> bool {
        match self.alphabet {
            Alphabet::Metaspace { front, .. } => front.prepend != Prepend::Never,
            Alphabet::Bytes => false,
        }
    }

    /// The model for GGUF's `tokenizer.ggml.pre` name and merge list. Returns also whether BOS
    /// is added by default for it. Errors: an unknown pre-tokenizer, a malformed merge.
    pub(crate) fn new(pre: &str, merges: &[String]) -> Result<(Bpe, bool)> {
        let (exprs, ignore_merges, add_bos): (&[&str], bool, bool) = match pre {
            "gpt-2" | "gpt2" | "mpt" | "olmo" => (&[GPT2], false, false),
            "qwen2" | "stablelm2" => (&[QWEN2], false, false),
            "llama3" | "llama-v3" | "llama-bpe" => (&[LLAMA3], true, true),
            "smollm" => (&[r"\p{N}", GPT2], false, false),
            other => {
                return Err(Error::Tokenizer(format!(
                    "pre-tokenizer `{other}` is not supported (gpt-2, qwen2, llama-bpe, smollm)"
                )));
            }
        };
        Ok((Bpe::from_regexes(exprs, merges, ignore_merges)?, add_bos))
    }

    /// The ids of `text` (`first`: the input's first text, before any special token), looked
    /// up in `ids`.
    pub(crate) fn encode(
        &self,
        text: &str,
        first: bool,
        ids: &HashMap<String, u32>,
        out: &mut Vec<u32>,
    ) -> Result<()> {
        if let Alphabet::Metaspace { front, split } = self.alphabet {
            if text.is_empty() {
                return Ok(());
            }
            let mut spelled = String::with_capacity(text.len() + 3);
            let wanted = match front.prepend {
                Prepend::Always => true,
                Prepend::First => first,
                Prepend::Never => false,
            };
            if wanted && !(front.unless_space && text.starts_with(' ')) {
                spelled.push('\u{2581}');
            }
            spelled.push_str(&text.replace(' ', "\u{2581}"));
            let mut words = Vec::new();
            match split {
                true => {
                    let mut at = 0;
                    for (i, _) in spelled.match_indices('\u{2581}') {
                        if i > at {
                            words.push(&spelled[at..i]);
                        }
                        at = i;
                    }
                    words.push(&spelled[at..]);
                }
                false => words.push(&spelled),
            }
            for s in words.into_iter().flat_map(|w| self.merge(w)) {
                match ids.get(&s) {
                    Some(&id) => out.push(id),
                    None => {
                        // Byte fallback: each UTF-8 byte's token, or the unknown token.
                        let bytes: Option<Vec<u32>> = s
                            .bytes()
                            .map(|b| ids.get(&format!("<0x{b:02X}>")).copied())
                            .collect();
                        match (bytes, ids.get("<unk>")) {
                            (Some(b), _) => out.extend(b),
                            (None, Some(&unk)) => out.push(unk),
                            (None, None) => {
                                return Err(Error::Tokenizer(format!(
                                    "`{s}` is not in the vocabulary, which has neither its byte \
                                     tokens nor <unk>"
                                )));
                            }
                        }
                    }
                }
            }
            return Ok(());
        }
        for piece in self.pieces(text)? {
            let word: String = piece.bytes().map(|b| self.to_char[b as usize]).collect();
            if let (true, Some(&id)) = (self.ignore_merges, ids.get(&word)) {
                out.push(id);
                continue;
            }
            for s in &self.merge(&word) {
                match ids.get(s) {
                    Some(&id) => out.push(id),
                    // A symbol that is not a token: its characters, where they are (llama.cpp).
                    None => out.extend(s.chars().filter_map(|c| ids.get(&c.to_string()).copied())),
                }
            }
        }
        Ok(())
    }

    /// `word`'s characters merged, lowest rank first (ties: the leftmost), while a merge
    /// applies.
    fn merge(&self, word: &str) -> Vec<String> {
        let mut syms: Vec<String> = word.chars().map(String::from).collect();
        loop {
            let mut best: Option<(u32, usize)> = None;
            for i in 0..syms.len().saturating_sub(1) {
                let key = format!("{} {}", syms[i], syms[i + 1]);
                match self.ranks.get(&key) {
                    Some(&r) if best.is_none_or(|(b, _)| r < b) => best = Some((r, i)),
                    _ => {}
                }
            }
            let Some((_, i)) = best else { break };
            let right = syms.remove(i + 1);
            syms[i].push_str(&right);
        }
        syms
    }

    /// `text` split by every regex in turn; the text between matches is a piece too.
    fn pieces<'a>(&self, text: &'a str) -> Result<Vec<&'a str>> {
        let mut pieces = vec![text];
        for re in &self.splits {
            let mut next = Vec::with_capacity(pieces.len() * 2);
            for p in pieces {
                let mut at = 0;
                for m in re.find_iter(p) {
                    let m = m.map_err(|e| Error::Tokenizer(format!("regex: {e}")))?;
                    if m.start() > at {
                        next.push(&p[at..m.start()]);
                    }
                    next.push(m.as_str());
                    at = m.end();
                }
                if at < p.len() {
                    next.push(&p[at..]);
                }
            }
            pieces = next;
        }
        Ok(pieces)
    }

    /// The bytes a token's text spells (characters outside the byte alphabet as UTF-8; for a
    /// SentencePiece-style model, `▁` as a space and `<0xXX>` as its byte).
    pub(crate) fn bytes_of(&self, piece: &str) -> Vec<u8> {
        if let Alphabet::Metaspace { .. } = self.alphabet {
            let byte = piece
                .strip_prefix("<0x")
                .and_then(|p| p.strip_suffix('>'))
                .filter(|h| h.len() == 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            return match byte {
                Some(b) => vec![b],
                None => piece.replace('\u{2581}', " ").into_bytes(),
            };
        }
        let mut out = Vec::with_capacity(piece.len());
        for c in piece.chars() {
            match self.to_byte.get(&c) {
                Some(&b) => out.push(b),
                None => out.extend(c.to_string().as_bytes()),
            }
        }
        out
    }
}

/// GPT-2's `bytes_to_unicode`: printable bytes stand for themselves, the others for code points
/// from 256 up, in byte order.
fn byte_chars() -> [char; 256] {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut out = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..=255u8 {
        out[b as usize] = if printable(b) {
            b as char
        } else {
            n += 1;
            char::from_u32(255 + n).expect("a valid code point")
        };
    }
    out
}
