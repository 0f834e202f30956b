//! The backend API's HTTP side: `GET /api/topics`, `GET /api/topics/{topic}` and
//! `POST /api/disconnect` are authorized ([`ShardState::authorize_api`]: an API key when any
//! key is configured), then handed to `shard::api`, which asks every shard and answers the
//! (deferred) request.

use std::sync::Arc;

use crate::bus::Query;
use crate::http::ApiRoute;
use crate::io::Token;
use crate::proto::handshake::Head;

use super::super::ShardState;
use super::publish::BodyKind;

/// Largest `POST /api/disconnect` body.
const MAX_DISCONNECT_BODY: usize = 4096;

impl ShardState {
    /// Route hook for `Routed::Api`. Returns the body's length when it was in `rest`, as
    /// the publish hooks do.
    pub(in crate::shard) fn http_api(
        &mut self,
        token: Token,
        req: &Head<'_>,
        route: ApiRoute,
        rest: &[u8],
    ) -> Option<usize> {
        if let Err(r) = self.authorize_api(req) {
            self.refuse_backend(token, &r);
            return None;
        }
        match route {
            ApiRoute::Topics => self.api_query(token, Query::Topics),
            ApiRoute::Topic(t) => self.api_query(token, Query::Topic(Arc::from(t))),
            ApiRoute::Disconnect => {
                let len =
                    self.body_length(token, req, MAX_DISCONNECT_BODY, "the API's body limit")?;
                if rest.len() >= len {
                    self.body_read(token);
                    self.api_disconnect_body(token, &rest[..len]);
                    return Some(len);
                }
                self.await_body(token, req, rest, len, BodyKind::Disconnect);
                return None;
            }
        }
        Some(0)
    }

    /// `POST /api/disconnect`'s body: `{"user": "alice"}`.
    pub(super) fn api_disconnect_body(&mut self, token: Token, body: &[u8]) {
        #[derive(serde::Deserialize)]
        struct Body<'a> {
            #[serde(borrow)]
            user: std::borrow::Cow<'a, str>,
        }
        match serde_json::from_slice::<Body<'_>>(body) {
            Ok(b) if !b.user.is_empty() => {
                let user: Arc<str> = Arc::from(b.user.as_ref());
                self.api_query(token, Query::Disconnect(user));
            }
            Ok(_) => self.respond(token, 400, "\"user\" must not be empty\n"),
            Err(_) => self.respond(
                token,
                400,
                "expected a JSON object such as {\"user\":\"alice\"}\n",
            ),
        }
    }
}
