//! The WHATWG URL standard's `application/x-www-form-urlencoded` parser,
//! written from the standard for the fuzz targets' oracles, so that they do
//! not check the crate's query handling against the library it uses.

/// The name/value pairs of `input`: split at `&`, skip empty pieces, split
/// each at its first `=` (no `=`: the value is empty), turn `+` into a
/// space, then percent-decode and decode UTF-8 with replacement.
pub fn pairs(input: &[u8]) -> Vec<(String, String)> {
    input
        .split(|&b| b == b'&')
        .filter(|piece| !piece.is_empty())
        .map(|piece| match piece.iter().position(|&b| b == b'=') {
            Some(at) => (decode(&piece[..at]), decode(&piece[at + 1..])),
            None => (decode(piece), String::new()),
        })
        .collect()
}

/// `+` to space, `%XX` (two hex digits) to that byte, any other `%` kept,
/// then UTF-8 with replacement.
fn decode(bytes: &[u8]) -> String {
    let hex = |b: u8| char::from(b).to_digit(16);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(high), Some(low)) => {
                    out.push((high * 16 + low) as u8);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Every byte as `%XX`: decodes back to exactly `bytes` whatever they are.
pub fn encode_all(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("%{b:02X}")).collect()
}
