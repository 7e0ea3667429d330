//! What the load benchmarks share (compiled into each with `#[path]`).

use tokio::io::AsyncBufReadExt;

/// Reads one reply (all its lines); `Err` unless it has `code`.
pub async fn expect<R: tokio::io::AsyncBufRead + Unpin>(
    r: &mut R,
    code: &str,
) -> Result<(), String> {
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).await.map_err(|e| e.to_string())? == 0 {
            return Err("closed".into());
        }
        if !line.starts_with(code) {
            return Err(line);
        }
        if line.as_bytes().get(3) == Some(&b' ') {
            return Ok(());
        }
    }
}
