//! The floor of scenario 1: the same Vault writes `certus-vault apply` makes, sent by the
//! most minimal client there is — HTTP/1.1 over `std::net::TcpStream`, one keep-alive
//! connection per thread, `--concurrency` threads pulling from one shared queue. No
//! reads, no diffing, no TLS, no JSON parsing, no async runtime, no dependencies.
//!
//! Built by hack/bench/run with plain `rustc -O` (no Cargo) so nothing else comes along.
//!
//!   floor ADDR(host:port) TOKEN CONCURRENCY REQUESTS_FILE
//!
//! REQUESTS_FILE: one request a line, `METHOD<TAB>/v1/path<TAB>compact JSON body`.
//! Prints one JSON line: {"requests":N,"errors":E,"seconds":S,"first_error":"..."}.
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

struct Req {
    method: String,
    path: String,
    body: String,
}

fn read_response(r: &mut BufReader<TcpStream>) -> std::io::Result<u16> {
    let mut line = String::new();
    r.read_line(&mut line)?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
    let mut len = 0usize;
    let mut chunked = false;
    loop {
        line.clear();
        r.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let lower = l.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        } else if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
            chunked = true;
        }
    }
    if chunked {
        loop {
            line.clear();
            r.read_line(&mut line)?;
            let n = usize::from_str_radix(line.trim(), 16).unwrap_or(0);
            let mut skip = vec![0u8; n + 2];
            r.read_exact(&mut skip)?;
            if n == 0 {
                break;
            }
        }
    } else if len > 0 {
        let mut body = vec![0u8; len];
        r.read_exact(&mut body)?;
    }
    Ok(status)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 5 {
        eprintln!("usage: floor HOST:PORT TOKEN CONCURRENCY REQUESTS_FILE");
        std::process::exit(2);
    }
    let (addr, token) = (args[1].clone(), args[2].clone());
    let conc: usize = args[3].parse().expect("concurrency");
    let text = std::fs::read_to_string(&args[4]).expect("requests file");
    let reqs: Arc<Vec<Req>> = Arc::new(
        text.lines()
            .filter(|l| !l.is_empty())
            .map(|l| {
                let mut p = l.splitn(3, '\t');
                Req {
                    method: p.next().unwrap().to_string(),
                    path: p.next().unwrap().to_string(),
                    body: p.next().unwrap_or("").to_string(),
                }
            })
            .collect(),
    );
    let next = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicUsize::new(0));
    let first_error = Arc::new(Mutex::new(String::new()));
    let t = Instant::now();
    let threads: Vec<_> = (0..conc.max(1))
        .map(|_| {
            let (reqs, next, errors, first_error) =
                (reqs.clone(), next.clone(), errors.clone(), first_error.clone());
            let (addr, token) = (addr.clone(), token.clone());
            std::thread::spawn(move || {
                let stream = TcpStream::connect(&addr).expect("connect");
                stream.set_nodelay(true).ok();
                let mut w = stream.try_clone().expect("clone");
                let mut r = BufReader::new(stream);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(q) = reqs.get(i) else { break };
                    let head = format!(
                        "{} {} HTTP/1.1\r\nHost: {addr}\r\nX-Vault-Token: {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                        q.method,
                        q.path,
                        q.body.len()
                    );
                    let mut buf = head.into_bytes();
                    buf.extend_from_slice(q.body.as_bytes());
                    let res = w.write_all(&buf).and_then(|_| read_response(&mut r));
                    match res {
                        Ok(s) if (200..300).contains(&s) => {}
                        other => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            let mut f = first_error.lock().unwrap();
                            if f.is_empty() {
                                *f = format!("{} {}: {:?}", q.method, q.path, other);
                            }
                            if other.is_err() {
                                break;
                            }
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let secs = t.elapsed().as_secs_f64();
    let fe = first_error.lock().unwrap().replace('\\', "\\\\").replace('"', "'");
    println!(
        "{{\"requests\":{},\"errors\":{},\"seconds\":{secs:.6},\"first_error\":\"{fe}\"}}",
        reqs.len(),
        errors.load(Ordering::Relaxed)
    );
}
