//! Following `GET /v1/events`: an [`EventStream`] reads the server-sent events,
//! decodes each CloudEvent, and reconnects with `Last-Event-ID` when the
//! connection drops, so a reader sees every event once, in order, across
//! dropped connections and server restarts.
//!
//! **Invariant:** the stream always knows the id it would resume after. Without
//! a starting point it asks the server for the log's head first, so even a drop
//! before the first event loses nothing.

use std::collections::VecDeque;
use std::time::Duration;

use cherga_api::event::{CloudEvent, EventList, EventsQuery};

use crate::Client;
use crate::error::{Error, decode_answer};
use crate::sse::{SseEvent, SseParser};

/// The server sends a heartbeat every 15 s; a stream silent for this long is
/// taken as dropped (a half-open connection) and reconnected.
const IDLE: Duration = Duration::from_secs(45);
/// First and longest wait before reconnecting.
const FIRST_RETRY: Duration = Duration::from_millis(100);
const MAX_RETRY: Duration = Duration::from_secs(5);

/// What an [`EventStream`] reads.
#[derive(Clone, Debug)]
pub enum StreamItem {
    /// An event, decoded, with its JSON as the server sent it.
    Event { event: Box<CloudEvent>, json: String },
    /// An `error` event: the server says something about the stream itself, such
    /// as `events_expired` (events were deleted by retention before this reader
    /// read them; the stream goes on from the oldest kept).
    StreamError { code: String, message: String },
    /// The connection dropped or could not be made; the stream reconnects, after
    /// the event `after`, on the next call.
    Reconnecting { after: String, reason: String },
}

/// A followed event stream; [`EventStream::next`] gives its items one by one.
#[derive(Debug)]
pub struct EventStream {
    client: Client,
    query: EventsQuery,
    /// The id of the last event read (or the starting point): what
    /// `Last-Event-ID` says on the next connection.
    after: String,
    response: Option<reqwest::Response>,
    parser: SseParser,
    ready: VecDeque<StreamItem>,
    retry_in: Duration,
}

impl Client {
    /// `GET /v1/events` with `Accept: application/json`: one page of events
    /// after `query.after` (0, the oldest kept, when absent).
    ///
    /// # Errors
    /// [`Error::Api`] for a bad filter, or `route_not_found` when the server keeps
    /// no event log; [`Error::Http`] when the server cannot be reached.
    pub async fn events_page(&self, query: &EventsQuery) -> Result<EventList, Error> {
        let mut pairs = filter_pairs(query);
        if let Some(after) = &query.after {
            pairs.push(("after", after.clone()));
        }
        if let Some(limit) = query.limit {
            pairs.push(("limit", limit.to_string()));
        }
        let builder = self.request(reqwest::Method::GET, &["v1", "events"]);
        self.call(builder.header(reqwest::header::ACCEPT, "application/json").query(&pairs)).await
    }

    /// Follows `GET /v1/events` from after `query.after`, or from now when it is
    /// absent. `query.limit` is not used.
    ///
    /// # Errors
    /// As [`Client::events_page`], for the first connection; later drops are
    /// items of the stream ([`StreamItem::Reconnecting`]).
    pub async fn follow_events(&self, query: EventsQuery) -> Result<EventStream, Error> {
        let after = match &query.after {
            Some(after) => after.clone(),
            // The log's head, so that the stream starts now and a drop before
            // its first event still resumes from here.
            None => self.events_page(&EventsQuery { limit: Some(1), ..EventsQuery::default() }).await?.head,
        };
        let mut stream = EventStream {
            client: self.clone(),
            query,
            after,
            response: None,
            parser: SseParser::new(),
            ready: VecDeque::new(),
            retry_in: FIRST_RETRY,
        };
        stream.response = Some(stream.connect().await?);
        Ok(stream)
    }
}

impl EventStream {
    /// The id of the last event read: where the stream would resume.
    pub fn after(&self) -> &str {
        &self.after
    }

    /// The next item: an event, an error event, or news of a reconnection.
    ///
    /// # Errors
    /// When a reconnection is refused for good (a 4xx such as an expired token),
    /// or the server sends an event that is not a CloudEvent.
    pub async fn next(&mut self) -> Result<StreamItem, Error> {
        loop {
            if let Some(item) = self.ready.pop_front() {
                return Ok(item);
            }
            let Some(response) = &mut self.response else {
                tokio::time::sleep(self.retry_in).await;
                self.retry_in = (self.retry_in * 2).min(MAX_RETRY);
                match self.connect().await {
                    Ok(response) => {
                        self.response = Some(response);
                        continue;
                    }
                    Err(error) if error.is_transient() => return Ok(self.reconnecting(&error)),
                    Err(error) => return Err(error),
                }
            };
            let reason = match tokio::time::timeout(IDLE, response.chunk()).await {
                Ok(Ok(Some(bytes))) => {
                    // Data flows: the next drop starts its retries afresh.
                    self.retry_in = FIRST_RETRY;
                    for event in self.parser.push(&bytes) {
                        let item = self.item(event)?;
                        self.ready.push_back(item);
                    }
                    continue;
                }
                Ok(Ok(None)) => "the server ended the stream".to_owned(),
                Ok(Err(error)) => format!("the connection failed: {}", Error::from(error)),
                Err(_) => format!("nothing came for {} s, not even a heartbeat", IDLE.as_secs()),
            };
            self.response = None;
            // What was cut mid-event is read again after the reconnection.
            self.parser = SseParser::new();
            return Ok(StreamItem::Reconnecting { after: self.after.clone(), reason });
        }
    }

    fn reconnecting(&self, error: &Error) -> StreamItem {
        let mut reason = error.to_string();
        let mut cause = std::error::Error::source(error);
        while let Some(source) = cause {
            reason = format!("{reason}: {source}");
            cause = source.source();
        }
        StreamItem::Reconnecting { after: self.after.clone(), reason }
    }

    fn item(&mut self, event: SseEvent) -> Result<StreamItem, Error> {
        let undecodable = |source| Error::Decode { status: 200, source, body: event.data.clone() };
        if event.event == "error" {
            #[derive(serde::Deserialize)]
            struct Body {
                error: cherga_api::WireError,
            }
            let body: Body = serde_json::from_str(&event.data).map_err(undecodable)?;
            return Ok(StreamItem::StreamError { code: body.error.code, message: body.error.message });
        }
        let decoded: CloudEvent = serde_json::from_str(&event.data).map_err(undecodable)?;
        self.after = event.id.unwrap_or_else(|| decoded.id.clone());
        Ok(StreamItem::Event { event: Box::new(decoded), json: event.data })
    }

    /// Opens the stream after `self.after`.
    async fn connect(&self) -> Result<reqwest::Response, Error> {
        let builder = self
            .client
            .stream_request(&["v1", "events"])
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .header("Last-Event-ID", &self.after)
            .query(&filter_pairs(&self.query));
        let response = builder.send().await?;
        let status = response.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(response);
        }
        let body = response.bytes().await?;
        // Any status outside 2xx decodes as an error.
        Err(decode_answer::<serde::de::IgnoredAny>(status, &body).err().unwrap_or(Error::Api {
            status,
            code: "unexpected_status".to_owned(),
            message: format!("the event stream answered {status}"),
        }))
    }
}

/// The filters of `query` as query-string pairs.
fn filter_pairs(query: &EventsQuery) -> Vec<(&'static str, String)> {
    let fields = [
        ("queue", &query.queue),
        ("kind", &query.kind),
        ("state", &query.state),
        ("type", &query.event_type),
        ("task", &query.task),
    ];
    fields.into_iter().filter_map(|(name, value)| value.clone().map(|v| (name, v))).collect()
}
