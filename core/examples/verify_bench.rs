//! Raw signature verification speed outside Postgres, for `make bench` (prints `<size> <calls/s>`).
use pg_billing_core::signature;
use std::time::{Duration, Instant};

fn main() {
    for (name, size) in [("2k", 2048usize), ("1m", 1024 * 1024)] {
        let payload = vec![b'x'; size];
        let header = signature::sign(&payload, b"whsec_bench", 1_700_000_000);
        let start = Instant::now();
        let mut calls = 0u64;
        while start.elapsed() < Duration::from_secs(3) {
            assert!(signature::verify(&payload, &header, b"whsec_bench", 0, 0).is_ok());
            calls += 1;
        }
        println!("{name} {:.1}", calls as f64 / start.elapsed().as_secs_f64());
    }
}
