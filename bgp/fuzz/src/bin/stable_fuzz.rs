//! A mutation fuzzer on stable Rust for the same targets as the libFuzzer ones, for machines
//! without nightly: a deterministic PRNG mutates the seed corpus (bit flips, interesting
//! values, inserts, deletes, splices, length-field fix-ups so inputs get past the framing),
//! keeps inputs that reach a new decoder outcome, and counts executions. Any panic is saved to
//! `artifacts/<target>/` and makes the run fail.
//!
//! cargo run --release --no-default-features --bin stable-fuzz -- --runs 10000000 [--target update] [--seed 1]
//!
//! Every committed seed is first run as it is (`--runs 0` does only that: CI's replay).

use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::Instant;

use reef_bgp::packet::{Message, Open, Update, Verdict};
use reef_bgp_fuzz::CONTEXTS;

const TARGETS: [&str; 4] = ["message", "open", "update", "notification"];

/// splitmix64: small, fast, deterministic.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

fn run_target(target: &str, data: &[u8]) {
    match target {
        "message" => reef_bgp_fuzz::message(data),
        "open" => reef_bgp_fuzz::open(data),
        "update" => reef_bgp_fuzz::update(data),
        _ => reef_bgp_fuzz::notification(data),
    }
}

/// A coarse description of what the decoder made of an input, to keep inputs that reach
/// new outcomes in the corpus.
fn signature(target: &str, data: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let verdict = |v: &Verdict, h: &mut std::collections::hash_map::DefaultHasher| match v {
        Verdict::Ok => 0u8.hash(h),
        Verdict::AttributeDiscard(l) => {
            1u8.hash(h);
            for i in l {
                (i.type_code, i.reason).hash(h);
            }
        }
        Verdict::TreatAsWithdraw(i) => (2u8, i.type_code, i.reason).hash(h),
        Verdict::SessionReset(n) => (3u8, n.code, n.subcode).hash(h),
    };
    match target {
        "message" => match Message::decode(data, &CONTEXTS[0]) {
            Ok((m, v)) => {
                (m.msg_type() as u8).hash(&mut h);
                verdict(&v, &mut h);
            }
            Err(e) => e.to_string().hash(&mut h),
        },
        "open" => match Open::decode(data) {
            Ok(o) => {
                for c in &o.capabilities {
                    std::mem::discriminant(c).hash(&mut h);
                }
            }
            Err(e) => e.to_string().hash(&mut h),
        },
        "update" => {
            for cxt in &CONTEXTS {
                match Update::decode(data, cxt) {
                    Ok((u, v)) => {
                        verdict(&v, &mut h);
                        (
                            u.attrs.is_some(),
                            u.mp_reach.is_some(),
                            u.mp_unreach.is_some(),
                        )
                            .hash(&mut h);
                        (u.nlri.is_empty(), u.withdrawn.is_empty()).hash(&mut h);
                    }
                    Err(e) => e.to_string().hash(&mut h),
                }
            }
        }
        _ => data.len().min(3).hash(&mut h),
    }
    h.finish()
}

const INTERESTING8: [u8; 9] = [0, 1, 2, 3, 4, 0x10, 0x7f, 0x80, 0xff];
const INTERESTING16: [u16; 8] = [0, 1, 19, 23, 255, 256, 4096, 0xffff];

fn mutate(rng: &mut Rng, input: &mut Vec<u8>, corpus: &[Vec<u8>], target: &str) {
    for _ in 0..1 + rng.below(4) {
        let len = input.len();
        match rng.below(9) {
            0 if len > 0 => {
                let i = rng.below(len);
                input[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                input[i] = INTERESTING8[rng.below(INTERESTING8.len())];
            }
            2 if len > 0 => {
                let i = rng.below(len);
                input[i] = rng.next() as u8;
            }
            3 if len < 4096 => {
                let i = rng.below(len + 1);
                let n = 1 + rng.below(8);
                for _ in 0..n {
                    input.insert(i, rng.next() as u8);
                }
            }
            4 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(16));
                input.drain(i..i + n);
            }
            5 if len > 1 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(32));
                let chunk = input[i..i + n].to_vec();
                let at = rng.below(len + 1);
                input.splice(at..at, chunk);
            }
            6 if !corpus.is_empty() => {
                let other = &corpus[rng.below(corpus.len())];
                if !other.is_empty() {
                    let i = rng.below(other.len());
                    let n = 1 + rng.below(other.len() - i);
                    let at = rng.below(len + 1);
                    input.truncate(at);
                    input.extend_from_slice(&other[i..i + n]);
                }
            }
            7 if len > 1 => {
                let i = rng.below(len - 1);
                let v = INTERESTING16[rng.below(INTERESTING16.len())];
                input[i..i + 2].copy_from_slice(&v.to_be_bytes());
            }
            8 if len > 0 => input.truncate(rng.below(len)),
            _ => {}
        }
    }
    input.truncate(4096 + 64);
    // Fix-ups that keep most inputs past the first length check, so the fuzzer spends its
    // time in the decoders rather than in the header check.
    if rng.below(4) != 0 {
        match target {
            "message" if input.len() >= 19 => {
                input[..16].fill(0xff);
                let l = input.len().min(4096) as u16;
                input[16..18].copy_from_slice(&l.to_be_bytes());
                input.truncate(usize::from(l));
            }
            "update" if input.len() >= 4 => {
                let w = usize::from(u16::from_be_bytes([input[0], input[1]]));
                if 2 + w + 2 <= input.len() {
                    let rest = input.len() - 4 - w;
                    // Either the attributes take everything, or leave a little NLRI.
                    let a = if rng.below(2) == 0 {
                        rest
                    } else {
                        rest.saturating_sub(rng.below(6))
                    };
                    input[2 + w..4 + w].copy_from_slice(&(a as u16).to_be_bytes());
                }
            }
            _ => {}
        }
    }
}

/// The seed files of one target, sorted by name, with their contents.
fn seed_files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.sort();
    files
        .into_iter()
        .filter_map(|p| std::fs::read(&p).ok().map(|b| (p, b)))
        .collect()
}

fn load_corpus(dir: &Path) -> Vec<Vec<u8>> {
    seed_files(dir).into_iter().map(|(_, b)| b).collect()
}

fn main() {
    let mut runs: u64 = 1_000_000;
    let mut seed: u64 = 1;
    let mut targets: Vec<&str> = TARGETS.to_vec();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let v = args.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--runs" => runs = v.parse().expect("--runs N"),
            "--seed" => seed = v.parse().expect("--seed N"),
            "--target" => {
                let t = TARGETS
                    .iter()
                    .find(|t| **t == v)
                    .expect("--target message|open|update|notification");
                targets = vec![t];
            }
            _ => panic!("unknown argument {a}"),
        }
    }
    // Panics are expected to be reported by us, with the input, not by the default hook.
    std::panic::set_hook(Box::new(|_| {}));
    let mut crashes = 0u64;
    let per_target = runs / targets.len() as u64;
    let start_all = Instant::now();
    for target in &targets {
        let mut rng = Rng(seed ^ (target.len() as u64 * 0x1234_5678));
        let mut corpus = load_corpus(&root.join("corpus").join(target));
        assert!(!corpus.is_empty(), "no seeds in corpus/{target}");
        let mut seen: HashSet<u64> = corpus.iter().map(|c| signature(target, c)).collect();
        let seeds = corpus.len();
        // Every committed seed as it is first: a regression on a known input shows by name.
        for (path, input) in seed_files(&root.join("corpus").join(target)) {
            if catch_unwind(AssertUnwindSafe(|| run_target(target, &input))).is_err() {
                crashes += 1;
                eprintln!("{target}: panic on corpus seed {}", path.display());
            }
        }
        let start = Instant::now();
        let mut input = Vec::with_capacity(4200);
        for i in 0..per_target {
            input.clear();
            input.extend_from_slice(&corpus[rng.below(corpus.len())]);
            mutate(&mut rng, &mut input, &corpus, target);
            if catch_unwind(AssertUnwindSafe(|| run_target(target, &input))).is_err() {
                crashes += 1;
                let dir = root.join("artifacts").join(target);
                let _ = std::fs::create_dir_all(&dir);
                let mut h = std::collections::hash_map::DefaultHasher::new();
                input.hash(&mut h);
                let path = dir.join(format!("crash-{:016x}", h.finish()));
                let _ = std::fs::write(&path, &input);
                eprintln!(
                    "{target}: panic on input {input:02x?} (saved to {})",
                    path.display()
                );
                continue;
            }
            // Growing the corpus costs a second decode; only do it on a sample.
            if i % 8 == 0 && corpus.len() < 4096 {
                let sig = signature(target, &input);
                if seen.insert(sig) {
                    corpus.push(input.clone());
                }
            }
        }
        let secs = start.elapsed().as_secs_f64();
        if per_target == 0 {
            println!("{target}: {seeds} corpus seeds replayed");
            continue;
        }
        println!(
            "{target}: {per_target} executions in {secs:.1} s ({:.0}/s), corpus {seeds} seeds -> {} inputs",
            per_target as f64 / secs,
            corpus.len()
        );
    }
    println!(
        "total: {} executions in {:.1} s, {crashes} crashes",
        per_target * targets.len() as u64,
        start_all.elapsed().as_secs_f64()
    );
    if crashes > 0 {
        std::process::exit(1);
    }
}
