//! Just enough HTTP/1.1 for a local control socket: one request per
//! connection (parsed with httparse), a JSON response, then close.

/// Upper bound on a request (headers + body): control requests are tiny.
pub const MAX_REQUEST: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub body: Vec<u8>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Parse {
    /// More bytes are needed.
    Partial,
    Complete(Request),
    /// Malformed or too large: answer 400 and close.
    Bad(String),
}

/// Parses a buffered request.
pub fn parse(buf: &[u8]) -> Parse {
    if buf.len() > MAX_REQUEST {
        return Parse::Bad(format!("request larger than {MAX_REQUEST} bytes"));
    }
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let header_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parse::Partial,
        Err(e) => return Parse::Bad(format!("malformed HTTP request: {e}")),
    };
    let mut content_length = 0usize;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            match std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
            {
                Some(n) => content_length = n,
                None => return Parse::Bad("invalid Content-Length".into()),
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Parse::Bad("chunked bodies are not supported; send Content-Length".into());
        }
    }
    if header_len.saturating_add(content_length) > MAX_REQUEST {
        return Parse::Bad(format!("request larger than {MAX_REQUEST} bytes"));
    }
    if buf.len() < header_len + content_length {
        return Parse::Partial;
    }
    Parse::Complete(Request {
        method: req.method.unwrap_or("").to_string(),
        path: req.path.unwrap_or("").to_string(),
        body: buf[header_len..header_len + content_length].to_vec(),
    })
}

/// A JSON response.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    pub status: u16,
    pub body: serde_json::Value,
}

impl Response {
    pub fn ok(body: serde_json::Value) -> Self {
        Self { status: 200, body }
    }

    pub fn error(status: u16, message: impl Into<String>) -> Self {
        Self {
            status,
            body: serde_json::json!({ "error": message.into() }),
        }
    }

    fn reason(&self) -> &'static str {
        match self.status {
            200 => "OK",
            400 => "Bad Request",
            403 => "Forbidden",
            404 => "Not Found",
            405 => "Method Not Allowed",
            409 => "Conflict",
            500 => "Internal Server Error",
            _ => "",
        }
    }

    /// The response on the wire (the server writes it without blocking).
    pub fn to_bytes(&self) -> Vec<u8> {
        let body = self.body.to_string();
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.status,
            self.reason(),
            body.len() + 1
        )
        .into_bytes();
        out.extend_from_slice(body.as_bytes());
        out.push(b'\n');
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_complete_partial_and_bad_requests() {
        let r =
            b"PUT /vm/snapshot HTTP/1.1\r\nHost: x\r\nContent-Length: 13\r\n\r\n{\"dir\":\"/a\"}\n";
        assert_eq!(
            parse(r),
            Parse::Complete(Request {
                method: "PUT".into(),
                path: "/vm/snapshot".into(),
                body: b"{\"dir\":\"/a\"}\n".to_vec()
            })
        );
        assert_eq!(parse(&r[..30]), Parse::Partial);
        assert_eq!(parse(&r[..r.len() - 1]), Parse::Partial);
        assert!(matches!(parse(b"\x00\x01 garbage\r\n\r\n"), Parse::Bad(_)));
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n"),
            Parse::Bad(_)
        ));
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n"),
            Parse::Bad(_)
        ));
        assert!(matches!(parse(&vec![b'a'; MAX_REQUEST + 1]), Parse::Bad(_)));
    }
}
