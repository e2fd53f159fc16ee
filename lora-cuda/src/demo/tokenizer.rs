//! A word-level tokenizer for the demo text encoder.
//!
//! The demo captions use a closed vocabulary (the demo world's tags), so a word-level tokenizer replaces CLIP's
//! BPE: lowercase, commas become their own token, everything else splits on whitespace. Like CLIP's, it wraps the
//! ids in a start and an end token and pads with the end token up to the context length; the text encoder pools
//! nothing, so padding only fixes the sequence length. A word outside the vocabulary is an error that lists
//! every unknown word, never a silent `<unk>`.

use crate::error::{Error, Result};

/// Token id of the start-of-text marker.
pub const BOS: u32 = 0;
/// Token id of the end-of-text marker (also used for padding, as CLIP does).
pub const EOS: u32 = 1;
/// Token id of `,`.
pub const COMMA: u32 = 2;

/// A closed-vocabulary word tokenizer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WordTokenizer {
    words: Vec<String>,
    max_len: usize,
}

impl WordTokenizer {
    /// A tokenizer over `words` (ids 3.. in this order) producing sequences of `max_len` ids.
    pub fn new<S: AsRef<str>>(words: &[S], max_len: usize) -> Self {
        WordTokenizer {
            words: words
                .iter()
                .map(|w| w.as_ref().to_ascii_lowercase())
                .collect(),
            max_len: max_len.max(2),
        }
    }

    /// The demo world's tokenizer (its vocabulary, [`super::DEMO_CONTEXT_LEN`] ids).
    pub fn demo() -> Self {
        WordTokenizer::new(&super::world::vocabulary(), super::DEMO_CONTEXT_LEN)
    }

    /// Number of ids, special tokens included (the embedding table's row count).
    pub fn vocab_size(&self) -> usize {
        self.words.len() + 3
    }

    /// The sequence length every encoding has.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// The vocabulary words, without the special tokens.
    pub fn words(&self) -> &[String] {
        &self.words
    }

    fn split(text: &str) -> Vec<String> {
        let mut out = Vec::new();
        for chunk in text.split_whitespace() {
            let lower = chunk.to_ascii_lowercase();
            let mut cur = String::new();
            for ch in lower.chars() {
                if ch == ',' {
                    if !cur.is_empty() {
                        out.push(std::mem::take(&mut cur));
                    }
                    out.push(",".to_string());
                } else {
                    cur.push(ch);
                }
            }
            if !cur.is_empty() {
                out.push(cur);
            }
        }
        out
    }

    /// The ids of `text`: `[BOS, w…, EOS, EOS…]`, exactly [`Self::max_len`] long. Text longer than the context
    /// is truncated (as CLIP does, keeping the final EOS). Unknown words are an error naming all of them.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = vec![BOS];
        let mut unknown: Vec<String> = Vec::new();
        for w in Self::split(text) {
            if w == "," {
                ids.push(COMMA);
            } else if let Some(i) = self.words.iter().position(|v| *v == w) {
                ids.push(i as u32 + 3);
            } else if !unknown.contains(&w) {
                unknown.push(w);
            }
        }
        if !unknown.is_empty() {
            return Err(Error::InvalidArgument {
                what: format!("prompt {text:?}"),
                msg: format!(
                    "unknown word(s) for the demo tokenizer: {}; known words: {}",
                    unknown.join(", "),
                    self.words.join(" ")
                ),
            });
        }
        ids.truncate(self.max_len - 1);
        ids.push(EOS);
        ids.resize(self.max_len, EOS);
        Ok(ids)
    }

    /// The text of a sequence of ids (special tokens dropped), for logs and tests.
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut out = String::new();
        for &id in ids {
            match id {
                BOS => {}
                EOS => break,
                COMMA => out.push(','),
                i => {
                    if !out.is_empty() {
                        out.push(' ');
                    }
                    out.push_str(
                        self.words
                            .get(i as usize - 3)
                            .map(String::as_str)
                            .unwrap_or("?"),
                    );
                }
            }
        }
        out
    }

    /// The vocabulary as one metadata string (words separated by spaces).
    pub fn to_metadata(&self) -> String {
        self.words.join(" ")
    }

    /// The tokenizer stored by [`Self::to_metadata`].
    pub fn from_metadata(words: &str, max_len: usize) -> Self {
        let w: Vec<&str> = words.split_whitespace().collect();
        WordTokenizer::new(&w, max_len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo::world::{Scene, Style, World};

    #[test]
    fn every_demo_caption_encodes_and_decodes() {
        let t = WordTokenizer::demo();
        let w = World::new(8, Style::A);
        for seed in 0..200 {
            let (scene, _) = w.sample(seed);
            let cap = scene.caption();
            let ids = t.encode(&cap).unwrap();
            assert_eq!(ids.len(), t.max_len());
            assert_eq!(ids[0], BOS);
            assert!(ids.contains(&EOS), "{cap} did not fit");
            assert_eq!(t.decode(&ids), cap);
            assert_eq!(Scene::from_caption(&t.decode(&ids)), Some(scene));
        }
    }

    #[test]
    fn unknown_words_are_listed() {
        let t = WordTokenizer::demo();
        let e = t
            .encode("red unicorn, Dragon, red")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unicorn") && e.contains("dragon"), "{e}");
        assert!(
            !e.contains("unknown word(s) for the demo tokenizer: red"),
            "{e}"
        );
    }

    #[test]
    fn empty_prompt_is_bos_then_padding_and_long_text_is_truncated() {
        let t = WordTokenizer::new(&["a", "b"], 5);
        assert_eq!(t.encode("").unwrap(), vec![BOS, EOS, EOS, EOS, EOS]);
        assert_eq!(t.encode("a,b").unwrap(), vec![BOS, 3, COMMA, 4, EOS]);
        assert_eq!(t.encode("a a a a a a").unwrap(), vec![BOS, 3, 3, 3, EOS]);
        assert_eq!(t.vocab_size(), 5);
        let m = WordTokenizer::from_metadata(&t.to_metadata(), 5);
        assert_eq!(m, t);
    }
}
