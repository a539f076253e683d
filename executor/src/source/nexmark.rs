//! The `nexmark` connector: the standard person / auction / bid streams.
//!
//! Options (all optional but the table type):
//! - `nexmark.table.type` = `person` | `auction` | `bid`;
//! - `nexmark.event.num`: events of *all* types to generate (the source then
//!   holds its type's share of them, as in the Nexmark specification);
//!   unset = unbounded;
//! - `nexmark.base.time`: event time of the first event, in ms since the
//!   epoch (fixed when the source is created, so every run replays the same
//!   events);
//! - `nexmark.event.rate`: events per second of *event time* (default 10000);
//! - `nexmark.events.per.second`: pacing, in events of *all* types per second
//!   of wall time (the source reads its type's share of them), so that
//!   person, auction and bid sources paced alike advance in event time alike;
//! - `nexmark.split.num`: parallel splits (default: the server's parallelism).
//!
//! Split `p` of `n` generates its type's events `p, p + n, p + 2n, ...`.

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, Int64Builder, RecordBatch, StringBuilder, TimestampMillisecondBuilder,
};
use datafusion::arrow::compute::{can_cast_types, cast};
use datafusion::arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use nexmark::EventGenerator;
use nexmark::config::NexmarkConfig;
use nexmark::event::{Event, EventType};

use super::{BatchGenerator, Options};
use crate::error::{ExecutorError, Result};

/// Fields of each event type with the type they are generated as.
fn fields(kind: EventType) -> &'static [(&'static str, DataType)] {
    const TS: DataType = DataType::Timestamp(TimeUnit::Millisecond, None);
    match kind {
        EventType::Person => &[
            ("id", DataType::Int64),
            ("name", DataType::Utf8),
            ("email_address", DataType::Utf8),
            ("credit_card", DataType::Utf8),
            ("city", DataType::Utf8),
            ("state", DataType::Utf8),
            ("date_time", TS),
            ("extra", DataType::Utf8),
        ],
        EventType::Auction => &[
            ("id", DataType::Int64),
            ("item_name", DataType::Utf8),
            ("description", DataType::Utf8),
            ("initial_bid", DataType::Int64),
            ("reserve", DataType::Int64),
            ("date_time", TS),
            ("expires", TS),
            ("seller", DataType::Int64),
            ("category", DataType::Int64),
            ("extra", DataType::Utf8),
        ],
        EventType::Bid => &[
            ("auction", DataType::Int64),
            ("bidder", DataType::Int64),
            ("price", DataType::Int64),
            ("channel", DataType::Utf8),
            ("url", DataType::Utf8),
            ("date_time", TS),
            ("extra", DataType::Utf8),
        ],
    }
}

/// A validated `nexmark` source definition.
#[derive(Debug, Clone)]
pub struct NexmarkSource {
    kind: EventType,
    /// Generated field index of each declared column.
    columns: Vec<usize>,
    schema: SchemaRef,
    event_num: Option<u64>,
    config: NexmarkConfig,
}

impl NexmarkSource {
    /// Checks `options` against the declared `schema`.
    pub fn new(schema: SchemaRef, options: &mut Options) -> Result<Self> {
        let kind = match options.take("nexmark.table.type").as_deref() {
            Some("person") => EventType::Person,
            Some("auction") => EventType::Auction,
            Some("bid") => EventType::Bid,
            Some(other) => {
                return Err(ExecutorError::InvalidOption(format!(
                    "nexmark.table.type must be person, auction or bid, got '{other}'"
                )));
            }
            None => {
                return Err(ExecutorError::InvalidOption(
                    "nexmark.table.type is required (person, auction or bid)".into(),
                ));
            }
        };
        let generated = fields(kind);
        let columns = schema
            .fields()
            .iter()
            .map(|f| {
                generated
                    .iter()
                    .position(|(name, _)| *name == f.name())
                    .ok_or_else(|| {
                        let names: Vec<&str> = generated.iter().map(|(n, _)| *n).collect();
                        ExecutorError::InvalidOption(format!(
                            "nexmark {kind:?} events have no column \"{}\" (they have {})",
                            f.name(),
                            names.join(", ")
                        ))
                    })
            })
            .collect::<Result<Vec<_>>>()?;
        for (field, &g) in schema.fields().iter().zip(&columns) {
            let generated_type = &generated[g].1;
            if !can_cast_types(generated_type, field.data_type()) {
                return Err(ExecutorError::InvalidOption(format!(
                    "nexmark column \"{}\" is generated as {generated_type} and cannot be read as {}",
                    field.name(),
                    field.data_type()
                )));
            }
        }
        let mut config = NexmarkConfig {
            base_time: options.number("nexmark.base.time")?.unwrap_or(0),
            ..NexmarkConfig::default()
        };
        if let Some(rate) = options.number::<u64>("nexmark.event.rate")? {
            if rate == 0 {
                return Err(ExecutorError::InvalidOption(
                    "nexmark.event.rate must be positive".into(),
                ));
            }
            config.first_rate = rate as usize;
            config.next_rate = rate as usize;
        }
        Ok(Self {
            kind,
            columns,
            schema,
            event_num: options.number("nexmark.event.num")?,
            config,
        })
    }

    /// Split `index` of `count`, from its row `start` on.
    pub fn split(&self, index: usize, count: usize, start: u64) -> Box<dyn BatchGenerator> {
        let generator = EventGenerator::new(self.config.clone())
            .with_type_filter(self.kind)
            .with_offset(index as u64 + start * count as u64)
            .with_step(count as u64);
        Box::new(NexmarkSplit {
            source: self.clone(),
            generator,
        })
    }

    /// The share of all events that are of this source's type.
    pub fn share(&self) -> f64 {
        let c = &self.config;
        let of_kind = match self.kind {
            EventType::Person => c.person_proportion,
            EventType::Auction => c.auction_proportion,
            EventType::Bid => c.bid_proportion,
        };
        of_kind as f64 / (c.person_proportion + c.auction_proportion + c.bid_proportion) as f64
    }

    /// Whether the source ends.
    pub fn is_bounded(&self) -> bool {
        self.event_num.is_some()
    }
}

struct NexmarkSplit {
    source: NexmarkSource,
    generator: EventGenerator,
}

enum Column {
    Int(Int64Builder),
    Text(StringBuilder),
    Time(TimestampMillisecondBuilder),
}

impl Column {
    fn new(data_type: &DataType, capacity: usize) -> Self {
        match data_type {
            DataType::Int64 => Column::Int(Int64Builder::with_capacity(capacity)),
            DataType::Utf8 => Column::Text(StringBuilder::with_capacity(capacity, capacity * 16)),
            _ => Column::Time(TimestampMillisecondBuilder::with_capacity(capacity)),
        }
    }

    fn finish(self) -> ArrayRef {
        match self {
            Column::Int(mut b) => Arc::new(b.finish()),
            Column::Text(mut b) => Arc::new(b.finish()),
            Column::Time(mut b) => Arc::new(b.finish()),
        }
    }
}

fn append(column: &mut Column, event: &Event, field: usize) {
    let int = |v: usize| v as i64;
    match (column, event) {
        (Column::Int(b), Event::Person(p)) => b.append_value(int(p.id)),
        (Column::Text(b), Event::Person(p)) => b.append_value(match field {
            1 => &p.name,
            2 => &p.email_address,
            3 => &p.credit_card,
            4 => &p.city,
            5 => &p.state,
            _ => &p.extra,
        }),
        (Column::Time(b), Event::Person(p)) => b.append_value(p.date_time as i64),
        (Column::Int(b), Event::Auction(a)) => b.append_value(match field {
            0 => int(a.id),
            3 => int(a.initial_bid),
            4 => int(a.reserve),
            7 => int(a.seller),
            _ => int(a.category),
        }),
        (Column::Text(b), Event::Auction(a)) => b.append_value(match field {
            1 => &a.item_name,
            2 => &a.description,
            _ => &a.extra,
        }),
        (Column::Time(b), Event::Auction(a)) => b.append_value(if field == 5 {
            a.date_time as i64
        } else {
            a.expires as i64
        }),
        (Column::Int(b), Event::Bid(x)) => b.append_value(match field {
            0 => int(x.auction),
            1 => int(x.bidder),
            _ => int(x.price),
        }),
        (Column::Text(b), Event::Bid(x)) => b.append_value(match field {
            3 => &x.channel,
            4 => &x.url,
            _ => &x.extra,
        }),
        (Column::Time(b), Event::Bid(x)) => b.append_value(x.date_time as i64),
    }
}

impl BatchGenerator for NexmarkSplit {
    fn next_batch(&mut self, max: usize) -> Result<Option<RecordBatch>> {
        let generated = fields(self.source.kind);
        let mut columns: Vec<Column> = self
            .source
            .columns
            .iter()
            .map(|&f| Column::new(&generated[f].1, max))
            .collect();
        let mut rows = 0;
        while rows < max {
            if let Some(limit) = self.source.event_num
                && self.generator.global_offset() >= limit
            {
                break;
            }
            let Some(event) = self.generator.next() else {
                break;
            };
            for (column, &field) in columns.iter_mut().zip(&self.source.columns) {
                append(column, &event, field);
            }
            rows += 1;
        }
        if rows == 0 {
            return Ok(None);
        }
        let arrays = columns
            .into_iter()
            .zip(self.source.schema.fields())
            .map(|(c, f)| {
                let array = c.finish();
                if array.data_type() == f.data_type() {
                    Ok(array)
                } else {
                    Ok(cast(&array, f.data_type())?)
                }
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Some(RecordBatch::try_new(
            self.source.schema.clone(),
            arrays,
        )?))
    }
}
