//! The short run for the test suite: a target's body on every file of its seed corpus, then on
//! inputs made from them by deterministic mutations (bytes flipped, replaced, inserted, removed
//! or repeated, dictionary words put in, cuts, and splices of two files), with a small
//! xorshift generator so each run is the same. A panic names the input that caused it.

use std::fmt::Write as _;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

/// What a replay ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replayed {
    /// Files of the seed corpus.
    pub seeds: usize,
    /// Inputs run, the seeds among them.
    pub inputs: usize,
}

/// Runs `body` on every file under `corpus` and on `mutations` inputs derived from them, with the
/// words of the libFuzzer dictionary `dict` (if it exists) among the insertions.
///
/// # Panics
/// When the corpus folder cannot be read or is empty, and when `body` panics; the message then
/// gives the input (escaped) and how it was made, so it can be added to the corpus.
pub fn replay(corpus: &Path, dict: &Path, mutations: usize, body: super::Body) -> Replayed {
    let seeds = read_corpus(corpus);
    assert!(!seeds.is_empty(), "no seed in {}", corpus.display());
    let words = std::fs::read_to_string(dict)
        .map(|text| dictionary(&text))
        .unwrap_or_default();
    for (path, data) in &seeds {
        run(body, data, || format!("seed {}", path.display()));
    }
    // Seeded by the corpus folder's name, so each target gets its own sequence, everywhere.
    let name = corpus.file_name().unwrap_or_default().as_encoded_bytes();
    let seed = name.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let mut rng = XorShift::new(seed);
    for round in 0..mutations {
        let (path, data) = &seeds[rng.below(seeds.len())];
        let mut input = data.clone();
        for _ in 0..=rng.below(4) {
            mutate(&mut input, &seeds, &words, &mut rng);
        }
        run(body, &input, || {
            format!("mutation {round} of seed {}", path.display())
        });
    }
    Replayed {
        seeds: seeds.len(),
        inputs: seeds.len() + mutations,
    }
}

/// Every file under `dir`, sub-folders included (as libFuzzer reads a corpus), in name order.
fn read_corpus(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    let mut folders = vec![dir.to_path_buf()];
    while let Some(folder) = folders.pop() {
        let entries = std::fs::read_dir(&folder)
            .unwrap_or_else(|e| panic!("cannot read the corpus {}: {e}", folder.display()));
        for entry in entries {
            let path = entry.expect("a corpus entry").path();
            if path.is_dir() {
                folders.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let data = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p, data)
        })
        .collect()
}

fn run(body: super::Body, input: &[u8], origin: impl FnOnce() -> String) {
    if let Err(panic) = catch_unwind(AssertUnwindSafe(|| body(input))) {
        eprintln!(
            "fuzz body panicked on {} ({} bytes): b\"{}\"",
            origin(),
            input.len(),
            escaped(input)
        );
        resume_unwind(panic);
    }
}

fn escaped(input: &[u8]) -> String {
    let mut text = String::new();
    for &b in input.iter().take(8192) {
        let _ = write!(text, "{}", std::ascii::escape_default(b));
    }
    if input.len() > 8192 {
        text.push_str("...");
    }
    text
}

/// The words of a libFuzzer dictionary: one `"..."` per line (optionally `name=` before it),
/// with `\\`, `\"` and `\xNN` escapes; `#` starts a comment.
fn dictionary(text: &str) -> Vec<Vec<u8>> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            if line.starts_with('#') {
                return None;
            }
            let quoted = &line[line.find('"')? + 1..line.rfind('"')?];
            let mut word = Vec::new();
            let mut bytes = quoted.bytes();
            while let Some(b) = bytes.next() {
                match (b, bytes.clone().next()) {
                    (b'\\', Some(b'x')) => {
                        bytes.next();
                        let hex: Vec<u8> = bytes.by_ref().take(2).collect();
                        let hex = std::str::from_utf8(&hex).ok()?;
                        word.push(u8::from_str_radix(hex, 16).ok()?);
                    }
                    (b'\\', Some(escaped)) => {
                        bytes.next();
                        word.push(escaped);
                    }
                    _ => word.push(b),
                }
            }
            Some(word)
        })
        .collect()
}

/// Bytes that parsers treat specially.
const INTERESTING: &[u8] = b"\0\x7f\x80\xff \t\r\n\"'\\,.:;=[]{}/-+019eE";

fn mutate(
    input: &mut Vec<u8>,
    seeds: &[(PathBuf, Vec<u8>)],
    words: &[Vec<u8>],
    rng: &mut XorShift,
) {
    let len = input.len();
    match rng.below(9) {
        // Flip one bit.
        0 if len > 0 => {
            let at = rng.below(len);
            input[at] ^= 1 << rng.below(8);
        }
        // Replace a byte with an interesting or a random one.
        1 if len > 0 => {
            let at = rng.below(len);
            input[at] = if rng.below(2) == 0 {
                INTERESTING[rng.below(INTERESTING.len())]
            } else {
                rng.next() as u8
            };
        }
        // Insert an interesting byte.
        2 => {
            let at = rng.below(len + 1);
            input.insert(at, INTERESTING[rng.below(INTERESTING.len())]);
        }
        // Remove a range.
        3 if len > 0 => {
            let at = rng.below(len);
            let end = (at + 1 + rng.below(16)).min(len);
            input.drain(at..end);
        }
        // Repeat a range.
        4 if len > 0 => {
            let at = rng.below(len);
            let end = (at + 1 + rng.below(32)).min(len);
            let copy = input[at..end].to_vec();
            let to = rng.below(len + 1);
            input.splice(to..to, copy);
        }
        // Cut the end off.
        5 if len > 0 => input.truncate(rng.below(len)),
        // Splice: this input's start, another seed's end.
        6 => {
            let other = &seeds[rng.below(seeds.len())].1;
            let keep = rng.below(len + 1);
            let from = rng.below(other.len() + 1);
            input.truncate(keep);
            input.extend_from_slice(&other[from..]);
        }
        // Insert or overwrite with a dictionary word.
        7 if !words.is_empty() => {
            let word = &words[rng.below(words.len())];
            let at = rng.below(len + 1);
            if rng.below(2) == 0 {
                input.splice(at..at, word.iter().copied());
            } else {
                let end = (at + word.len()).min(len);
                input.splice(at..end, word.iter().copied());
            }
        }
        // Write a number somewhere: the edges parsers get wrong.
        _ => {
            let numbers: [&[u8]; 6] = [
                b"0",
                b"-1",
                b"4294967296",
                b"18446744073709551616",
                b"9223372036854775807",
                b"1e999",
            ];
            let number = numbers[rng.below(numbers.len())];
            let at = rng.below(len + 1);
            input.splice(at..at, number.iter().copied());
        }
    }
}

/// xorshift64*: small, fast, and the same sequence on every machine.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> XorShift {
        XorShift(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n` (`n` > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}
