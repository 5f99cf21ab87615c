//! Concurrent one-sided writes and reads of one registered region over TCP: writers land rounds
//! of a pattern in disjoint ranges while readers read every range, their own and others'. Each
//! landing holds a write claim on its bytes and each read a read claim, so a read either sees one
//! whole round of its range (never a torn mix of two rounds, never a partly landed write) or is
//! refused because a write holds the bytes; a write is refused while a read holds them. Nothing
//! else may happen, and at the end every range holds its writer's last round.

use rdma::peer::RegionServer;
use rdma::region::OwnedRegion;
use rdma::Secret;
use std::sync::Arc;

const RANGES: usize = 4;
const RANGE_BYTES: usize = 256 << 10;
const ROUNDS: u32 = 100;
const READS_PER_READER: u32 = 300;

/// Round `round` of range `i`: every 4-byte word says (range, round).
fn pattern(i: usize, round: u32) -> Vec<u8> {
    let word = (i as u32) << 24 | round;
    word.to_le_bytes().iter().copied().cycle().take(RANGE_BYTES).collect()
}

/// The (range, round) a read saw, if it is one whole round of one range.
fn whole_round(bytes: &[u8]) -> Option<(usize, u32)> {
    let first: [u8; 4] = bytes[..4].try_into().unwrap();
    if !bytes.chunks_exact(4).all(|w| w == first) {
        return None;
    }
    let w = u32::from_le_bytes(first);
    Some(((w >> 24) as usize, w & 0xff_ffff))
}

#[test]
fn disjoint_writers_and_concurrent_readers_never_see_torn_bytes() {
    let secret = Secret::new(vec![3; 32]).unwrap();
    let server = RegionServer::bind("127.0.0.1:0".parse().unwrap(), secret.clone(), 10_000).unwrap();
    let target = OwnedRegion::zeroed(RANGES * RANGE_BYTES).unwrap();
    let id = server.register(target.region().clone()).unwrap();
    let client = RegionServer::bind("127.0.0.1:0".parse().unwrap(), secret, 10_000).unwrap();
    let addr = server.local_addr();
    let (mut landed, mut refused_writes, mut whole_reads, mut refused_reads) = (0u32, 0u32, 0u32, 0u32);
    std::thread::scope(|s| {
        let mut writers = Vec::new();
        for i in 0..RANGES {
            let peer = client.connect(addr).unwrap();
            writers.push(s.spawn(move || {
                let mut src = OwnedRegion::zeroed(RANGE_BYTES).unwrap();
                let (mut ok, mut refused) = (0u32, 0u32);
                for round in 1..=ROUNDS {
                    src.fill(0, &pattern(i, round)).unwrap();
                    // until it lands: a read of this range may hold it for a while
                    loop {
                        let at = (i * RANGE_BYTES) as u64;
                        match peer.write(src.region(), 0, RANGE_BYTES as u64, id, at).unwrap().wait() {
                            Ok(()) => break ok += 1,
                            Err(e) => {
                                let e = e.to_string();
                                assert!(e.contains("overlap"), "range {i} round {round}: {e}");
                                refused += 1;
                                std::thread::yield_now();
                            }
                        }
                    }
                }
                (ok, refused)
            }));
        }
        let mut readers = Vec::new();
        for r in 0..RANGES {
            let peer = client.connect(addr).unwrap();
            readers.push(s.spawn(move || {
                let back = Arc::new(OwnedRegion::zeroed(RANGE_BYTES).unwrap());
                let (mut whole, mut refused) = (0u32, 0u32);
                for k in 0..READS_PER_READER {
                    let j = (r + k as usize) % RANGES;
                    let at = (j * RANGE_BYTES) as u64;
                    match peer.read(back.region().clone(), 0, RANGE_BYTES as u64, id, at).unwrap().wait() {
                        Ok(()) => {
                            let got = back.read(0, RANGE_BYTES).unwrap();
                            match whole_round(&got) {
                                // round 0: not written yet (zeros)
                                Some((_, 0)) if got.iter().all(|&b| b == 0) => {}
                                Some((range, round)) => {
                                    assert_eq!(range, j, "a read of range {j} saw range {range}'s bytes");
                                    assert!(round <= ROUNDS, "round {round}");
                                }
                                None => panic!("a read of range {j} saw a torn mix of rounds"),
                            }
                            whole += 1;
                        }
                        Err(e) => {
                            let e = e.to_string();
                            assert!(e.contains("overlap"), "read of range {j}: {e}");
                            refused += 1;
                        }
                    }
                }
                (whole, refused)
            }));
        }
        for w in writers {
            let (ok, refused) = w.join().unwrap();
            landed += ok;
            refused_writes += refused;
        }
        for r in readers {
            let (whole, refused) = r.join().unwrap();
            whole_reads += whole;
            refused_reads += refused;
        }
    });
    assert_eq!(landed, RANGES as u32 * ROUNDS);
    assert!(whole_reads > 0, "no read completed ({refused_reads} refused)");
    eprintln!("{landed} writes landed ({refused_writes} refused while read), {whole_reads} whole reads ({refused_reads} refused while written)");
    for i in 0..RANGES {
        assert_eq!(target.read(i * RANGE_BYTES, RANGE_BYTES).unwrap(), pattern(i, ROUNDS), "range {i}");
    }
}
