//! `type = "enrich"`: adds numbers fetched by event key from an outside HTTP service.
//!
//! ```toml
//! [operators.lookup]
//! type = "enrich"
//! url = "http://127.0.0.1:8080/lookup"   # GET URL?key=K, or POST URL {"keys": [...]}
//! method = "post"
//! fields = ["weight"]          # numbers taken from the answer, usable in aggregates
//! flag = "enriched"            # optional: 1 on enriched events, 0 on the others
//! timeout = "1s"
//! cache_size = 100000          # answers cached per key ...
//! cache_ttl = "60s"            # ... this long
//! max_concurrency = 32         # the adaptive limit moves between 1 and this
//! slow_call = "500ms"          # slower answers count as slow for the breaker
//! on_unavailable = "pass"      # or "dead_letter"
//! ```
//!
//! The calls go through [`EnrichClient`]: a cache, an
//! adaptive concurrency limit, a circuit breaker and a retry budget. The client is
//! shared by every partition's instance of the operator, so the cache is one.
//!
//! Per event: *found* sets the fields (and the flag to 1); *not found* (the service has
//! nothing for the key) passes the event with the fields missing (NaN: NULL in SQL sinks)
//! and the flag 0; *unavailable* (timeout, error, breaker open) does the same with
//! `on_unavailable = "pass"`, or fails the event as retryable with `"dead_letter"`: the
//! chain retries it within its budget, then dead-letters it (kind `unavailable`) to be
//! replayed once the service heals.

use std::sync::Arc;

use super::{Failure, Operator, OperatorBatch};
use crate::config::{EnrichConfig, EnrichMethod, OnUnavailable};
use crate::enrich::{EnrichClient, EnrichError, EnrichSettings, Lookup, Method};

/// The enrichment operator.
pub struct Enrich {
    name: String,
    client: Arc<EnrichClient>,
    /// Where each of the client's fields goes among the batch's numbers.
    targets: Vec<usize>,
    flag: Option<usize>,
    on_unavailable: OnUnavailable,
    // Scratch, reused across batches.
    key_data: Vec<u8>,
    key_ends: Vec<usize>,
    events: Vec<usize>,
    answers: Vec<Lookup>,
}

impl std::fmt::Debug for Enrich {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enrich")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// The client settings for `config`.
pub fn client_settings(config: &EnrichConfig) -> EnrichSettings {
    let d = EnrichSettings::default();
    EnrichSettings {
        url: config.url.clone(),
        method: match config.method {
            EnrichMethod::Get => Method::Get,
            EnrichMethod::Post => Method::Post,
        },
        fields: config.fields.clone(),
        batch_keys: config.batch_keys,
        timeout: config.timeout,
        cache_size: config.cache_size,
        cache_ttl: config.cache_ttl,
        limit: crate::concurrency::LimitSettings {
            max: config.max_concurrency,
            initial: d.limit.initial.min(config.max_concurrency),
            ..d.limit
        },
        breaker: crate::breaker::BreakerSettings {
            slow_call: config.slow_call,
            ..d.breaker
        },
        retry: d.retry,
    }
}

/// Makes the client of an `enrich` operator named `name`.
///
/// # Errors
/// The settings are unusable (see [`EnrichClient::new`]).
pub fn client(name: &str, config: &EnrichConfig) -> Result<Arc<EnrichClient>, EnrichError> {
    EnrichClient::new(name, client_settings(config)).map(Arc::new)
}

impl Enrich {
    /// The operator named `name` using `client`, for events carrying `fields` (which
    /// must include the client's fields and `config.flag`).
    ///
    /// # Errors
    /// A field is not among `fields`.
    pub fn new(
        name: &str,
        client: Arc<EnrichClient>,
        config: &EnrichConfig,
        fields: &[String],
    ) -> Result<Self, String> {
        let at = |f: &String| {
            fields
                .iter()
                .position(|x| x == f)
                .ok_or_else(|| format!("enrich {name}: events carry no number field {f:?}"))
        };
        let targets = config.fields.iter().map(at).collect::<Result<_, _>>()?;
        let flag = config.flag.as_ref().map(at).transpose()?;
        Ok(Enrich {
            name: name.to_owned(),
            client,
            targets,
            flag,
            on_unavailable: config.on_unavailable,
            key_data: Vec::new(),
            key_ends: Vec::new(),
            events: Vec::new(),
            answers: Vec::new(),
        })
    }
}

impl Operator for Enrich {
    fn name(&self) -> &str {
        &self.name
    }

    fn process(&mut self, batch: &mut OperatorBatch<'_>) {
        self.key_data.clear();
        self.key_ends.clear();
        self.events.clear();
        for i in batch.live() {
            self.key_data.extend_from_slice(&batch.event(i).key);
            self.key_ends.push(self.key_data.len());
            self.events.push(i);
        }
        if self.events.is_empty() {
            return;
        }
        let mut keys: Vec<&[u8]> = Vec::with_capacity(self.key_ends.len());
        let mut start = 0;
        for &end in &self.key_ends {
            keys.push(&self.key_data[start..end]);
            start = end;
        }
        self.client.lookup(&keys, &mut self.answers);
        for (n, &i) in self.events.iter().enumerate() {
            match &self.answers[n] {
                Lookup::Found(values) => {
                    for (&to, &v) in self.targets.iter().zip(values.iter()) {
                        batch.set_number(i, to, v);
                    }
                    if let Some(flag) = self.flag {
                        batch.set_number(i, flag, 1.0);
                    }
                }
                Lookup::NotFound => self.pass_without(batch, i),
                Lookup::Unavailable(reason) => match self.on_unavailable {
                    OnUnavailable::Pass => self.pass_without(batch, i),
                    OnUnavailable::DeadLetter => batch.fail(
                        i,
                        Failure::transient(
                            "unavailable",
                            format!("enrichment {} unavailable: {reason}", self.name),
                        ),
                    ),
                },
            }
        }
    }
}

impl Enrich {
    /// Event `i` goes on with the fields missing and the flag 0.
    fn pass_without(&self, batch: &mut OperatorBatch<'_>, i: usize) {
        for &to in &self.targets {
            batch.set_number(i, to, f64::NAN);
        }
        if let Some(flag) = self.flag {
            batch.set_number(i, flag, 0.0);
        }
    }
}
