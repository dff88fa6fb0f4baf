//! A zero-copy SIP message view (RFC 3261): start line, header lookup with compact forms, name-addr
//! parsing (display name, user, tag) and Content-Length framing.
//!
//! Only what a recorder needs is interpreted; every accessor borrows from the packet. Messages from a
//! mirror port are often damaged or fuzzed, so nothing here panics and every failure says what was
//! wrong. The parser is deliberately lenient where real equipment is sloppy (missing
//! Content-Length over UDP, LF-only line ends, odd header case).

use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SipError {
    /// More bytes are needed (only meaningful on a stream transport).
    #[error("message incomplete")]
    Incomplete,
    #[error("not SIP: {0}")]
    NotSip(&'static str),
    #[error("malformed SIP: {0}")]
    Malformed(&'static str),
}

/// The error text for header blocks that are not UTF-8 (callers may retry with a lossy copy).
pub const NOT_UTF8: &str = "header block is not UTF-8";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartLine<'a> {
    Request { method: &'a str, uri: &'a str },
    Response { code: u16, reason: &'a str },
}

/// A parsed SIP message borrowed from its buffer.
#[derive(Debug, Clone, Copy)]
pub struct SipMessage<'a> {
    pub start: StartLine<'a>,
    head: &'a str,
    pub body: &'a [u8],
    /// Content-Length was absent or unusable and the body was taken as the rest of the datagram.
    pub length_inferred: bool,
}

/// Whether a payload starts like a SIP message (response or request line). Cheap: used to classify
/// every UDP payload that is not known media and every new TCP flow.
pub fn looks_like_sip(b: &[u8]) -> bool {
    if b.starts_with(b"SIP/2.0 ") {
        return true;
    }
    // Request line: METHOD SP Request-URI SP SIP/2.0 CRLF, within the first line.
    let line_end = b.iter().take(2048).position(|&c| c == b'\n');
    let Some(end) = line_end else { return false };
    let line = &b[..end];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Some(sp) = line.iter().position(|&c| c == b' ') else { return false };
    sp > 0
        && line[..sp].iter().all(|c| c.is_ascii_alphabetic() || *c == b'-' || *c == b'_')
        && line.ends_with(b" SIP/2.0")
}

fn find_head_end(b: &[u8]) -> Option<(usize, usize)> {
    // Returns (end of headers, start of body).
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\n' {
            if b.get(i + 1) == Some(&b'\n') {
                return Some((i, i + 2));
            }
            if b.get(i + 1) == Some(&b'\r') && b.get(i + 2) == Some(&b'\n') {
                return Some((i, i + 3));
            }
        }
        i += 1;
    }
    None
}

impl<'a> SipMessage<'a> {
    /// Parses one message at the start of `buf`. `stream` selects stream framing: the message must
    /// carry a valid Content-Length and `Incomplete` is returned until all of it is there. On a
    /// datagram the body is the rest of the datagram when Content-Length is missing or wrong.
    /// Returns the message and the number of bytes it took.
    pub fn parse(buf: &'a [u8], stream: bool) -> Result<(Self, usize), SipError> {
        let Some((head_end, body_start)) = find_head_end(buf) else {
            if stream {
                if buf.len() > 64 * 1024 {
                    return Err(SipError::Malformed("header block longer than 64 KiB"));
                }
                return Err(SipError::Incomplete);
            }
            // A datagram with headers only and no blank line: accept all of it as the head.
            return Self::from_parts(buf, buf.len(), &[], false).map(|m| (m, buf.len()));
        };
        let head = &buf[..head_end];
        let rest = &buf[body_start..];
        let mut msg = Self::from_parts(head, head.len(), &[], false)?;
        match msg.content_length() {
            Some(Ok(n)) if n <= rest.len() => {
                msg.body = &rest[..n];
                Ok((msg, body_start + n))
            }
            Some(Ok(_)) if stream => Err(SipError::Incomplete),
            Some(Err(())) if stream => Err(SipError::Malformed("invalid Content-Length")),
            None if stream => {
                // RFC 3261 requires Content-Length on streams; assume no body.
                Ok((msg, body_start))
            }
            _ => {
                msg.body = rest;
                msg.length_inferred = true;
                Ok((msg, buf.len()))
            }
        }
    }

    fn from_parts(head: &'a [u8], _len: usize, body: &'a [u8], inferred: bool) -> Result<Self, SipError> {
        let head = std::str::from_utf8(head).map_err(|_| SipError::Malformed(NOT_UTF8))?;
        let (first, rest) = head.split_once('\n').unwrap_or((head, ""));
        let first = first.trim_end_matches('\r');
        let start = if let Some(r) = first.strip_prefix("SIP/2.0 ") {
            let (code, reason) = r.split_once(' ').unwrap_or((r, ""));
            let code: u16 = code.parse().map_err(|_| SipError::Malformed("status code is not a number"))?;
            if !(100..=699).contains(&code) {
                return Err(SipError::Malformed("status code out of range"));
            }
            StartLine::Response { code, reason }
        } else {
            let mut parts = first.split(' ');
            let method = parts.next().unwrap_or("");
            let uri = parts.next().ok_or(SipError::NotSip("request line has no URI"))?;
            if parts.next() != Some("SIP/2.0") || method.is_empty() {
                return Err(SipError::NotSip("no SIP/2.0 in the start line"));
            }
            StartLine::Request { method, uri }
        };
        Ok(SipMessage { start, head: rest, body, length_inferred: inferred })
    }

    pub fn method(&self) -> Option<&'a str> {
        match self.start {
            StartLine::Request { method, .. } => Some(method),
            _ => None,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self.start {
            StartLine::Response { code, .. } => Some(code),
            _ => None,
        }
    }

    /// All values of a header (long or compact name), in order. Comma-separated values are not split.
    pub fn headers(&self, long: &'static str, compact: Option<&'static str>) -> impl Iterator<Item = &'a str> + 'a {
        self.head.split('\n').filter_map(move |line| {
            let line = line.trim_end_matches('\r');
            let (name, value) = line.split_once(':')?;
            let name = name.trim_end();
            let hit = name.eq_ignore_ascii_case(long) || compact.is_some_and(|c| name.eq_ignore_ascii_case(c));
            hit.then(|| value.trim())
        })
    }

    pub fn header(&self, long: &'static str, compact: Option<&'static str>) -> Option<&'a str> {
        self.headers(long, compact).next()
    }

    pub fn call_id(&self) -> Option<&'a str> {
        self.header("Call-ID", Some("i")).filter(|v| !v.is_empty())
    }

    pub fn from(&self) -> Option<NameAddr<'a>> {
        self.header("From", Some("f")).map(NameAddr::parse)
    }

    pub fn to(&self) -> Option<NameAddr<'a>> {
        self.header("To", Some("t")).map(NameAddr::parse)
    }

    pub fn p_asserted_identity(&self) -> Option<NameAddr<'a>> {
        self.header("P-Asserted-Identity", None).map(|v| NameAddr::parse(first_of_list(v)))
    }

    /// CSeq number and method.
    pub fn cseq(&self) -> Option<(u32, &'a str)> {
        let v = self.header("CSeq", None)?;
        let (n, m) = v.split_once(char::is_whitespace)?;
        Some((n.trim().parse().ok()?, m.trim()))
    }

    pub fn content_type(&self) -> Option<&'a str> {
        self.header("Content-Type", Some("c"))
    }

    /// `None` when absent, `Some(Err)` when present but not a number.
    pub fn content_length(&self) -> Option<Result<usize, ()>> {
        self.header("Content-Length", Some("l")).map(|v| v.parse::<usize>().map_err(|_| ()))
    }

    /// The branch parameter of the top Via, used to tell transactions apart.
    pub fn top_via_branch(&self) -> Option<&'a str> {
        let via = self.header("Via", Some("v"))?;
        param(via, "branch")
    }

    /// Whether the body is SDP.
    pub fn has_sdp(&self) -> bool {
        !self.body.is_empty()
            && match self.content_type() {
                Some(ct) => ct.to_ascii_lowercase().contains("application/sdp"),
                None => self.body.starts_with(b"v=0"),
            }
    }
}

/// The first entry of a comma-separated header list, respecting quotes and `<…>`.
pub fn first_of_list(v: &str) -> &str {
    let (mut quoted, mut angle) = (false, false);
    for (i, c) in v.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '<' if !quoted => angle = true,
            '>' if !quoted => angle = false,
            ',' if !quoted && !angle => return &v[..i],
            _ => {}
        }
    }
    v
}

/// A header parameter value (`;name=value`), case-insensitive name.
pub fn param<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim().trim_matches('"'))
    })
}

/// `"Display" <sip:user@host;params>;tag=x` or `sip:user@host;tag=x`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NameAddr<'a> {
    pub display: &'a str,
    pub uri: &'a str,
    pub tag: Option<&'a str>,
}

impl<'a> NameAddr<'a> {
    pub fn parse(v: &'a str) -> Self {
        let v = v.trim();
        if let Some(lt) = v.find('<') {
            let display = v[..lt].trim().trim_matches('"').trim();
            let rest = &v[lt + 1..];
            let gt = rest.find('>').unwrap_or(rest.len());
            let uri = &rest[..gt];
            let params = rest.get(gt + 1..).unwrap_or("");
            NameAddr { display, uri, tag: param(params, "tag") }
        } else {
            let uri_end = v.find(';').unwrap_or(v.len());
            NameAddr { display: "", uri: &v[..uri_end], tag: param(v, "tag") }
        }
    }

    /// The user part of the URI (the phone number for most PBXs), or the host when there is none.
    pub fn user(&self) -> &'a str {
        let u = self.uri;
        let u = u.split_once(':').map(|(scheme, rest)| if scheme.len() <= 5 { rest } else { u }).unwrap_or(u);
        let u = u.split(';').next().unwrap_or(u);
        match u.split_once('@') {
            Some((user, _)) => user.split(':').next().unwrap_or(user),
            None => u,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INVITE: &[u8] = b"INVITE sip:bob@example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK776\r\n\
f: \"Alice A\" <sip:+15551234@example.com>;tag=1928\r\n\
t: <sip:bob@example.com>\r\n\
i: a84b4c76e66710\r\n\
CSeq: 314159 INVITE\r\n\
c: application/sdp\r\n\
l: 4\r\n\r\nv=0\nEXTRA";

    #[test]
    fn parses_compact_invite() {
        let (m, used) = SipMessage::parse(INVITE, true).unwrap();
        assert_eq!(m.method(), Some("INVITE"));
        assert_eq!(m.call_id(), Some("a84b4c76e66710"));
        let from = m.from().unwrap();
        assert_eq!((from.display, from.user(), from.tag), ("Alice A", "+15551234", Some("1928")));
        assert_eq!(m.to().unwrap().user(), "bob");
        assert_eq!(m.cseq(), Some((314159, "INVITE")));
        assert_eq!(m.body, b"v=0\n");
        assert_eq!(used, INVITE.len() - 5);
        assert!(m.has_sdp());
        assert_eq!(m.top_via_branch(), Some("z9hG4bK776"));
    }

    #[test]
    fn stream_framing_waits_for_body() {
        for cut in 0..INVITE.len() - 5 {
            assert_eq!(SipMessage::parse(&INVITE[..cut], true).unwrap_err(), SipError::Incomplete, "cut {cut}");
        }
    }

    #[test]
    fn detection() {
        assert!(looks_like_sip(b"SIP/2.0 200 OK\r\n"));
        assert!(looks_like_sip(b"REGIStER sip:x SIP/2.0\r\n"));
        assert!(!looks_like_sip(b"GET / HTTP/1.1\r\n"));
        assert!(!looks_like_sip(&[0x80, 0x00, 0x01]));
    }

    #[test]
    fn bad_content_length_on_datagram_takes_rest() {
        let msg = b"SIP/2.0 200 OK\r\nContent-Length: abc\r\n\r\nv=0\r\n";
        let (m, _) = SipMessage::parse(msg, false).unwrap();
        assert!(m.length_inferred);
        assert_eq!(m.body, b"v=0\r\n");
        assert!(SipMessage::parse(msg, true).is_err());
    }

    #[test]
    fn list_entries_keep_quoted_commas() {
        assert_eq!(first_of_list("\"Doe, J\" <sip:1@h>, <tel:+1>"), "\"Doe, J\" <sip:1@h>");
        let n = NameAddr::parse(first_of_list("\"Doe, J\" <sip:100@h>"));
        assert_eq!((n.display, n.user()), ("Doe, J", "100"));
    }

    #[test]
    fn user_of_tel_and_plain() {
        assert_eq!(NameAddr::parse("<tel:+123;phone-context=x>").user(), "+123");
        assert_eq!(NameAddr::parse("sip:200@10.0.0.1:5060;tag=9").user(), "200");
        assert_eq!(NameAddr::parse("sip:200@10.0.0.1:5060;tag=9").tag, Some("9"));
        assert_eq!(NameAddr::parse("<sip:user:pw@host>").user(), "user");
    }
}
