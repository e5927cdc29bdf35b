//! The CLIP byte-level BPE tokenizer, as open_clip's `SimpleTokenizer` (which HPSv2 uses) and
//! transformers' `CLIPTokenizer` give it: clean the text, lower-case it, split it into words,
//! encode each word's UTF-8 bytes as printable characters and merge them by rank; ids are framed
//! by the start (49406) and end (49407) tokens, truncated to the context (the end token kept
//! last) and zero-padded.
//!
//! The vocabulary is OpenAI's `bpe_simple_vocab_16e6.txt.gz`, shipped here from open-clip-torch
//! (MIT licence, `bpe_simple_vocab_16e6.LICENSE`), so an open_clip checkpoint and its model
//! config are all a user needs.
//!
//! Cleaning follows open_clip (`ftfy.fix_text`, `html.unescape`, whitespace collapsed): curly
//! quotes straightened, Latin ligatures and full-width forms expanded, NFC, control characters
//! dropped, numeric and the common named HTML entities unescaped. Not reproduced: ftfy's repair
//! of mis-decoded text (mojibake) and HTML's rarer named entities.

use regex::Regex;
use std::collections::HashMap;
use std::io::Read;
use std::sync::{Mutex, OnceLock};
use unicode_normalization::UnicodeNormalization;

static VOCAB_GZ: &[u8] = include_bytes!("bpe_simple_vocab_16e6.txt.gz");

pub const START: u32 = 49406;
pub const END: u32 = 49407;

pub struct Tokenizer {
    encoder: HashMap<String, u32>,
    ranks: HashMap<(String, String), usize>,
    byte_chars: [char; 256],
    words: Regex,
    cache: Mutex<HashMap<String, Vec<u32>>>,
}

/// OpenAI's byte → printable character table (`bytes_to_unicode`).
fn byte_chars() -> [char; 256] {
    let printable = |b: u32| (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b);
    let mut out = ['\0'; 256];
    let mut n = 0;
    for b in 0..256u32 {
        out[b as usize] = if printable(b) {
            char::from_u32(b).expect("latin-1")
        } else {
            n += 1;
            char::from_u32(255 + n).expect("BMP")
        };
    }
    out
}

impl Tokenizer {
    /// The standard CLIP vocabulary (built once per process).
    pub fn clip() -> &'static Tokenizer {
        static T: OnceLock<Tokenizer> = OnceLock::new();
        T.get_or_init(|| {
            let mut text = String::new();
            flate2::read::GzDecoder::new(VOCAB_GZ).read_to_string(&mut text).expect("the shipped vocabulary");
            Tokenizer::from_merges(&text)
        })
    }

    /// A tokenizer from the merges file's text (first line a header; 48 894 merges used).
    pub fn from_merges(text: &str) -> Self {
        let merges: Vec<(String, String)> = text
            .split('\n')
            .skip(1)
            .take(49152 - 256 - 2)
            .filter_map(|l| l.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())))
            .collect();
        let byte_chars = byte_chars();
        // The vocabulary in id order: byte characters in `bytes_to_unicode` order, the same with
        // the end-of-word mark, the merges, the two special tokens.
        let mut order: Vec<u32> = (0x21..=0x7e).chain(0xa1..=0xac).chain(0xae..=0xff).collect();
        order.extend((0..256).filter(|b| !order.contains(b)).collect::<Vec<_>>());
        let singles: Vec<String> = order.iter().map(|&b| byte_chars[b as usize].to_string()).collect();
        let mut vocab: Vec<String> = singles.clone();
        vocab.extend(singles.iter().map(|s| format!("{s}</w>")));
        vocab.extend(merges.iter().map(|(a, b)| format!("{a}{b}")));
        vocab.extend(["<start_of_text>".to_string(), "<end_of_text>".to_string()]);
        let encoder = vocab.into_iter().enumerate().map(|(i, t)| (t, i as u32)).collect();
        let ranks = merges.into_iter().enumerate().map(|(i, m)| (m, i)).collect();
        let words =
            Regex::new(r"(?i)<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+")
                .expect("the CLIP word pattern");
        Self { encoder, ranks, byte_chars, words, cache: Mutex::new(HashMap::new()) }
    }

    /// The BPE ids of one word (already byte-encoded).
    fn bpe(&self, word: &str) -> Vec<u32> {
        if let Some(ids) = self.cache.lock().expect("tokenizer cache").get(word) {
            return ids.clone();
        }
        let chars: Vec<char> = word.chars().collect();
        let mut parts: Vec<String> = chars.iter().map(|c| c.to_string()).collect();
        if let Some(last) = parts.last_mut() {
            last.push_str("</w>");
        }
        while parts.len() > 1 {
            let best = parts
                .windows(2)
                .filter_map(|w| self.ranks.get(&(w[0].clone(), w[1].clone())).map(|&r| (r, w[0].clone(), w[1].clone())))
                .min();
            let Some((_, first, second)) = best else { break };
            let mut merged = Vec::with_capacity(parts.len());
            let mut i = 0;
            while i < parts.len() {
                if i + 1 < parts.len() && parts[i] == first && parts[i + 1] == second {
                    merged.push(format!("{first}{second}"));
                    i += 2;
                } else {
                    merged.push(parts[i].clone());
                    i += 1;
                }
            }
            parts = merged;
        }
        let ids: Vec<u32> = parts.iter().filter_map(|p| self.encoder.get(p).copied()).collect();
        self.cache.lock().expect("tokenizer cache").insert(word.to_string(), ids.clone());
        ids
    }

    /// The ids of `text` without start/end tokens.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let text = clean(text);
        let mut ids = Vec::new();
        for m in self.words.find_iter(&text) {
            match m.as_str() {
                "<start_of_text>" => ids.push(START),
                "<end_of_text>" => ids.push(END),
                w => {
                    let encoded: String = w.bytes().map(|b| self.byte_chars[b as usize]).collect();
                    ids.extend(self.bpe(&encoded));
                }
            }
        }
        ids
    }

    /// `[START, ids…, END]` truncated to `context` (END kept last) and zero-padded: what the text
    /// tower reads.
    pub fn tokenize(&self, text: &str, context: usize) -> Vec<u32> {
        let mut ids = vec![START];
        ids.extend(self.encode(text));
        ids.push(END);
        if ids.len() > context {
            ids.truncate(context);
            ids[context - 1] = END;
        }
        ids.resize(context, 0);
        ids
    }
}

/// open_clip's cleaning: ftfy's fixes (those named in the module doc), HTML entities, collapsed
/// whitespace, lower case.
pub fn clean(text: &str) -> String {
    let fixed: String = text
        .chars()
        .flat_map(|c| {
            let s: String = match c {
                '\u{2018}' | '\u{2019}' | '\u{201a}' | '\u{201b}' => "'".into(),
                '\u{201c}' | '\u{201d}' | '\u{201e}' | '\u{201f}' => "\"".into(),
                '\u{fb00}' => "ff".into(),
                '\u{fb01}' => "fi".into(),
                '\u{fb02}' => "fl".into(),
                '\u{fb03}' => "ffi".into(),
                '\u{fb04}' => "ffl".into(),
                '\u{fb05}' | '\u{fb06}' => "st".into(),
                '\u{ff01}'..='\u{ff5e}' => char::from_u32(c as u32 - 0xff01 + 0x21).into_iter().collect(),
                '\u{3000}' => " ".into(),
                c if c.is_control() && !c.is_whitespace() => String::new(),
                c => c.to_string(),
            };
            s.chars().collect::<Vec<_>>()
        })
        .collect();
    let nfc: String = fixed.nfc().collect();
    let unescaped = unescape_html(&unescape_html(&nfc));
    let collapsed = unescaped.split_whitespace().collect::<Vec<_>>().join(" ");
    collapsed.to_lowercase()
}

/// `html.unescape` for numeric references and the common named entities.
fn unescape_html(s: &str) -> String {
    static ENTITY: OnceLock<Regex> = OnceLock::new();
    let re = ENTITY.get_or_init(|| Regex::new(r"&(#[0-9]{1,7}|#[xX][0-9a-fA-F]{1,6}|[a-zA-Z]+);").expect("entity"));
    re.replace_all(s, |c: &regex::Captures| {
        let body = &c[1];
        let ch = if let Some(hex) = body.strip_prefix("#x").or_else(|| body.strip_prefix("#X")) {
            u32::from_str_radix(hex, 16).ok().and_then(char::from_u32)
        } else if let Some(dec) = body.strip_prefix('#') {
            dec.parse().ok().and_then(char::from_u32)
        } else {
            match body {
                "amp" => Some('&'),
                "lt" => Some('<'),
                "gt" => Some('>'),
                "quot" => Some('"'),
                "apos" => Some('\''),
                "nbsp" => Some('\u{a0}'),
                _ => None,
            }
        };
        ch.map(String::from).unwrap_or_else(|| c[0].to_string())
    })
    .into_owned()
}
