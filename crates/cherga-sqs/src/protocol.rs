//! The two SQS wire protocols: AWS JSON 1.0 (`X-Amz-Target: AmazonSQS.<Action>`,
//! a JSON body) and the query protocol (`Action=<Action>&...` in a form body or
//! the URL, XML answers). Both are read into one shape, the JSON protocol's, so
//! the actions see one request and give one answer.

use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

/// Which protocol a request came in, so its answer goes out in the same.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Wire {
    Json,
    Query,
}

/// An action and its parameters, in the JSON protocol's shape.
#[derive(Debug)]
pub(crate) struct Request {
    pub wire: Wire,
    pub action: String,
    pub params: Map<String, Value>,
}

/// An error in the SDKs' terms: the JSON protocol's `__type` (its shape name),
/// the query protocol's code (which SDKs report as the error code), a message.
#[derive(Debug, Clone, PartialEq)]
pub struct SqsError {
    pub status: StatusCode,
    /// The shape name of the JSON protocol's `__type`.
    pub shape: &'static str,
    /// The error code of the query protocol (and `x-amzn-query-error`).
    pub code: &'static str,
    pub message: String,
    /// Whether the caller is at fault (`Sender`) or the server (`Receiver`).
    pub sender: bool,
}

impl SqsError {
    fn new(shape: &'static str, code: &'static str, message: impl Into<String>) -> Self {
        Self { status: StatusCode::BAD_REQUEST, shape, code, message: message.into(), sender: true }
    }

    pub fn no_queue() -> Self {
        Self::new(
            "QueueDoesNotExist",
            "AWS.SimpleQueueService.NonExistentQueue",
            "The specified queue does not exist.",
        )
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new("InvalidParameterValue", "InvalidParameterValue", message)
    }
    pub fn missing(name: &str) -> Self {
        Self::new(
            "MissingParameter",
            "MissingParameter",
            format!("The request must contain the parameter {name}."),
        )
    }
    pub fn invalid_action(action: &str) -> Self {
        Self::new(
            "InvalidAction",
            "InvalidAction",
            format!("The action {action} is not valid for this endpoint."),
        )
    }
    pub fn attribute_name(name: &str) -> Self {
        Self::new("InvalidAttributeName", "InvalidAttributeName", format!("Unknown Attribute {name}."))
    }
    pub fn attribute_value(message: impl Into<String>) -> Self {
        Self::new("InvalidAttributeValue", "InvalidAttributeValue", message)
    }
    pub fn receipt_handle(message: impl Into<String>) -> Self {
        Self::new("ReceiptHandleIsInvalid", "ReceiptHandleIsInvalid", message)
    }
    pub fn not_inflight(message: impl Into<String>) -> Self {
        Self::new("MessageNotInflight", "AWS.SimpleQueueService.MessageNotInflight", message)
    }
    pub fn empty_batch() -> Self {
        Self::new(
            "EmptyBatchRequest",
            "AWS.SimpleQueueService.EmptyBatchRequest",
            "There should be at least one entry in the request.",
        )
    }
    pub fn too_many_entries(n: usize) -> Self {
        Self::new(
            "TooManyEntriesInBatchRequest",
            "AWS.SimpleQueueService.TooManyEntriesInBatchRequest",
            format!("Maximum number of entries per request are 10. You have sent {n}."),
        )
    }
    pub fn ids_not_distinct(id: &str) -> Self {
        Self::new(
            "BatchEntryIdsNotDistinct",
            "AWS.SimpleQueueService.BatchEntryIdsNotDistinct",
            format!("Id {id} repeated."),
        )
    }
    pub fn batch_entry_id(id: &str) -> Self {
        Self::new(
            "InvalidBatchEntryId",
            "AWS.SimpleQueueService.InvalidBatchEntryId",
            format!(
                "A batch entry id can only contain alphanumeric characters, hyphens and underscores, 1 to 80 of them; {id:?} does not."
            ),
        )
    }
    pub fn auth(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, shape: code, code, message: message.into(), sender: true }
    }
    pub fn unavailable() -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            shape: "ServiceUnavailable",
            code: "ServiceUnavailable",
            message: "The store is unavailable; retry.".into(),
            sender: false,
        }
    }
    pub fn internal() -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            shape: "InternalError",
            code: "InternalError",
            message: "The server failed; see its log.".into(),
            sender: false,
        }
    }
}

impl Request {
    /// Reads the action and its parameters.
    ///
    /// # Errors
    /// An [`SqsError`] with the protocol to answer it in.
    pub fn read(
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<Self, (SqsError, Wire)> {
        if let Some(target) = headers.get("x-amz-target") {
            let fail = |e: SqsError| (e, Wire::Json);
            let target = target.to_str().map_err(|_| fail(SqsError::invalid("X-Amz-Target is not text")))?;
            let action = target
                .strip_prefix("AmazonSQS.")
                .ok_or_else(|| fail(SqsError::invalid_action(target)))?
                .to_owned();
            if method != Method::POST {
                return Err(fail(SqsError::invalid("the JSON protocol takes POST requests")));
            }
            let params = if body.iter().all(u8::is_ascii_whitespace) {
                Map::new()
            } else {
                match serde_json::from_slice::<Value>(body) {
                    Ok(Value::Object(map)) => map,
                    Ok(_) => return Err(fail(SqsError::invalid("the request body must be a JSON object"))),
                    Err(e) => {
                        return Err(fail(SqsError::invalid(format!("the request body is not JSON: {e}"))));
                    }
                }
            };
            return Ok(Self { wire: Wire::Json, action, params });
        }
        let fail = |e: SqsError| (e, Wire::Query);
        let mut pairs: Vec<(String, String)> = Vec::new();
        if let Some(query) = uri.query() {
            pairs.extend(form_urlencoded::parse(query.as_bytes()).into_owned());
        }
        if method == Method::POST {
            pairs.extend(form_urlencoded::parse(body).into_owned());
        }
        let action = match pairs.iter().position(|(k, _)| k == "Action") {
            Some(i) => pairs.remove(i).1,
            None => return Err(fail(SqsError::missing("Action"))),
        };
        // The URL's path names the queue in the query protocol.
        let mut params = nest(&pairs);
        if !params.contains_key("QueueUrl") && uri.path().trim_matches('/').contains('/') {
            params.insert("QueueUrl".into(), Value::String(uri.path().to_owned()));
        }
        Ok(Self { wire: Wire::Query, action, params })
    }
}

/// Turns the query protocol's flattened parameters (`Attribute.1.Name`,
/// `SendMessageBatchRequestEntry.2.MessageAttribute.1.Value.StringValue`) into
/// the JSON protocol's shape.
pub(crate) fn nest(pairs: &[(String, String)]) -> Map<String, Value> {
    let mut out = Map::new();
    // Members of lists and maps: (JSON name, index, rest of the key, value).
    let mut members: Vec<(&'static str, Kind, u32, String, String)> = Vec::new();
    for (key, value) in pairs {
        let mut parts = key.splitn(3, '.');
        let head = parts.next().unwrap_or_default();
        let index = parts.next().and_then(|i| i.parse::<u32>().ok());
        let rest = parts.next().unwrap_or_default().to_owned();
        match (member_kind(head), index) {
            (Some((name, kind)), Some(index)) => members.push((name, kind, index, rest, value.clone())),
            _ => {
                out.insert(key.clone(), Value::String(value.clone()));
            }
        }
    }
    members.sort_by_key(|m| (m.0, m.2));
    let mut i = 0;
    while i < members.len() {
        let (name, kind, _, _, _) = members[i];
        let mut j = i;
        while j < members.len() && members[j].0 == name {
            j += 1;
        }
        let group = &members[i..j];
        let value = match kind {
            Kind::List => Value::Array(group.iter().map(|m| Value::String(m.4.clone())).collect()),
            Kind::Entries => {
                let mut entries: Vec<(u32, Vec<(String, String)>)> = Vec::new();
                for m in group {
                    match entries.last_mut() {
                        Some((index, fields)) if *index == m.2 => fields.push((m.3.clone(), m.4.clone())),
                        _ => entries.push((m.2, vec![(m.3.clone(), m.4.clone())])),
                    }
                }
                Value::Array(entries.into_iter().map(|(_, fields)| Value::Object(nest(&fields))).collect())
            }
            Kind::NameValue | Kind::KeyValue | Kind::Attributes => {
                let (key_field, value_field) =
                    if kind == Kind::KeyValue { ("Key", "Value") } else { ("Name", "Value") };
                let mut map = Map::new();
                let mut index = None;
                let mut entry: (Option<String>, Vec<(String, String)>) = (None, Vec::new());
                let flush = |entry: &mut (Option<String>, Vec<(String, String)>),
                             map: &mut Map<String, Value>| {
                    if let Some(k) = entry.0.take() {
                        let fields = std::mem::take(&mut entry.1);
                        let v = if kind == Kind::Attributes {
                            Value::Object(
                                fields
                                    .into_iter()
                                    .filter_map(|(f, v)| {
                                        f.strip_prefix("Value.").map(|f| (f.to_owned(), Value::String(v)))
                                    })
                                    .collect(),
                            )
                        } else {
                            fields
                                .into_iter()
                                .find(|(f, _)| f == value_field)
                                .map_or(Value::Null, |(_, v)| Value::String(v))
                        };
                        map.insert(k, v);
                    }
                    entry.1.clear();
                };
                for m in group {
                    if index != Some(m.2) {
                        flush(&mut entry, &mut map);
                        index = Some(m.2);
                    }
                    if m.3 == key_field {
                        entry.0 = Some(m.4.clone());
                    } else {
                        entry.1.push((m.3.clone(), m.4.clone()));
                    }
                }
                flush(&mut entry, &mut map);
                Value::Object(map)
            }
        };
        out.insert(name.to_owned(), value);
        i = j;
    }
    out
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// `X.1=a&X.2=b` → `["a", "b"]`
    List,
    /// `X.1.Name=n&X.1.Value=v` → `{"n": "v"}`
    NameValue,
    /// `Tag.1.Key=k&Tag.1.Value=v` → `{"k": "v"}`
    KeyValue,
    /// `MessageAttribute.1.Name=n&MessageAttribute.1.Value.DataType=String&…` → `{"n": {"DataType": …}}`
    Attributes,
    /// `XEntry.1.Id=a&XEntry.1.Body=b` → `[{"Id": "a", "Body": "b"}]`
    Entries,
}

fn member_kind(head: &str) -> Option<(&'static str, Kind)> {
    Some(match head {
        "AttributeName" => ("AttributeNames", Kind::List),
        "MessageSystemAttributeName" => ("MessageSystemAttributeNames", Kind::List),
        "MessageAttributeName" => ("MessageAttributeNames", Kind::List),
        "TagKey" => ("TagKeys", Kind::List),
        "Attribute" => ("Attributes", Kind::NameValue),
        "Tag" => ("tags", Kind::KeyValue),
        "MessageAttribute" => ("MessageAttributes", Kind::Attributes),
        "MessageSystemAttribute" => ("MessageSystemAttributes", Kind::Attributes),
        "SendMessageBatchRequestEntry"
        | "DeleteMessageBatchRequestEntry"
        | "ChangeMessageVisibilityBatchRequestEntry" => ("Entries", Kind::Entries),
        _ => return None,
    })
}

/// The scheme and host queue URLs are made of: the one the client used.
pub(crate) fn base_url(headers: &HeaderMap) -> String {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost");
    format!("http://{host}")
}

/// The answer to a request that succeeded.
pub(crate) fn answer(wire: Wire, action: &str, answer: Map<String, Value>) -> Response {
    let request_id = request_id();
    match wire {
        Wire::Json => {
            let mut response = (StatusCode::OK, Value::Object(answer).to_string()).into_response();
            let headers = response.headers_mut();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-amz-json-1.0"));
            headers.insert("x-amzn-requestid", HeaderValue::from_str(&request_id).expect("hex"));
            response
        }
        Wire::Query => {
            let mut xml = String::with_capacity(256);
            xml.push_str(&format!(
                "<?xml version=\"1.0\"?><{action}Response xmlns=\"http://queue.amazonaws.com/doc/2012-11-05/\">"
            ));
            if !answer.is_empty() {
                xml.push_str(&format!("<{action}Result>"));
                xml_members(&mut xml, action, &answer);
                xml.push_str(&format!("</{action}Result>"));
            }
            xml.push_str(&format!(
                "<ResponseMetadata><RequestId>{request_id}</RequestId></ResponseMetadata></{action}Response>"
            ));
            xml_response(StatusCode::OK, xml)
        }
    }
}

fn xml_response(status: StatusCode, xml: String) -> Response {
    let mut response = (status, xml).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/xml"));
    response
}

/// Writes an answer's members as the query protocol's XML.
fn xml_members(xml: &mut String, action: &str, members: &Map<String, Value>) {
    for (name, value) in members {
        match (name.as_str(), value) {
            ("Attributes" | "MessageAttributes", Value::Object(map)) => {
                let element = if name == "Attributes" { "Attribute" } else { "MessageAttribute" };
                for (k, v) in map {
                    xml.push_str(&format!("<{element}><Name>{}</Name><Value>", escape(k)));
                    match v {
                        Value::Object(fields) => xml_members(xml, action, fields),
                        other => xml.push_str(&escape(&scalar(other))),
                    }
                    xml.push_str(&format!("</Value></{element}>"));
                }
            }
            ("Tags", Value::Object(map)) => {
                for (k, v) in map {
                    xml.push_str(&format!(
                        "<Tag><Key>{}</Key><Value>{}</Value></Tag>",
                        escape(k),
                        escape(&scalar(v))
                    ));
                }
            }
            (_, Value::Array(items)) => {
                let element = match name.as_str() {
                    "QueueUrls" => "QueueUrl".to_owned(),
                    "Messages" => "Message".to_owned(),
                    "Failed" => "BatchResultErrorEntry".to_owned(),
                    "Successful" => format!("{action}ResultEntry"),
                    "StringListValues" => "StringListValue".to_owned(),
                    other => other.to_owned(),
                };
                for item in items {
                    xml.push_str(&format!("<{element}>"));
                    match item {
                        Value::Object(fields) => xml_members(xml, action, fields),
                        other => xml.push_str(&escape(&scalar(other))),
                    }
                    xml.push_str(&format!("</{element}>"));
                }
            }
            (_, Value::Object(fields)) => {
                xml.push_str(&format!("<{name}>"));
                xml_members(xml, action, fields);
                xml.push_str(&format!("</{name}>"));
            }
            (_, other) => xml.push_str(&format!("<{name}>{}</{name}>", escape(&scalar(other)))),
        }
    }
}

fn scalar(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Escapes text for XML; characters XML 1.0 cannot carry become character
/// references that SDKs read back (SQS does the same for `\r`).
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\r' => out.push_str("&#xD;"),
            c => out.push(c),
        }
    }
    out
}

/// The answer to a request that failed.
pub(crate) fn error_response(wire: Wire, error: &SqsError) -> Response {
    let fault = if error.sender { "Sender" } else { "Receiver" };
    let request_id = request_id();
    match wire {
        Wire::Json => {
            let body = serde_json::json!({
                "__type": format!("com.amazonaws.sqs#{}", error.shape),
                "message": error.message,
            });
            let mut response = (error.status, body.to_string()).into_response();
            let headers = response.headers_mut();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-amz-json-1.0"));
            headers.insert("x-amzn-requestid", HeaderValue::from_str(&request_id).expect("hex"));
            if let Ok(value) = HeaderValue::from_str(&format!("{};{fault}", error.code)) {
                headers.insert("x-amzn-query-error", value);
            }
            response
        }
        Wire::Query => {
            let xml = format!(
                "<?xml version=\"1.0\"?><ErrorResponse xmlns=\"http://queue.amazonaws.com/doc/2012-11-05/\"><Error><Type>{fault}</Type><Code>{}</Code><Message>{}</Message><Detail/></Error><RequestId>{request_id}</RequestId></ErrorResponse>",
                error.code,
                escape(&error.message)
            );
            xml_response(error.status, xml)
        }
    }
}

fn request_id() -> String {
    let (a, b) = (fastrand::u64(..), fastrand::u64(..));
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xffff,
        b >> 48,
        b & 0xffff_ffff_ffff
    )
}
