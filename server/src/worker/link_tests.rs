//! Tests of the hidden-state link: a model split across a link on loopback gives the single-node
//! engine's greedy tokens, several micro-batches in flight; bad peers and bad frames are refused
//! with named errors; backpressure and peer death end in errors, not hangs.

use super::link::{Hop, Link, LinkConfig, LinkError, LinkListener};
use kernels::Pool;
use pipeline::wire::{SampledToken, WireBatch};
use pipeline::{
    Engine, GenRequest, LogitsRows, Model, SamplingParams, Stage, StageBatch, StageInput, StageLimits, StageOutput,
};
use rdma::Secret;
use std::collections::HashMap;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

const BLOCKS: usize = 8;
const CUT: usize = 3;

fn secret(b: u8) -> Secret {
    Secret::new(vec![b; 32]).unwrap()
}

fn cfg(window: usize, timeout_ms: u64) -> LinkConfig {
    LinkConfig { window, max_frame_bytes: 1 << 20, timeout_ms }
}

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn tiny_llama() -> Model {
    Model::open(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../pipeline/tests/fixtures/tiny-llama")).unwrap()
}

fn stage(model: &Model, blocks: std::ops::Range<usize>) -> Stage {
    model.stage(BLOCKS, blocks, Arc::new(Pool::new(1)), StageLimits::default()).unwrap()
}

/// The last stage's sampling: greedy, with the token's log-probability.
fn greedy(seq_id: u64, logits: &[f32]) -> SampledToken {
    let token = pipeline::sampler::argmax(logits);
    let max = logits[token] as f64;
    let sum: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
    SampledToken { seq_id, token: token as u32, logprob: (-(sum.ln())).min(0.0) as f32 }
}

/// The downstream worker: blocks [CUT, BLOCKS) behind a link; samples and sends tokens back
/// until the upstream closes the link. Returns how many batches it ran.
fn serve_last_stage(model: &Model, link: Link) -> Result<usize, LinkError> {
    let mut st = stage(model, CUT..BLOCKS);
    let mut served = 0;
    loop {
        let b = match link.recv() {
            Ok(Hop::Batch(b)) => b,
            Ok(other) => panic!("the last stage got {other:?}"),
            Err(LinkError::Closed { .. }) => return Ok(served),
            Err(e) => return Err(e),
        };
        let batch = StageBatch {
            seq_ids: b.seq_ids.clone(),
            positions: b.positions,
            input: StageInput::Hidden(b.hidden),
            logits: b.logits,
        };
        let StageOutput::Logits { rows, vocab, data } = st.forward(&batch).unwrap() else { panic!("logits expected") };
        let tokens =
            rows.iter().enumerate().map(|(i, &r)| greedy(b.seq_ids[r], &data[i * vocab..(i + 1) * vocab])).collect();
        link.send(&Hop::Tokens { micro_batch: b.micro_batch, tokens })?;
        served += 1;
    }
}

fn request(prompt: Vec<u32>, max_tokens: usize) -> GenRequest {
    GenRequest { prompt, max_tokens, sampling: SamplingParams::default(), ignore_eos: true }
}

#[test]
fn a_model_split_across_a_link_gives_the_engines_greedy_tokens_with_micro_batches_in_flight() {
    let model = Arc::new(tiny_llama());
    let reqs = vec![
        request(vec![5, 17, 42, 99, 3], 12),
        request(vec![250], 9),
        request((0..40).collect(), 7),
        request(vec![7, 7, 7], 10),
    ];
    let pool = Arc::new(Pool::new(1));
    let whole = model.stage(BLOCKS, 0..BLOCKS, pool, StageLimits::default()).unwrap();
    let want = Engine::new(vec![whole]).unwrap().generate(&reqs, 8192).unwrap();

    let listener = LinkListener::bind(loopback(), secret(1), cfg(4, 30_000)).unwrap();
    let addr = listener.local_addr().unwrap();
    let m2 = model.clone();
    let down = std::thread::spawn(move || serve_last_stage(&m2, listener.accept()?));
    let link = Link::connect(addr, &secret(1), cfg(4, 30_000)).unwrap();

    // Two micro-batches of two sequences each; sequence i is seq id 100 + i.
    let groups: Vec<Vec<usize>> = vec![vec![0, 1], vec![2, 3]];
    let mut first = stage(&model, 0..CUT);
    let mut got: Vec<Vec<u32>> = vec![Vec::new(); reqs.len()];
    let mut next_mb = 0u64;
    let mut group_of_mb: HashMap<u64, usize> = HashMap::new();
    let mut send_group = |first: &mut Stage, g: usize, got: &[Vec<u32>], group_of_mb: &mut HashMap<u64, usize>| {
        let (mut seq_ids, mut positions, mut tokens) = (vec![], vec![], vec![]);
        for &i in &groups[g] {
            let (r, done) = (&reqs[i], got[i].len());
            if done >= r.max_tokens {
                continue;
            }
            if done == 0 {
                // prefill: every prompt row
                for (p, &t) in r.prompt.iter().enumerate() {
                    seq_ids.push(100 + i as u64);
                    positions.push(p as u32);
                    tokens.push(t);
                }
            } else {
                seq_ids.push(100 + i as u64);
                positions.push((r.prompt.len() + done - 1) as u32);
                tokens.push(got[i][done - 1]);
            }
        }
        if seq_ids.is_empty() {
            return None;
        }
        let batch = StageBatch {
            seq_ids: seq_ids.clone(),
            positions: positions.clone(),
            input: StageInput::Tokens(tokens),
            logits: LogitsRows::LastOfEachSeq,
        };
        let StageOutput::Hidden(hidden) = first.forward(&batch).unwrap() else { panic!("hidden expected") };
        let width = hidden.len() / seq_ids.len();
        next_mb += 1;
        group_of_mb.insert(next_mb, g);
        Some(WireBatch { micro_batch: next_mb, seq_ids, positions, logits: LogitsRows::LastOfEachSeq, width, hidden })
    };
    let mut most_in_flight = 0;
    for g in 0..groups.len() {
        let b = send_group(&mut first, g, &got, &mut group_of_mb).unwrap();
        link.send(&Hop::Batch(b)).unwrap();
        most_in_flight = most_in_flight.max(group_of_mb.len());
        assert!(link.tx.in_flight() <= 4, "the window bounds what waits at the next stage");
    }
    let mut open = groups.len();
    while open > 0 {
        let Hop::Tokens { micro_batch, tokens } = link.recv().unwrap() else { panic!("tokens expected") };
        let g = group_of_mb.remove(&micro_batch).expect("tokens name a micro-batch in flight");
        for t in tokens {
            assert!(t.logprob <= 0.0);
            got[(t.seq_id - 100) as usize].push(t.token);
        }
        // Stage 0 runs this group's next step while stage 1 runs the other group's.
        match send_group(&mut first, g, &got, &mut group_of_mb) {
            Some(b) => {
                link.send(&Hop::Batch(b)).unwrap();
                most_in_flight = most_in_flight.max(group_of_mb.len());
                assert!(link.tx.in_flight() <= 4, "the window bounds what waits at the next stage");
            }
            None => open -= 1,
        }
    }
    link.close("done");
    let served = down.join().unwrap().unwrap();
    for (i, w) in want.iter().enumerate() {
        assert_eq!(got[i], w.tokens, "request {i}");
    }
    assert_eq!(served as u64, next_mb);
    // Micro-batches sent and not yet answered: both groups at once, so stage 0 ran one group's
    // step while stage 1 ran the other's.
    assert_eq!(most_in_flight, 2, "both micro-batches were in flight at once");
}

#[test]
fn a_wrong_secret_is_refused_both_ways() {
    let listener = LinkListener::bind(loopback(), secret(1), cfg(2, 5_000)).unwrap();
    let addr = listener.local_addr().unwrap();
    let acc = std::thread::spawn(move || listener.accept().map(|_| ()));
    let e = Link::connect(addr, &secret(2), cfg(2, 5_000)).err().expect("a wrong secret is refused");
    assert!(matches!(e, LinkError::Connect { .. }), "{e}");
    let e = acc.join().unwrap().unwrap_err();
    assert!(matches!(e, LinkError::Accept(_)) && e.to_string().contains("cluster secret"), "{e}");
}

#[test]
fn garbage_and_truncated_handshakes_are_refused() {
    let listener = LinkListener::bind(loopback(), secret(1), cfg(2, 1_000)).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(&[0x5a; 64]).unwrap();
    let e = listener.accept().err().expect("garbage is refused").to_string();
    assert!(e.contains("magic"), "{e}");
    let mut s2 = TcpStream::connect(addr).unwrap();
    s2.write_all(b"FSCL\x02\x00").unwrap();
    s2.shutdown(std::net::Shutdown::Write).unwrap();
    let e = listener.accept().err().expect("a truncated frame is refused");
    assert!(matches!(e, LinkError::Accept(_)), "{e}");
    drop((s, s2));
    let e = listener.accept().err().expect("nobody connects");
    assert!(matches!(e, LinkError::AcceptTimeout { .. }), "{e}");
}

/// An authenticated raw connection to a link: sends `bytes` as one message; the link's error.
fn link_error_for(bytes: &[u8]) -> LinkError {
    let listener =
        LinkListener::bind(loopback(), secret(1), LinkConfig { max_frame_bytes: 4096, ..cfg(2, 5_000) }).unwrap();
    let addr = listener.local_addr().unwrap();
    let acc = std::thread::spawn(move || listener.accept());
    let raw = rdma::tcp::connect(addr, &secret(1), 5_000).unwrap();
    let link = acc.join().unwrap().unwrap();
    raw.writer.message(bytes).unwrap();
    let e = link.recv().unwrap_err();
    drop(raw);
    e
}

#[test]
fn bad_frames_after_the_handshake_are_refused_naming_the_problem() {
    let good = pipeline::wire::encode_batch(&WireBatch {
        micro_batch: 1,
        seq_ids: vec![1],
        positions: vec![0],
        logits: LogitsRows::All,
        width: 4,
        hidden: vec![0.5; 4],
    })
    .unwrap();
    let e = link_error_for(&vec![0u8; 4097]);
    assert!(matches!(e, LinkError::FrameTooLarge { bytes: 4097, max: 4096, .. }), "{e}");
    let e = link_error_for(&good[..good.len() - 2]);
    assert!(matches!(e, LinkError::Decode { .. }) && e.to_string().contains("`hidden (truncated)`"), "{e}");
    let mut bad = good.clone();
    bad[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
    let e = link_error_for(&bad);
    assert!(e.to_string().contains("`rows`"), "{e}");
    let e = link_error_for(b"garbage, not a message");
    assert!(matches!(e, LinkError::Protocol { .. }) && e.to_string().contains("unknown message"), "{e}");
    let e = link_error_for(b"FSCR\x05\x00\x00\x00");
    assert!(e.to_string().contains("credits returned"), "{e}");
}

fn one_row(mb: u64) -> Hop {
    Hop::Batch(WireBatch {
        micro_batch: mb,
        seq_ids: vec![9],
        positions: vec![mb as u32],
        logits: LogitsRows::LastOfEachSeq,
        width: 576,
        hidden: vec![0.25; 576],
    })
}

#[test]
fn a_full_window_holds_the_sender_back_then_reports_backpressure() {
    let listener = LinkListener::bind(loopback(), secret(1), cfg(2, 600)).unwrap();
    let addr = listener.local_addr().unwrap();
    let acc = std::thread::spawn(move || listener.accept());
    let up = Link::connect(addr, &secret(1), cfg(2, 600)).unwrap();
    let down = acc.join().unwrap().unwrap();
    up.send(&one_row(1)).unwrap();
    up.send(&one_row(2)).unwrap();
    let t = Instant::now();
    let e = up.send(&one_row(3)).unwrap_err();
    assert!(matches!(e, LinkError::Backpressure { window: 2, .. }), "{e}");
    assert!(t.elapsed() < Duration::from_secs(20), "bounded wait");
    // Taking one returns a credit: the sender may go on.
    assert_eq!(down.recv().unwrap(), one_row(1));
    up.send(&one_row(3)).unwrap();
    assert_eq!(down.recv().unwrap(), one_row(2));
    assert_eq!(down.recv().unwrap(), one_row(3));
    let e = down.rx.recv_timeout(Duration::from_millis(50)).unwrap_err();
    assert!(matches!(e, LinkError::RecvTimeout { .. }), "{e}");
}

#[test]
fn a_dead_peer_ends_the_link_at_once_with_an_error() {
    let listener = LinkListener::bind(loopback(), secret(1), cfg(2, 30_000)).unwrap();
    let addr = listener.local_addr().unwrap();
    let acc = std::thread::spawn(move || listener.accept());
    let up = Link::connect(addr, &secret(1), cfg(2, 30_000)).unwrap();
    let down = acc.join().unwrap().unwrap();
    up.send(&one_row(1)).unwrap();
    drop(down); // the peer goes away with a message unread
    let t = Instant::now();
    let e = up.recv().unwrap_err();
    assert!(matches!(e, LinkError::Closed { .. }), "{e}");
    let e = up.send(&one_row(2)).unwrap_err();
    assert!(matches!(e, LinkError::Closed { .. } | LinkError::Send { .. }), "{e}");
    assert!(t.elapsed() < Duration::from_secs(20), "no wait for the 30 s timeout");
}

#[test]
fn configuration_out_of_bounds_is_refused() {
    for c in [cfg(0, 100), cfg(65, 100), cfg(2, 0), LinkConfig { max_frame_bytes: 16, ..cfg(2, 100) }] {
        assert!(matches!(c.validate(), Err(LinkError::Config(_))));
    }
    let e = Link::connect("127.0.0.1:9".parse().unwrap(), &secret(1), cfg(0, 100)).err().unwrap();
    assert!(e.to_string().contains("window"), "{e}");
}

#[test]
fn a_peer_that_vanishes_without_a_word_ends_the_link() {
    let listener = LinkListener::bind(loopback(), secret(1), cfg(2, 30_000)).unwrap();
    let addr = listener.local_addr().unwrap();
    let acc = std::thread::spawn(move || listener.accept());
    let raw = rdma::tcp::connect(addr, &secret(1), 30_000).unwrap();
    let link = acc.join().unwrap().unwrap();
    let t = Instant::now();
    raw.writer.abort(); // the socket shut, no Close frame: as when the process is killed
    let e = link.recv().unwrap_err();
    assert!(matches!(e, LinkError::Closed { .. }), "{e}");
    assert!(t.elapsed() < Duration::from_secs(20), "no wait for the 30 s timeout");
}

#[test]
fn a_peer_that_ignores_the_window_is_refused() {
    let listener = LinkListener::bind(loopback(), secret(1), cfg(2, 5_000)).unwrap();
    let addr = listener.local_addr().unwrap();
    let acc = std::thread::spawn(move || listener.accept());
    let raw = rdma::tcp::connect(addr, &secret(1), 5_000).unwrap();
    let link = acc.join().unwrap().unwrap();
    for mb in 1..=3 {
        let Hop::Batch(b) = one_row(mb) else { unreachable!() };
        raw.writer.message(&pipeline::wire::encode_batch(&b).unwrap()).unwrap();
    }
    // The third, sent without credit, ends the link, and the peer is told why.
    let mut r = raw.reader;
    match r.recv().unwrap() {
        rdma::tcp::Incoming::Close(reason) => assert!(reason.contains("without credit"), "{reason}"),
        other => panic!("expected Close, got {other:?}"),
    }
    // The two the window allows were queued and can still be taken.
    assert_eq!(link.recv().unwrap(), one_row(1));
    assert_eq!(link.recv().unwrap(), one_row(2));
    let e = link.recv().unwrap_err();
    assert!(matches!(e, LinkError::Protocol { .. }) && e.to_string().contains("without credit"), "{e}");
}
