//! Text to token ids and back, from a GGUF file's vocabulary, as llama.cpp runs them: the
//! SentencePiece-style BPE of Llama 2, Mistral and TinyLlama (`tokenizer.ggml.model = "llama"`)
//! and the GPT-2-style byte-level BPE of Qwen2, SmolLM and Llama 3 (`"gpt2"`, in `bpe`).
//!
//! SentencePiece-style encoding: a space is put in front (`add_space_prefix`), spaces become `▁`, the text is split
//! into characters, and the adjacent pair whose concatenation is the highest-scoring piece is
//! merged, over and over (ties: the leftmost). A character left that is not a piece becomes its
//! UTF-8 bytes' `<0xXX>` tokens.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

use crate::bpe::Bpe;
use crate::error::{Error, Result};
use crate::gguf::Gguf;

/// What kind of token an id is (GGUF's `tokenizer.ggml.token_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// A piece of text.
    Normal,
    /// The unknown token.
    Unknown,
    /// A control token (BOS, EOS): no text.
    Control,
    /// A user-defined piece, matched before merging.
    UserDefined,
    /// Unused.
    Unused,
    /// One byte, `<0xXX>`.
    Byte,
}

/// A tokenizer for one model's vocabulary.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    pieces: Vec<String>,
    scores: Vec<f32>,
    kinds: Vec<TokenKind>,
    ids: HashMap<String, u32>,
    bytes: [Option<u32>; 256],
    /// The begin-of-sequence id.
    pub bos: Option<u32>,
    /// The end-of-sequence id (generation stops there).
    pub eos: Option<u32>,
    unk: Option<u32>,
    add_bos: bool,
    add_space_prefix: bool,
    /// The byte-level BPE model, for a `gpt2` vocabulary.
    bpe: Option<Bpe>,
    /// Control, user-defined and unknown tokens, longest text first (matched in text by
    /// [`Tokenizer::encode_special`]).
    specials: Vec<u32>,
}

impl Tokenizer {
    /// The tokenizer of a GGUF model. Errors: [`Error::Tokenizer`] for a tokenizer type or a
    /// pre-tokenizer this crate does not run, or inconsistent arrays.
    pub fn from_gguf(g: &Gguf) -> Result<Tokenizer> {
        let model = g.str("tokenizer.ggml.model")?;
        let (bpe, bpe_bos) = match model {
            "llama" => (None, true),
            "gpt2" => {
                let merges: Vec<String> = g
                    .array("tokenizer.ggml.merges")?
                    .iter()
                    .map(|v| v.as_str().map(str::to_owned))
                    .collect::<Option<_>>()
                    .ok_or_else(|| {
                        Error::Tokenizer("tokenizer.ggml.merges holds a non-string".into())
                    })?;
                let pre = g
                    .get("tokenizer.ggml.pre")
                    .and_then(|v| v.as_str())
                    .unwrap_or("default");
                let (bpe, add_bos) = Bpe::new(pre, &merges)?;
                (Some(bpe), add_bos)
            }
            other => {
                return Err(Error::Tokenizer(format!(
                    "tokenizer model `{other}`: SentencePiece-style (`llama`) and byte-level BPE (`gpt2`) vocabularies are supported"
                )));
            }
        };
        let pieces: Vec<String> = g
            .array("tokenizer.ggml.tokens")?
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect::<Option<_>>()
            .ok_or_else(|| Error::Tokenizer("tokenizer.ggml.tokens holds a non-string".into()))?;
        let n = pieces.len();
        let floats = |key: &str| -> Result<Option<Vec<f32>>> {
            match g.get(key) {
                None => Ok(None),
                Some(_) => {
                    let v: Option<Vec<f32>> = g
                        .array(key)?
                        .iter()
                        .map(|v| v.as_f64().map(|x| x as f32))
                        .collect();
                    v.filter(|v| v.len() == n)
                        .map(Some)
                        .ok_or_else(|| Error::Tokenizer(format!("{key} is not {n} numbers")))
                }
            }
        };
        let scores = floats("tokenizer.ggml.scores")?.unwrap_or_else(|| vec![0.0; n]);
        let kinds = match floats("tokenizer.ggml.token_type")? {
            None => vec![TokenKind::Normal; n],
            Some(t) => t
                .iter()
                .map(|&k| match k as i32 {
                    2 => TokenKind::Unknown,
                    3 => TokenKind::Control,
                    4 => TokenKind::UserDefined,
                    5 => TokenKind::Unused,
                    6 => TokenKind::Byte,
                    _ => TokenKind::Normal,
                })
                .collect(),
        };
        let id = |key: &str| -> Result<Option<u32>> {
            match g.get(key) {
                None => Ok(None),
                Some(v) => match v.as_u64() {
                    Some(i) if (i as usize) < n => Ok(Some(i as u32)),
                    _ => Err(Error::Tokenizer(format!("{key} = {v:?} is not a token id"))),
                },
            }
        };
        let flag =
            |key: &str, default: bool| g.get(key).and_then(|v| v.as_bool()).unwrap_or(default);
        let mut bytes = [None; 256];
        for (i, p) in pieces.iter().enumerate() {
            let byte = p.strip_prefix("<0x").and_then(|h| h.strip_suffix('>'));
            if let (TokenKind::Byte, Some(Ok(b))) =
                (kinds[i], byte.map(|b| u8::from_str_radix(b, 16)))
            {
                bytes[b as usize] = Some(i as u32);
            }
        }
        let (ids, specials) = index(&pieces, &kinds);
        Ok(Tokenizer {
            bos: id("tokenizer.ggml.bos_token_id")?,
            eos: id("tokenizer.ggml.eos_token_id")?,
            unk: id("tokenizer.ggml.unknown_token_id")?,
            add_bos: flag("tokenizer.ggml.add_bos_token", bpe_bos),
            add_space_prefix: flag("tokenizer.ggml.add_space_prefix", bpe.is_none()),
            bpe,
            specials,
            pieces,
            scores,
            kinds,
            ids,
            bytes,
        })
    }

    /// A BPE tokenizer from its parts (a Hugging Face `tokenizer.json`): the pieces
    /// by id (`None` for ids the file leaves out), which ids are special (control) tokens, the
    /// model, BOS/EOS and whether BOS is added.
    pub(crate) fn from_bpe_parts(
        pieces: Vec<Option<String>>,
        special: &[u32],
        bpe: Bpe,
        (bos, eos, add_bos): (Option<u32>, Option<u32>, bool),
    ) -> Tokenizer {
        let kinds: Vec<TokenKind> = pieces
            .iter()
            .enumerate()
            .map(|(i, p)| match p {
                None => TokenKind::Unused,
                Some(_) if special.contains(&(i as u32)) => TokenKind::Control,
                Some(_) => TokenKind::Normal,
            })
            .collect();
        let pieces: Vec<String> = pieces.into_iter().map(Option::unwrap_or_default).collect();
        let (ids, specials) = index(&pieces, &kinds);
        Tokenizer {
            scores: vec![0.0; pieces.len()],
            bytes: [None; 256],
            pieces,
            kinds,
            ids,
            bos,
            eos,
            unk: None,
            add_bos,
            // The decoder strips the space a SentencePiece-style model put in front.
            add_space_prefix: bpe.prepends(),
            bpe: Some(bpe),
            specials,
        }
    }

    /// Tokens in the vocabulary.
    pub fn len(&self) -> usize {
        self.pieces.len()
    }

    /// Whether the vocabulary is empty.
    pub fn is_empty(&self) -> bool {
        self.pieces.is_empty()
    }

    /// The ids of `text`, with BOS first when `add_special` and the model asks for it (as
    /// llama.cpp's `llama_tokenize(..., add_special, parse_special = false)`): control tokens'
    /// texts in `text` are plain text.
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        self.encode_parts(text, add_special, false)
    }

    /// [`Tokenizer::encode`] where the texts of control, user-defined and unknown tokens in
    /// `text` (`<|im_start|>`, `</s>`) are those tokens, as a chat template's prompt needs
    /// (`parse_special = true`). The longest such text is matched first.
    pub fn encode_special(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        self.encode_parts(text, add_special, true)
    }

    fn encode_parts(&self, text: &str, add_special: bool, parse_special: bool) -> Result<Vec<u32>> {
        let mut out = Vec::new();
        if add_special && self.add_bos {
            out.extend(self.bos);
        }
        enum Part<'a> {
            Text(&'a str),
            Token(u32),
        }
        let mut parts = vec![Part::Text(text)];
        for &id in &self.specials {
            if !parse_special && self.kinds[id as usize] != TokenKind::UserDefined {
                continue;
            }
            let piece = self.pieces[id as usize].as_str();
            let mut next = Vec::with_capacity(parts.len());
            for part in parts {
                let Part::Text(t) = part else {
                    next.push(part);
                    continue;
                };
                let mut at = 0;
                for (i, _) in t.match_indices(piece) {
                    if i > at {
                        next.push(Part::Text(&t[at..i]));
                    }
                    next.push(Part::Token(id));
                    at = i + piece.len();
                }
                if at < t.len() {
                    next.push(Part::Text(&t[at..]));
                }
            }
            parts = next;
        }
        // SentencePiece-style text gets a space in front at the start and after a special token.
        let mut after_special = true;
        for (n, part) in parts.into_iter().enumerate() {
            match part {
                Part::Token(id) => {
                    out.push(id);
                    after_special = true;
                }
                Part::Text(t) => {
                    match &self.bpe {
                        Some(bpe) => bpe.encode(t, n == 0, &self.ids, &mut out)?,
                        None => {
                            let mut s = String::with_capacity(t.len() + 3);
                            if self.add_space_prefix && after_special {
                                s.push(' ');
                            }
                            s.push_str(t);
                            self.merge(&s.replace(' ', "\u{2581}"), &mut out)?;
                        }
                    }
                    after_special = false;
                }
            }
        }
        Ok(out)
    }

    /// The id of a token's exact text, if the vocabulary has it.
    pub fn token_id(&self, piece: &str) -> Option<u32> {
        self.ids.get(piece).copied()
    }

    fn merge(&self, s: &str, out: &mut Vec<u32>) -> Result<()> {
        // Symbols: byte ranges of `s`, linked left to right; a merged-away symbol has len 0.
        struct Sym {
            start: usize,
            len: usize,
            prev: isize,
            next: isize,
        }
        let mut syms: Vec<Sym> = Vec::new();
        for (i, (start, ch)) in s.char_indices().enumerate() {
            syms.push(Sym {
                start,
                len: ch.len_utf8(),
                prev: i as isize - 1,
                next: i as isize + 1,
            });
        }
        if let Some(last) = syms.last_mut() {
            last.next = -1;
        }
        #[derive(PartialEq)]
        struct Pair {
            score: f32,
            left: usize,
            right: usize,
            size: usize,
        }
        impl Eq for Pair {}
        impl Ord for Pair {
            fn cmp(&self, o: &Self) -> Ordering {
                // The highest score first; among equal scores the leftmost.
                self.score.total_cmp(&o.score).then(o.left.cmp(&self.left))
            }
        }
        impl PartialOrd for Pair {
            fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
                Some(self.cmp(o))
            }
        }
        let mut heap = BinaryHeap::new();
        let pair = |syms: &[Sym], l: isize, r: isize| -> Option<Pair> {
            if l < 0 || r < 0 {
                return None;
            }
            let (a, b) = (&syms[l as usize], &syms[r as usize]);
            let text = &s[a.start..b.start + b.len];
            let &id = self.ids.get(text)?;
            Some(Pair {
                score: self.scores[id as usize],
                left: l as usize,
                right: r as usize,
                size: text.len(),
            })
        };
        for i in 1..syms.len() {
            heap.extend(pair(&syms, i as isize - 1, i as isize));
        }
        while let Some(p) = heap.pop() {
            let (l, r) = (&syms[p.left], &syms[p.right]);
            if l.len == 0 || r.len == 0 || l.len + r.len != p.size {
                continue; // one side was merged since this pair was queued
            }
            let next = r.next;
            syms[p.left].len += syms[p.right].len;
            syms[p.right].len = 0;
            syms[p.left].next = next;
            if next >= 0 {
                syms[next as usize].prev = p.left as isize;
            }
            let prev = syms[p.left].prev;
            heap.extend(pair(&syms, prev, p.left as isize));
            heap.extend(pair(&syms, p.left as isize, next));
        }
        let mut i = 0isize;
        while i >= 0 && !syms.is_empty() {
            let sym = &syms[i as usize];
            let text = &s[sym.start..sym.start + sym.len];
            match self.ids.get(text) {
                Some(&id) => out.push(id),
                None => {
                    for b in text.bytes() {
                        match (self.bytes[b as usize], self.unk) {
                            (Some(id), _) | (None, Some(id)) => out.push(id),
                            (None, None) => {
                                return Err(Error::Tokenizer(format!(
                                    "`{text}` has no piece, no byte token and there is no unknown token"
                                )));
                            }
                        }
                    }
                }
            }
            i = sym.next;
        }
        Ok(())
    }

    /// The bytes one token stands for: its piece with `▁` as a space, its byte, or nothing for
    /// control tokens. Errors: [`Error::InvalidRequest`] for an id outside the vocabulary.
    pub fn piece_bytes(&self, id: u32) -> Result<Vec<u8>> {
        let i = id as usize;
        let piece = self.pieces.get(i).ok_or_else(|| {
            Error::InvalidRequest(format!(
                "token {id} is outside the vocabulary of {}",
                self.len()
            ))
        })?;
        Ok(match self.kinds[i] {
            TokenKind::Normal | TokenKind::UserDefined => match &self.bpe {
                Some(bpe) => bpe.bytes_of(piece),
                None => piece.replace('\u{2581}', " ").into_bytes(),
            },
            TokenKind::Byte => self
                .bytes
                .iter()
                .position(|&b| b == Some(id))
                .map(|b| vec![b as u8])
                .unwrap_or_default(),
            TokenKind::Unknown => "\u{2585}".as_bytes().to_vec(),
            TokenKind::Control | TokenKind::Unused => Vec::new(),
        })
    }

    /// The text of `ids` (invalid UTF-8 from split byte tokens replaced), without the space
    /// the encoder put in front.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let mut bytes = Vec::new();
        for &id in ids {
            bytes.extend(self.piece_bytes(id)?);
        }
        let text = String::from_utf8_lossy(&bytes).into_owned();
        Ok(match (self.add_space_prefix, text.strip_prefix(' ')) {
            (true, Some(rest)) => rest.to_string(),
            _ => text,
        })
    }

    /// Whether `id` ends generation (the EOS token).
    pub fn is_eos(&self, id: u32) -> bool {
        Some(id) == self.eos
    }
}

/// Each piece's first id (empty pieces, the ids a vocabulary leaves out, have none), and the
/// control, user-defined and unknown tokens, longest text first (what `encode_special` matches).
fn index(pieces: &[String], kinds: &[TokenKind]) -> (HashMap<String, u32>, Vec<u32>) {
    let mut ids = HashMap::with_capacity(pieces.len());
    for (i, p) in pieces.iter().enumerate() {
        if !p.is_empty() {
            ids.entry(p.clone()).or_insert(i as u32);
        }
    }
    let mut specials: Vec<u32> = (0..pieces.len() as u32)
        .filter(|&i| {
            !pieces[i as usize].is_empty()
                && matches!(
                    kinds[i as usize],
                    TokenKind::Control | TokenKind::UserDefined | TokenKind::Unknown
                )
        })
        .collect();
    specials.sort_by_key(|&i| std::cmp::Reverse(pieces[i as usize].len()));
    (ids, specials)
}

/// Turns generated ids into text as they come: bytes of a character split over tokens are held
/// back until the character is whole.
#[derive(Debug, Default)]
pub struct TextStream {
    pending: Vec<u8>,
}

impl TextStream {
    /// The text that `id` completes (possibly empty).
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> Result<String> {
        self.pending.extend(tokenizer.piece_bytes(id)?);
        let valid = match std::str::from_utf8(&self.pending) {
            Ok(s) => s.len(),
            Err(e) if e.error_len().is_none() => e.valid_up_to(), // an incomplete character
            Err(_) => self.pending.len(), // invalid bytes: let them through, replaced
        };
        let done: Vec<u8> = self.pending.drain(..valid).collect();
        Ok(String::from_utf8_lossy(&done).into_owned())
    }
}
